//! Lowercase hex of fixed-size ids, written into a caller's buffer: the formatting
//! machinery would cost a `String` and a few hundred instructions per id, per request.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`, two digits a byte; `out` must hold
/// exactly twice as many bytes (a shorter one is filled as far as it goes).
pub fn write(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_two_lowercase_digits_a_byte() {
        let mut out = [b'.'; 8];
        super::write(&mut out, &[0x00, 0x9f, 0xa0, 0xff]);
        assert_eq!(&out, b"009fa0ff");
    }
}
