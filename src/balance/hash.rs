//! Hashing for consistent-hash balancing: the request's key, and the hash that places
//! keys and endpoints.
//!
//! The hash is FNV-1a followed by the MurmurHash3 64-bit finalizer (FNV alone spreads
//! similar inputs, such as `10.0.0.7:8080#12` and `#13`, poorly). It is fixed by this
//! file, not by the Rust release or a random seed, so every sidecar in front of a
//! service maps a key to the same endpoint.

use std::net::IpAddr;

use http::header::COOKIE;
use http::Request;

use super::config::HashKey;
use crate::core::call::CallInfo;

/// Seeds that keep the hashes of keys, ring points and Maglev permutations apart.
pub(crate) const KEY_SEED: u64 = 0;
/// Seed of ring points.
pub(crate) const RING_SEED: u64 = 0x52_49_4e_47;
/// Seed of a Maglev permutation's offset.
pub(crate) const OFFSET_SEED: u64 = 0x4f_46_46;
/// Seed of a Maglev permutation's skip.
pub(crate) const SKIP_SEED: u64 = 0x53_4b_49_50;

/// A 64-bit hash of `parts` (hashed as if concatenated) under `seed`.
pub(crate) fn hash64(parts: &[&[u8]], seed: u64) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET ^ seed.wrapping_mul(FNV_PRIME);
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    finalize(hash)
}

/// MurmurHash3's `fmix64`: every input bit affects every output bit.
fn finalize(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

impl HashKey {
    /// The hash of this key in `request`, or `None` when the request does not carry it
    /// (no such header or cookie, no client address).
    pub fn hash_of<B>(&self, request: &Request<B>) -> Option<u64> {
        match self {
            Self::Header(name) => {
                let value = request.headers().get(name)?;
                Some(hash64(&[value.as_bytes()], KEY_SEED))
            }
            Self::Cookie(name) => {
                let value = cookie(request, name)?;
                Some(hash64(&[value], KEY_SEED))
            }
            Self::ClientIp => {
                let addr = request.extensions().get::<CallInfo>()?.client;
                Some(match addr.ip().to_canonical() {
                    IpAddr::V4(v4) => hash64(&[&v4.octets()], KEY_SEED),
                    IpAddr::V6(v6) => hash64(&[&v6.octets()], KEY_SEED),
                })
            }
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may split them).
fn cookie<'r, B>(request: &'r Request<B>, name: &str) -> Option<&'r [u8]> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            (&pair[..at] == name.as_bytes()).then(|| &pair[at + 1..])
        })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::HeaderName;

    use super::*;

    fn request() -> Request<()> {
        Request::builder()
            .header("x-user", "alice")
            .header(COOKIE, "theme=dark; session=abc123")
            .header(COOKIE, "lang=en")
            .body(())
            .unwrap()
    }

    #[test]
    fn header_keys_hash_the_value() {
        let key = HashKey::Header(HeaderName::from_static("x-user"));
        assert_eq!(key.hash_of(&request()), Some(hash64(&[b"alice"], KEY_SEED)));
        let absent = HashKey::Header(HeaderName::from_static("x-tenant"));
        assert_eq!(absent.hash_of(&request()), None);
    }

    #[test]
    fn cookie_keys_find_the_cookie_in_any_cookie_header() {
        let hash = |name: &str| HashKey::Cookie(name.into()).hash_of(&request());
        assert_eq!(hash("session"), Some(hash64(&[b"abc123"], KEY_SEED)));
        assert_eq!(hash("theme"), Some(hash64(&[b"dark"], KEY_SEED)));
        assert_eq!(hash("lang"), Some(hash64(&[b"en"], KEY_SEED)));
        assert_eq!(hash("sess"), None);
        assert_eq!(hash("abc123"), None);
    }

    #[test]
    fn client_ip_keys_ignore_the_port_and_ipv4_mapping() {
        let with = |addr: &str| {
            let mut request = request();
            let addr: SocketAddr = addr.parse().unwrap();
            request.extensions_mut().insert(CallInfo::new(addr));
            HashKey::ClientIp.hash_of(&request)
        };
        let v4 = with("10.1.2.3:5000");
        assert_eq!(v4, Some(hash64(&[&[10, 1, 2, 3]], KEY_SEED)));
        assert_eq!(with("10.1.2.3:6000"), v4);
        assert_eq!(with("[::ffff:10.1.2.3]:6000"), v4);
        assert_ne!(with("10.1.2.4:5000"), v4);
        assert_eq!(HashKey::ClientIp.hash_of(&request()), None);
    }

    #[test]
    fn the_hash_is_fixed_and_seeds_separate_it() {
        // Pinned: sidecars of different builds must agree on where a key goes.
        assert_eq!(hash64(&[b"alice"], KEY_SEED), 0x3507_d047_a67c_08f4);
        assert_eq!(
            hash64(&[b"alice"], KEY_SEED),
            hash64(&[b"al", b"ice"], KEY_SEED)
        );
        assert_ne!(
            hash64(&[b"alice"], KEY_SEED),
            hash64(&[b"alice"], RING_SEED)
        );
        assert_eq!(hash64(&[], KEY_SEED), finalize(0xcbf2_9ce4_8422_2325));
    }
}
