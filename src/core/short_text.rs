//! Short texts written into a fixed buffer rather than a `String`: span attributes and
//! access log lines write an address or two and a few numbers per request. An IPv4
//! address is written octet by octet from a table: its `Display` costs about 1,200
//! instructions for what is a few digits. IPv6 addresses take `Display`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Every octet's decimal digits, padded to three bytes, and how many they are: an
/// address's four octets are four look-ups rather than a division and a branch per
/// digit (an access log line writes two addresses per call).
static OCTETS: [([u8; 3], usize); 256] = octets();

const fn octets() -> [([u8; 3], usize); 256] {
    let mut table = [([0; 3], 0); 256];
    let mut value = 0;
    while value < 256 {
        // Truncations intended: value is below 256, each digit below 10.
        let (hundreds, tens, ones) = (value / 100, value / 10 % 10, value % 10);
        table[value] = if value >= 100 {
            (
                [b'0' + hundreds as u8, b'0' + tens as u8, b'0' + ones as u8],
                3,
            )
        } else if value >= 10 {
            ([b'0' + tens as u8, b'0' + ones as u8, 0], 2)
        } else {
            ([b'0' + ones as u8, 0, 0], 1)
        };
        value += 1;
    }
    table
}

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
        for &digit in itoa::Buffer::new().format(value).as_bytes() {
            self.byte(digit);
        }
    }

    /// `value` in decimal, from [`OCTETS`]: its three bytes are copied at once and
    /// only its digits kept (the address's longest text leaves room for the rest).
    fn octet(&mut self, value: u8) {
        let (digits, len) = OCTETS[usize::from(value)];
        if let Some(slot) = self.bytes.get_mut(self.len..self.len + 3) {
            slot.copy_from_slice(&digits);
            self.len += len;
        }
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
        // Every octet's digits, at every place of an address.
        for octet in 0..=255u8 {
            for place in 0..4 {
                let mut octets = [1, 22, 133, 4];
                octets[place] = octet;
                let addr = SocketAddr::from((octets, 7));
                assert_eq!(ShortText::socket_addr(addr).as_str(), addr.to_string());
            }
        }
        for addr in addresses {
            assert_eq!(ShortText::socket_addr(addr).as_str(), addr.to_string());
            assert_eq!(ShortText::ip(addr.ip()).as_str(), addr.ip().to_string());
        }
    }
}
