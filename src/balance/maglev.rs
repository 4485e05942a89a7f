//! A Maglev lookup table (Eisenbud et al., NSDI 2016): a prime-sized table in which
//! each endpoint owns a share of entries proportional to its weight; a key goes to the
//! owner of entry `hash mod size`.
//!
//! Each endpoint has its own permutation of the entries (an offset and a skip derived
//! from its address), and endpoints take turns claiming their next free entry until the
//! table is full; a heavier endpoint takes proportionally more turns. Lookups are one
//! index; shares are even to within one entry; when the set changes, slightly more keys
//! move than on a ring (a few entries of other endpoints shift too).
//!
//! A key whose owner may not be taken walks on to the next entry; consecutive entries
//! belong to unrelated endpoints, so its keys spread over the rest.
//!
//! NOTE: with more endpoints than entries some endpoints own nothing; the table size is
//! meant to be far larger than the set (the default 65537 suits up to a few hundred).

use std::sync::Arc;

use super::eligible::Choice;
use super::hash::{hash64, OFFSET_SEED, SKIP_SEED};
use super::Endpoint;

/// How many entries a pick walks past before giving up (then the caller picks by
/// weight from the key, still stable): only reached when nearly everything is held out.
const MAX_WALK: usize = 1024;

/// Entry `i` names the endpoint (by index) that owns keys hashing to `i`.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// The table of `size` (a prime) for `endpoints` with these weights.
    pub fn build(endpoints: &[Arc<Endpoint>], weights: &[u32], size: u32) -> Self {
        const EMPTY: u32 = u32::MAX;
        if endpoints.is_empty() || size == 0 {
            return Self {
                table: Box::new([]),
            };
        }
        let size_usize = size as usize;
        let mut table = vec![EMPTY; size_usize];
        let modulus = u64::from(size);
        let permutations: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|endpoint| {
                let name = endpoint.addr.to_string();
                let offset = hash64(&[name.as_bytes()], OFFSET_SEED) % modulus;
                let skip = if modulus > 1 {
                    hash64(&[name.as_bytes()], SKIP_SEED) % (modulus - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        let heaviest = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
        // Each turn, an endpoint earns its weight in credit and claims one entry per
        // `heaviest` of credit: the heaviest claims one entry every turn.
        let mut credit = vec![0u64; endpoints.len()];
        let mut tried = vec![0u64; endpoints.len()];
        let mut filled = 0usize;
        'fill: loop {
            for index in 0..endpoints.len() {
                credit[index] += u64::from(weights[index].max(1));
                while credit[index] >= heaviest {
                    credit[index] -= heaviest;
                    let (offset, skip) = permutations[index];
                    // A prime size makes every skip visit every entry; `filled < size`
                    // guarantees a free one.
                    let entry = loop {
                        let candidate = ((offset + tried[index] * skip) % modulus) as usize;
                        tried[index] += 1;
                        if table[candidate] == EMPTY {
                            break candidate;
                        }
                    };
                    table[entry] = index as u32;
                    filled += 1;
                    if filled == size_usize {
                        break 'fill;
                    }
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    /// The endpoint owning `key`'s entry, or the owner of the next eligible entry.
    pub fn pick<'e>(
        &self,
        key: u64,
        endpoints: &'e [Arc<Endpoint>],
        choice: &Choice<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let start = (key % len as u64) as usize;
        for step in 0..len.min(MAX_WALK) {
            let index = self.table[(start + step) % len];
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
