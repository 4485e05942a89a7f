//! The one step of a shared decision: a GCRA bucket in Redis, updated by a Lua script
//! so that a read and its write are one atomic step and one round trip.
//!
//! The script keeps the bucket's theoretical arrival time (TAT, microseconds on the
//! Redis server's clock, so replicas' clocks never matter) under the bucket's key, takes
//! up to the tokens asked for, and sets the key to expire once the bucket would be full
//! again: an idle bucket is indistinguishable from a missing one.
//!
//! `redis::Script` sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed Redis),
//! loads the script and retries once; the sidecar loads it when it first connects.

use std::num::NonZeroU32;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

/// KEYS[1]: the bucket. ARGV: emission interval (µs), burst, tokens wanted.
/// Returns `{granted, wait_us}`: `wait_us` is how long until one token is free when
/// none was granted.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local free = math.floor((now + burst * interval - tat) / interval + 1e-9)
if free > want then
  free = want
end
if free < 1 then
  return {0, math.ceil(tat + interval - burst * interval - now)}
end
tat = tat + free * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {free, 0}
";

/// What Redis granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    /// Tokens taken (0 when the bucket was empty).
    pub(super) tokens: u32,
    /// With no token: how long until one is free.
    pub(super) retry_after: Duration,
}

/// The GCRA script with one limit's parameters.
pub(super) struct Gcra {
    script: Script,
    /// The emission interval in microseconds, as the script reads it.
    interval_us: String,
    burst: u32,
}

impl Gcra {
    /// A bucket refilling one token every `interval`, holding at most `burst`.
    pub(super) fn new(interval: Duration, burst: NonZeroU32) -> Self {
        Self {
            script: Script::new(GCRA),
            interval_us: format!("{:.3}", interval.as_nanos() as f64 / 1000.0),
            burst: burst.get(),
        }
    }

    /// Takes up to `want` tokens from the bucket `key`.
    pub(super) async fn take(
        &self,
        connection: &mut ConnectionManager,
        key: &str,
        want: u32,
    ) -> RedisResult<Grant> {
        let (tokens, wait_us): (u32, u64) = self
            .script
            .key(key)
            .arg(&self.interval_us)
            .arg(self.burst)
            .arg(want)
            .invoke_async(connection)
            .await?;
        Ok(Grant {
            tokens,
            retry_after: Duration::from_micros(wait_us),
        })
    }

    /// Loads the script, so that the first decision is one round trip.
    pub(super) async fn load(&self, connection: &mut ConnectionManager) -> RedisResult<()> {
        self.script.prepare_invoke().load_async(connection).await?;
        Ok(())
    }
}
