//! A consistent-hash ring: each endpoint owns `virtual_nodes × weight` points, a key
//! goes to the owner of the first point at or after its hash (wrapping around).
//!
//! Points are hashes of the endpoint's address and the point's number, so they depend
//! on nothing but the endpoint itself: adding an endpoint takes over only the keys that
//! fall just before its points (about its share), removing one hands only its own keys
//! to the next points.
//!
//! A key whose owner may not be taken walks on to the next point of another endpoint,
//! so its keys spread over the rest rather than all landing on one neighbour.

use std::sync::Arc;

use super::eligible::Choice;
use super::hash::{hash64, RING_SEED};
use super::Endpoint;

/// The most points built; larger rings have their weights scaled down to fit.
pub(crate) const MAX_POINTS: u64 = 1 << 20;

/// How many points a pick walks past before giving up (then the caller picks by weight
/// from the key, still stable): only reached when nearly everything is held out.
const MAX_WALK: usize = 1024;

/// Points sorted by hash, each naming its endpoint's index.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// The ring of `endpoints` with `points[i]` points for endpoint `i`.
    pub fn build(endpoints: &[Arc<Endpoint>], points: &[u32]) -> Self {
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for ((endpoint, &count), index) in endpoints.iter().zip(points).zip(0u32..) {
            let name = endpoint.addr.to_string();
            for point in 0..count {
                let hash = hash64(&[name.as_bytes(), &point.to_le_bytes()], RING_SEED);
                ring.push((hash, index));
            }
        }
        ring.sort_unstable();
        Self {
            points: ring.into_boxed_slice(),
        }
    }

    /// The endpoint owning `key`, or the next eligible one around the ring.
    pub fn pick<'e>(
        &self,
        key: u64,
        endpoints: &'e [Arc<Endpoint>],
        choice: &Choice<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(hash, _)| hash < key);
        for step in 0..len.min(MAX_WALK) {
            let (_, index) = self.points[(start + step) % len];
            let Some(endpoint) = endpoints.get(index as usize) else {
                continue;
            };
            if choice.eligible.admits(endpoint) {
                return Some(endpoint);
            }
        }
        None
    }
}
