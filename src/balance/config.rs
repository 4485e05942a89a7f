//! What a service's balancer is told to do: the algorithm, its parameters, and the panic
//! threshold. Validated once by [`BalancerConfig::try_new`]; the pick path trusts it.

use std::time::Duration;

use http::HeaderName;

/// How a service's requests are spread over its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    /// Power of two choices on `(in_flight + 1) × peak-EWMA RTT / weight` (the default).
    P2cPeakEwma {
        /// Time constant of the RTT average: a sample's weight falls to 1/e after this
        /// long, and an endpoint that is not measured for this long looks 1/e as slow.
        decay: Duration,
        /// The RTT assumed for an endpoint before its first answer.
        default_rtt: Duration,
    },
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on `(in_flight + 1) / weight`.
    LeastRequest,
    /// Weighted random.
    Random,
    /// The same key goes to the same endpoint while the endpoint set stays the same.
    ConsistentHash {
        /// What in the request the key is made of.
        key: HashKey,
        /// How keys map to endpoints.
        algorithm: HashAlgorithm,
    },
}

impl Balancer {
    /// The default `decay` of [`Balancer::P2cPeakEwma`].
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
    /// The default `default_rtt` of [`Balancer::P2cPeakEwma`].
    pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

    /// Whether picks need the request's hash key.
    pub fn is_consistent_hash(&self) -> bool {
        matches!(self, Self::ConsistentHash { .. })
    }
}

impl Default for Balancer {
    fn default() -> Self {
        Self::P2cPeakEwma {
            decay: Self::DEFAULT_DECAY,
            default_rtt: Self::DEFAULT_RTT,
        }
    }
}

/// What a consistent-hash key is made of. A request without it is balanced at random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The value of a request header (its first value when it repeats).
    Header(HeaderName),
    /// The value of a cookie, by name.
    Cookie(String),
    /// The caller's IP address (IPv4-mapped IPv6 counts as IPv4).
    ClientIp,
}

/// How consistent-hash keys map to endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// A hash ring (Ketama style): `virtual_nodes` points per unit of weight.
    Ring {
        /// Points on the ring per endpoint of weight 1.
        virtual_nodes: u32,
    },
    /// A Maglev lookup table: faster lookups and even shares, slightly more keys move
    /// when the set changes.
    Maglev {
        /// Entries in the table; a prime, much larger than the number of endpoints.
        table_size: u32,
    },
}

impl HashAlgorithm {
    /// The default `virtual_nodes` of [`HashAlgorithm::Ring`].
    pub const DEFAULT_VIRTUAL_NODES: u32 = 160;
    /// The largest `virtual_nodes` accepted.
    pub const MAX_VIRTUAL_NODES: u32 = 10_000;
    /// The default `table_size` of [`HashAlgorithm::Maglev`].
    pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
    /// The largest `table_size` accepted (the table holds 4 bytes per entry).
    pub const MAX_TABLE_SIZE: u32 = 1 << 24;

    /// A ring with the default number of virtual nodes.
    pub fn ring() -> Self {
        Self::Ring {
            virtual_nodes: Self::DEFAULT_VIRTUAL_NODES,
        }
    }

    /// A Maglev table of the default size.
    pub fn maglev() -> Self {
        Self::Maglev {
            table_size: Self::DEFAULT_TABLE_SIZE,
        }
    }
}

/// A validated balancer configuration.
///
/// Invariants (checked by [`try_new`](Self::try_new)): durations are non-zero, a ring
/// has 1..=[`MAX_VIRTUAL_NODES`](HashAlgorithm::MAX_VIRTUAL_NODES) virtual nodes, a
/// Maglev table size is a prime no larger than
/// [`MAX_TABLE_SIZE`](HashAlgorithm::MAX_TABLE_SIZE), a cookie name is not empty, and
/// the panic threshold is at most 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerConfig {
    balancer: Balancer,
    panic_threshold: u8,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            balancer: Balancer::default(),
            panic_threshold: Self::DEFAULT_PANIC_THRESHOLD,
        }
    }
}

impl BalancerConfig {
    /// The default panic threshold, in percent.
    pub const DEFAULT_PANIC_THRESHOLD: u8 = 50;

