//! Maps keyed by an endpoint's address, with a fast hasher.
//!
//! NOTE: std's default SipHash took about 280 instructions per request on the HTTP/1.1
//! path, hashing the upstream's `SocketAddr` six times (its pool, its metrics, its
//! health): SipHash guards maps whose keys an attacker picks. These keys come from
//! the config and the registry, never from a caller, so foldhash (seeded per process)
//! serves them at a fraction of the cost.

use std::collections::HashMap;

/// The hasher of address-keyed maps.
pub type AddrHasher = foldhash::fast::RandomState;

/// A map keyed by endpoint address (or a key made of one).
pub type AddrMap<K, V> = HashMap<K, V, AddrHasher>;
