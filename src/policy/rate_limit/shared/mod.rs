//! Shared rate limits: one budget for every replica of a service, kept in Redis.
//!
//! A call first spends a token its replica already took in a batch ([`lease`]); else,
//! unless Redis is in an outage ([`outage`]), it asks Redis for a batch in one atomic
//! step ([`script`]), waiting at most the configured deadline. When Redis fails or is
//! late, the limit's `on_error` decides: admit, refuse, or the replica's own local
//! limit. Refusals are the local limit's: `ProxyError::RateLimited` with the bucket's
//! wait.
//!
//! Buckets are keyed as local ones are (the service, a client IP, a header value),
//! under a prefix naming the service and the limit, so two limits never share a key.

mod config;
mod lease;
mod outage;
mod script;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use governor::clock::Clock;
use http::Request;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use self::lease::Leases;
use self::outage::{Failure, Outage};
use self::script::Gcra;
use super::config::{RateLimitConfig, RateLimitKey};
use super::key::client_ip_key;
use super::layer::Limiter;
use super::metrics::RateLimitMetrics;
use crate::core::body::ProxyBody;
use crate::core::call::CallInfo;

pub use config::{OnError, SharedLimitConfig, SharedLimitConfigError, MAX_TIMEOUT};

/// How long a connection attempt may take (in the background: calls never wait on it
/// beyond their deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a shared limit decides without waiting, or the bucket it must ask Redis about.
pub(super) enum FirstLook {
    /// Decided: a leased token, or the fallback during an outage.
    Decided(Result<(), Duration>),
    /// Ask Redis about this bucket key.
    Ask(String),
}

/// A limit whose buckets live in Redis, with the local limit as its fallback.
pub(super) struct SharedLimiter<C: Clock> {
    client: redis::Client,
    /// Made on first use, inside the runtime; reconnects by itself in the background.
    connection: OnceLock<ConnectionManager>,
    gcra: Gcra,
    /// `remora:rate_limit:<service>:<limit>:`.
    prefix: String,
    key: RateLimitKey,
    batch: u32,
    timeout: Duration,
    on_error: OnError,
    local: Limiter<C>,
    leases: Leases,
    outage: Outage,
}

impl<C: Clock> SharedLimiter<C> {
    /// The shared form of `config` (whose `shared` part is `shared`), falling back to
    /// `local`.
    pub(super) fn new(
        config: &RateLimitConfig,
        shared: &SharedLimitConfig,
        service: Arc<str>,
        limit: Arc<str>,
        metrics: &RateLimitMetrics,
        local: Limiter<C>,
    ) -> Self {
        let outage = Outage::new(
            metrics.shared(&service, &limit),
            service.clone(),
            limit.clone(),
            shared.peer.clone(),
            shared.on_error,
        );
        Self {
            client: shared.client.clone(),
            connection: OnceLock::new(),
            gcra: Gcra::new(config.replenish_interval(), config.burst()),
            prefix: format!("remora:rate_limit:{service}:{limit}:"),
            key: config.key.clone(),
            batch: shared.batch().get(),
            timeout: shared.timeout,
            on_error: shared.on_error,
            local,
            leases: Leases::new(config.max_keys.get()),
            outage,
        }
    }

    fn connection(&self) -> ConnectionManager {
        self.connection
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(CONNECT_TIMEOUT);
                // NOTE: this fails only for push-message settings, which are not used.
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .expect("a connection manager without push messages")
            })
            .clone()
    }

    /// The per-replica limiter `on_error: local` falls back to.
    pub(super) fn local(&self) -> &Limiter<C> {
        &self.local
    }

    /// Decides from what this replica holds, or names the bucket to ask Redis about.
    pub(super) fn first_look(&self, request: &Request<ProxyBody>) -> FirstLook {
        let key = self.bucket_key(request);
        if self.batch > 1 && self.leases.spend(&key) {
            return FirstLook::Decided(Ok(()));
        }
        if !self.outage.may_ask() {
            return FirstLook::Decided(self.fallback(request));
        }
        FirstLook::Ask(key)
    }

    /// Asks Redis for a batch of `key`'s tokens, within the deadline; `on_error`
    /// decides when it cannot answer.
    pub(super) async fn ask(
        &self,
        key: String,
        request: &Request<ProxyBody>,
    ) -> Result<(), Duration> {
        let mut connection = self.connection();
        let take = self.gcra.take(&mut connection, &key, self.batch);
        match tokio::time::timeout(self.timeout, take).await {
            Ok(Ok(grant)) => {
                self.outage.answered();
                if grant.tokens == 0 {
                    return Err(grant.retry_after);
                }
                self.leases.keep(&key, grant.tokens - 1);
                Ok(())
            }
            Ok(Err(error)) => {
                self.outage.failed(Failure::Redis, &key, &error);
                self.fallback(request)
            }
            Err(_) => {
                let error = format_args!("no answer within {:?}", self.timeout);
                self.outage.failed(Failure::Timeout, &key, &error);
                self.fallback(request)
            }
        }
    }

    /// The decision without Redis.
    fn fallback(&self, request: &Request<ProxyBody>) -> Result<(), Duration> {
        match self.on_error {
            OnError::Open => Ok(()),
            OnError::Closed => Err(self.outage.retry_in()),
            OnError::Local => self.local.admit(request),
        }
    }

    /// The Redis key of the request's bucket. A header value is hashed (SHA-1): fixed
    /// size however long the value, the same on every replica, and not a key a client
    /// can aim at another's.
    fn bucket_key(&self, request: &Request<ProxyBody>) -> String {
        let prefix = &self.prefix;
        match &self.key {
            RateLimitKey::Global => format!("{prefix}all"),
            RateLimitKey::ClientIp => match request.extensions().get::<CallInfo>() {
                Some(call) => format!("{prefix}ip:{}", client_ip_key(call.client.ip())),
                None => format!("{prefix}missing"),
            },
            RateLimitKey::Header(name) => match request.headers().get(name) {
                Some(value) => {
                    let digest = sha1_smol::Sha1::from(value.as_bytes()).digest();
                    format!("{prefix}header:{digest}")
                }
                None => format!("{prefix}missing"),
            },
        }
    }
}

impl<C: Clock + Send + Sync + 'static> SharedLimiter<C>
where
    C::Instant: Send + Sync,
{
    /// Connects and loads the script in the background, when inside a runtime, so that
    /// the first call is one round trip.
    pub(super) fn warm_up(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = Arc::downgrade(self);
        runtime.spawn(async move {
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            let mut connection = limiter.connection();
            match tokio::time::timeout(CONNECT_TIMEOUT, limiter.gcra.load(&mut connection)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    limiter
                        .outage
                        .failed(Failure::Redis, "(loading the script)", &error)
                }
                Err(_) => {
                    let error = format_args!("no connection within {CONNECT_TIMEOUT:?}");
                    limiter
                        .outage
                        .failed(Failure::Timeout, "(loading the script)", &error);
                }
            }
        });
    }
}
