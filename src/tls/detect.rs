//! Inbound TLS modes, and telling a TLS connection from a plaintext one by its first
//! bytes (what permissive mode needs to serve both on one port).

/// Whether an inbound listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundTls {
    /// Mutual TLS only: a plaintext connection is refused.
    Strict,
    /// Mutual TLS or plaintext, told apart by the first bytes: the step between `Off`
    /// and `Strict` while the callers of a service move to the mesh.
    Permissive,
    /// Plaintext only.
    Off,
}

impl InboundTls {
    /// Whether a connection that opened as `detected` is served.
    pub fn admits(self, detected: Detected) -> bool {
        match (self, detected) {
            (_, Detected::NeedMore) => false,
            (InboundTls::Strict, Detected::Tls) | (InboundTls::Off, Detected::Plaintext) => true,
            (InboundTls::Permissive, _) => true,
            (InboundTls::Strict, Detected::Plaintext) | (InboundTls::Off, Detected::Tls) => false,
        }
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS handshake record holding a ClientHello.
    Tls,
    /// Anything else: HTTP/1.1 request lines and the h2c preface start with ASCII letters.
    Plaintext,
    /// Too few bytes to tell: read more (at most [`DETECT_LEN`] are needed).
    NeedMore,
}

/// The bytes [`detect`] needs at most.
pub const DETECT_LEN: usize = 6;

/// Tells a TLS ClientHello from plaintext by the record header: content type 0x16
/// (handshake), record version 0x03 0x00..=0x04, two length bytes, then handshake type
/// 0x01 (ClientHello). Plaintext HTTP never starts with 0x16, so one byte settles most
/// connections.
pub fn detect(first: &[u8]) -> Detected {
    const HANDSHAKE: u8 = 0x16;
    const CLIENT_HELLO: u8 = 0x01;
    let expected: [fn(u8) -> bool; DETECT_LEN] = [
        |b| b == HANDSHAKE,
        |b| b == 0x03,
        |b| b <= 0x04,
        |_| true,
        |_| true,
        |b| b == CLIENT_HELLO,
    ];
    for (check, byte) in expected.iter().zip(first) {
        if !check(*byte) {
            return Detected::Plaintext;
        }
    }
    if first.len() < DETECT_LEN {
        Detected::NeedMore
    } else {
        Detected::Tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_client_hello_from_http() {
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        assert_eq!(detect(&hello), Detected::Tls);
        assert_eq!(detect(&hello[..6]), Detected::Tls);
        for short in 1..6 {
            assert_eq!(detect(&hello[..short]), Detected::NeedMore, "{short} bytes");
        }
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Plaintext);
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Detected::Plaintext
        );
        assert_eq!(detect(b"P"), Detected::Plaintext);
        // A handshake record that is not a ClientHello, or not TLS at all.
        assert_eq!(
            detect(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x02]),
            Detected::Plaintext
        );
        assert_eq!(detect(&[0x16, 0x02]), Detected::Plaintext);
        assert_eq!(detect(&[0x16, 0x03, 0x09]), Detected::Plaintext);
    }

    #[test]
    fn each_mode_admits_its_kind() {
        use Detected::*;
        use InboundTls::*;
        assert!(Strict.admits(Tls) && !Strict.admits(Plaintext));
        assert!(Off.admits(Plaintext) && !Off.admits(Tls));
        assert!(Permissive.admits(Tls) && Permissive.admits(Plaintext));
        assert!(!Permissive.admits(NeedMore));
    }
}
