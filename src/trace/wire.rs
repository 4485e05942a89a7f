//! The two protobuf writers the OTLP encoder calls for every field, inlined.
//!
//! NOTE: prost's `encode_varint` is generic over `BufMut` and is not inlined here: a
//! call and a `put_slice` per byte written, about 25 instructions for what is almost
//! always one byte (tags, lengths and codes under 128). A traced request writes some 40
//! of them (`bench/RESULTS.md`, "Tracing: the span writer").

use prost::encoding::WireType;

/// Appends `value` as a base-128 varint.
#[inline]
pub(super) fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        // Truncation intended: the low seven bits, with the continuation bit.
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the key of field `tag` with `wire_type`.
#[inline]
pub(super) fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_prost_writes() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            encode_varint(value, &mut ours);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(value, &mut theirs);
            assert_eq!(ours, theirs, "varint {value}");
        }
        for (tag, wire_type) in [
            (1, WireType::LengthDelimited),
            (15, WireType::Varint),
            (16, WireType::ThirtyTwoBit),
            (1000, WireType::SixtyFourBit),
        ] {
            let mut ours = Vec::new();
            encode_key(tag, wire_type, &mut ours);
            let mut theirs = Vec::new();
            prost::encoding::encode_key(tag, wire_type, &mut theirs);
            assert_eq!(ours, theirs, "key {tag}");
        }
    }
}
