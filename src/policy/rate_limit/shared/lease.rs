//! Tokens a replica took from Redis in a batch and has not spent yet, per bucket key.
//!
//! A leased token was already counted in Redis when it was taken, so spending it later
//! never lets the sum of all replicas exceed what Redis granted; it only moves the
//! admission in time. Leases expire after [`LEASE_LIFETIME`] so that tokens are not
//! spent long after the budget they came from, and the table holds at most
//! `max_keys` keys (a key that finds it full just gets no lease: batches of one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long taken tokens stay spendable.
pub(super) const LEASE_LIFETIME: Duration = Duration::from_secs(1);

struct Lease {
    tokens: u32,
    expires: Instant,
}

/// Unspent tokens by bucket key.
pub(super) struct Leases {
    table: Mutex<HashMap<String, Lease>>,
    max_keys: usize,
}

impl Leases {
    pub(super) fn new(max_keys: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// Spends one leased token of `key`, if it holds an unexpired one.
    pub(super) fn spend(&self, key: &str) -> bool {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lease) = table.get_mut(key) else {
            return false;
        };
        if lease.expires <= Instant::now() {
            table.remove(key);
            return false;
        }
        lease.tokens -= 1;
        if lease.tokens == 0 {
            table.remove(key);
        }
        true
    }

    /// Keeps `tokens` more tokens of `key` for later calls.
    pub(super) fn keep(&self, key: &str, tokens: u32) {
        if tokens == 0 {
            return;
        }
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = table.get_mut(key) {
            lease.tokens += tokens;
            lease.expires = now + LEASE_LIFETIME;
            return;
        }
        if table.len() >= self.max_keys {
            table.retain(|_, lease| lease.expires > now);
            if table.len() >= self.max_keys {
                return;
            }
        }
        table.insert(
            key.to_string(),
            Lease {
                tokens,
                expires: now + LEASE_LIFETIME,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tokens_are_spent_once_each() {
        let leases = Leases::new(10);
        leases.keep("a", 2);
        assert!(leases.spend("a"));
        assert!(leases.spend("a"));
        assert!(!leases.spend("a"));
        assert!(!leases.spend("b"));
    }

    #[test]
    fn a_full_table_gives_new_keys_no_lease() {
        let leases = Leases::new(1);
        leases.keep("a", 1);
        leases.keep("b", 1);
        assert!(!leases.spend("b"));
        assert!(leases.spend("a"));
    }
}