    /// `balancer`, entering panic mode when fewer than `panic_threshold` percent of the
    /// endpoints are ready (0 disables panic mode).
    pub fn try_new(balancer: Balancer, panic_threshold: u8) -> Result<Self, BalancerConfigError> {
        if panic_threshold > 100 {
            return Err(BalancerConfigError::PanicThreshold(panic_threshold));
        }
        match &balancer {
            Balancer::P2cPeakEwma { decay, default_rtt } => {
                if decay.is_zero() {
                    return Err(BalancerConfigError::ZeroDecay);
                }
                if default_rtt.is_zero() {
                    return Err(BalancerConfigError::ZeroDefaultRtt);
                }
            }
            Balancer::ConsistentHash { key, algorithm } => {
                if let HashKey::Cookie(name) = key {
                    if name.is_empty() || name.contains([';', '=', ' ']) {
                        return Err(BalancerConfigError::CookieName(name.clone()));
                    }
                }
                match *algorithm {
                    HashAlgorithm::Ring { virtual_nodes } => {
                        if virtual_nodes == 0 || virtual_nodes > HashAlgorithm::MAX_VIRTUAL_NODES {
                            return Err(BalancerConfigError::VirtualNodes(virtual_nodes));
                        }
                    }
                    HashAlgorithm::Maglev { table_size } => {
                        if table_size > HashAlgorithm::MAX_TABLE_SIZE || !is_prime(table_size) {
                            return Err(BalancerConfigError::TableSize(table_size));
                        }
                    }
                }
            }
            Balancer::RoundRobin | Balancer::LeastRequest | Balancer::Random => {}
        }
        Ok(Self {
            balancer,
            panic_threshold,
        })
    }

    /// The algorithm.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Below this percentage of ready endpoints the balancer ignores readiness.
    pub fn panic_threshold(&self) -> u8 {
        self.panic_threshold
    }
}

/// A balancer configuration that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalancerConfigError {
    /// `decay` was zero.
    #[error("decay must be non-zero")]
    ZeroDecay,
    /// `default_rtt` was zero.
    #[error("default_rtt must be non-zero")]
    ZeroDefaultRtt,
    /// `virtual_nodes` out of range.
    #[error("virtual_nodes must be between 1 and {max}, got {0}", max = HashAlgorithm::MAX_VIRTUAL_NODES)]
    VirtualNodes(u32),
    /// `table_size` not a prime or too large.
    #[error("table_size must be a prime no larger than {max} (65537 is a good one), got {0}", max = HashAlgorithm::MAX_TABLE_SIZE)]
    TableSize(u32),
    /// A cookie name that cannot appear in a `Cookie` header.
    #[error("cookie name must be non-empty and hold no ';', '=' or space, got {0:?}")]
    CookieName(String),
    /// `panic_threshold` above 100%.
    #[error("panic_threshold is a percentage, at most 100, got {0}")]
    PanicThreshold(u8),
}

/// Trial division; table sizes are at most 2^24, so at most 2^12 divisions, once.
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut divisor = 2u64;
    while divisor * divisor <= n {
        if n % divisor == 0 {
            return false;
        }
        divisor += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_p2c_peak_ewma_with_half_panic() {
        let config = BalancerConfig::default();
        assert_eq!(
            *config.balancer(),
            Balancer::P2cPeakEwma {
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
            }
        );
        assert_eq!(config.panic_threshold(), 50);
        assert_eq!(
            HashAlgorithm::maglev(),
            HashAlgorithm::Maglev { table_size: 65_537 }
        );
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        let hash = |algorithm| Balancer::ConsistentHash {
            key: HashKey::ClientIp,
            algorithm,
        };
        let cases = [
            (Balancer::RoundRobin, 101, "at most 100, got 101"),
            (
                Balancer::P2cPeakEwma {
                    decay: Duration::ZERO,
                    default_rtt: Duration::from_millis(1),
                },
                50,
                "decay must be non-zero",
            ),
            (
                Balancer::P2cPeakEwma {
                    decay: Duration::from_secs(1),
                    default_rtt: Duration::ZERO,
                },
                50,
                "default_rtt must be non-zero",
            ),
            (
                hash(HashAlgorithm::Ring { virtual_nodes: 0 }),
                50,
                "virtual_nodes must be between 1 and 10000, got 0",
            ),
            (
                hash(HashAlgorithm::Maglev { table_size: 65_536 }),
                50,
                "got 65536",
            ),
            (hash(HashAlgorithm::Maglev { table_size: 1 }), 50, "got 1"),
            (
                Balancer::ConsistentHash {
                    key: HashKey::Cookie("a=b".into()),
                    algorithm: HashAlgorithm::ring(),
                },
                50,
                "cookie name",
            ),
        ];
        for (balancer, threshold, message) in cases {
            let error = BalancerConfig::try_new(balancer, threshold).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        }
        assert!(BalancerConfig::try_new(hash(HashAlgorithm::Maglev { table_size: 7 }), 0).is_ok());
        assert!(BalancerConfig::try_new(Balancer::Random, 100).is_ok());
    }

    #[test]
    fn primes_are_primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
    }
}
