//! Lowercase hex of fixed-size ids, written into a caller's buffer: the formatting
//! machinery would cost a `String` and a few hundred instructions per id, per request.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, two digits a byte; `out` must hold
/// exactly twice as many bytes (of another length, it is left partly written). Four bytes
/// at a time in one 64-bit word: a trace id, a span id and a request id are written per
/// logged call, at a third of the instructions of a table look-up per digit.
pub fn write(out: &mut [u8], bytes: &[u8]) {
    let mut outs = out.chunks_exact_mut(8);
    let mut words = bytes.chunks_exact(4);
    for (digits, word) in (&mut outs).zip(&mut words) {
        let mut four = [0u8; 4];
        four.copy_from_slice(word);
        digits.copy_from_slice(&eight_digits(four));
    }
    let rest = outs.into_remainder().chunks_exact_mut(2);
    for (pair, byte) in rest.zip(words.remainder()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// The eight lowercase hex digits of four bytes, computed in one word: each byte's
/// nibbles spread into two bytes of their own, high nibble first, then every nibble
/// turned into its digit at once (`'0' + n`, and 39 more for `a` to `f`).
fn eight_digits(bytes: [u8; 4]) -> [u8; 8] {
    const LOW_NIBBLES: u64 = 0x000f_000f_000f_000f;
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Byte k of `bytes` into the low byte of the word's 16-bit lane k.
    let mut word = u64::from(u32::from_le_bytes(bytes));
    word = (word | (word << 16)) & 0x0000_ffff_0000_ffff;
    word = (word | (word << 8)) & 0x00ff_00ff_00ff_00ff;
    // In memory order, lane k's first byte its high nibble, its second its low one.
    let nibbles = ((word >> 4) & LOW_NIBBLES) | ((word & LOW_NIBBLES) << 8);
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into bit 4).
    let letters = ((nibbles + ONES * 6) >> 4) & ONES;
    (nibbles + ONES * u64::from(b'0') + letters * 39).to_le_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_two_lowercase_digits_a_byte() {
        let mut out = [b'.'; 8];
        super::write(&mut out, &[0x00, 0x9f, 0xa0, 0xff]);
        assert_eq!(&out, b"009fa0ff");
    }

    /// The word at a time agrees with a byte at a time, for every byte value at every
    /// position and for lengths that leave a remainder.
    #[test]
    fn agrees_with_a_digit_at_a_time() {
        let by_bytes =
            |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        for length in [1, 2, 4, 6, 8, 16] {
            for at in 0..length {
                for byte in 0..=255u8 {
                    let mut bytes = vec![0x5a; length];
                    bytes[at] = byte;
                    let mut out = vec![0; length * 2];
                    super::write(&mut out, &bytes);
                    assert_eq!(String::from_utf8(out).unwrap(), by_bytes(&bytes));
                }
            }
        }
    }
}
