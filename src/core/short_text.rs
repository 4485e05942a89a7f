//! Short texts written into a fixed buffer rather than a `String`: span attributes and
//! access log lines write an address or two and a few numbers per request. An IPv4
//! address is written digit by digit: its `Display` costs about 1,200 instructions for
//! what is a few digits. IPv6 addresses take `Display`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A text of at most 64 bytes (an address with its port, IPv6 and scope id included;
/// a number); writing more than it holds fails.
pub struct ShortText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for ShortText {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl ShortText {
    /// `addr` with its port, as `Display` writes it: `192.0.2.1:8080`,
    /// `[2001:db8::1]:8080`.
    pub fn socket_addr(addr: SocketAddr) -> Self {
        let mut text = Self::default();
        match addr {
            SocketAddr::V4(v4) => {
                text.ipv4(*v4.ip());
                text.byte(b':');
                text.decimal(v4.port());
            }
            SocketAddr::V6(_) => text.display(addr),
        }
        text
    }

    /// `ip` alone, as `Display` writes it.
    pub fn ip(ip: IpAddr) -> Self {
        let mut text = Self::default();
        match ip {
            IpAddr::V4(v4) => text.ipv4(v4),
            IpAddr::V6(_) => text.display(ip),
        }
        text
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s and ASCII digits and punctuation are written in.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    /// The text's bytes: what a line of bytes takes, without `as_str`'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn display(&mut self, value: impl std::fmt::Display) {
        if write!(self, "{value}").is_err() {
            // Longer than any address: nothing rather than a part.
            self.len = 0;
        }
    }

    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn decimal(&mut self, value: u16) {
        // Truncations intended: one decimal digit each.
        let mut leading = true;
        for divisor in [10_000, 1_000, 100, 10] {
            let digit = (value / divisor % 10) as u8;
            if digit != 0 || !leading {
                self.byte(b'0' + digit);
                leading = false;
            }
        }
        self.byte(b'0' + (value % 10) as u8);
    }

    fn octet(&mut self, value: u8) {
        if value >= 100 {
            self.byte(b'0' + value / 100);
        }
        if value >= 10 {
            self.byte(b'0' + value / 10 % 10);
        }
        self.byte(b'0' + value % 10);
    }

    fn ipv4(&mut self, ip: Ipv4Addr) {
        let [a, b, c, d] = ip.octets();
        self.octet(a);
        self.byte(b'.');
        self.octet(b);
        self.byte(b'.');
        self.octet(c);
        self.byte(b'.');
        self.octet(d);
    }
}

impl std::fmt::Write for ShortText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let addresses: [SocketAddr; 6] = [
            "0.0.0.0:0".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "10.20.3.40:443".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "[2001:db8::1]:9000".parse().unwrap(),
            "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535"
                .parse()
                .unwrap(),
        ];
        for addr in addresses {
            assert_eq!(ShortText::socket_addr(addr).as_str(), addr.to_string());
            assert_eq!(ShortText::ip(addr.ip()).as_str(), addr.ip().to_string());
        }
    }
}
