//! The `eureka` registry: a Eureka server's REST API (JSON).
//!
//! A watch keeps a local copy of the server's whole registry: one full fetch
//! (`GET /apps`), then a delta fetch (`GET /apps/delta`) every `poll_interval`, applied
//! to the copy and checked against the server's `apps__hashcode`; a mismatch fetches in
//! full again ([`apps`]). Eureka has no push: the poll interval bounds how late a change
//! is seen. Only instances whose status is `UP` get traffic; `DOWN`, `OUT_OF_SERVICE`,
//! `STARTING` and the rest are held out. The copy is of every application because the
//! delta and its hash code cover the whole registry; one poller per registry keeps it
//! for all of the registry's watches ([`poller`]).
//!
//! Registration posts an instance document with a lease, renews it with a heartbeat
//! (a 404 answer means the server forgot it: register again) and cancels it on
//! deregistration ([`lease`]).

pub(crate) mod apps;
mod lease;
mod poller;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::Method;

use super::connect::RegistryTls;
use super::feed::{self, Closed, Feed};
use super::http::RestClient;
use super::metrics::count_malformed;
use super::{Backoff, DiscoveryError, Instance, Registration, Registry};
use apps::Apps;
use poller::{Polled, Slot};

const NAME: &str = "eureka";

/// Settings of the `eureka` registry.
#[derive(Debug, Clone)]
pub struct EurekaConfig {
    /// The server's service URL: `http://eureka:8761/eureka` (the path defaults to
    /// `/eureka`), or `https://...` with `tls`.
    pub url: String,
    /// The application name this sidecar registers under (default: the registered
    /// service's name); Eureka upper-cases it.
    pub app: Option<String>,
    /// Heartbeat period of a registration, at most a third of the lease.
    pub renew_interval: Duration,
    /// Time between delta fetches of a watch.
    pub poll_interval: Duration,
    /// HTTPS toward the server; required with an `https://` URL, refused without.
    pub tls: Option<RegistryTls>,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl EurekaConfig {
    /// The server at `url`: heartbeats every 30 s (Eureka's own default), a delta fetch
    /// every 5 s, requests answered within 5 s, backoff 100 ms to 5 s.
    ///
    /// NOTE: Eureka's clients poll every 30 s. A sidecar polls faster because it routes
    /// the traffic itself: every second of polling delay is a second of calls to an
    /// instance that has left. A delta fetch of an idle registry is a few hundred bytes.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            app: None,
            renew_interval: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            tls: None,
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Instances from a Eureka server.
#[derive(Debug, Clone)]
pub struct EurekaRegistry {
    client: RestClient,
    config: std::sync::Arc<EurekaConfig>,
    /// The poller its watches share.
    poller: Slot,
}

impl EurekaRegistry {
    /// Checks `config`.
    pub fn new(config: EurekaConfig) -> Result<Self, DiscoveryError> {
        let client = RestClient::new(NAME, &config.url, "/eureka", config.tls.as_ref())?;
        for (what, value) in [
            ("renew_interval", config.renew_interval),
            ("poll_interval", config.poll_interval),
            ("request_timeout", config.request_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(DiscoveryError::new(
                    NAME,
                    format!("{what} {value:?} is below 10ms"),
                ));
            }
        }
        Backoff::for_registry(NAME, config.min_backoff, config.max_backoff)?;
        Ok(Self {
            client,
            config: std::sync::Arc::new(config),
            poller: Slot::default(),
        })
    }

    fn backoff(&self) -> Backoff {
        Backoff::try_new(self.config.min_backoff, self.config.max_backoff)
            .expect("bounds checked by the constructor")
    }

    /// `GET /apps` or `/apps/delta`, read.
    async fn fetch(&self, path: &str) -> Result<apps::Fetched, DiscoveryError> {
        let accept = [("accept", "application/json".to_string())];
        let answer = self
            .client
            .call(
                Method::GET,
                path,
                &accept,
                None,
                self.config.request_timeout,
            )
            .await?
            .success(NAME, &format!("GET {path}"))?;
        apps::parse(&answer.body)
            .map_err(|e| DiscoveryError::new(NAME, format!("GET {path}: unreadable answer: {e}")))
    }

    /// Brings `copy` up to date: a delta checked by hash code, or a full fetch when there
    /// is no copy or the delta leaves it different from the server's. `Ok(true)` after a
    /// full fetch.
    async fn refresh(&self, copy: &mut Option<Apps>) -> Result<bool, DiscoveryError> {
        if let Some(current) = copy.as_mut() {
            let delta = self.fetch("/apps/delta").await?;
            let expected = delta.hashcode.clone();
            current.apply(delta);
            if current.hashcode() == expected {
                return Ok(false);
            }
            tracing::debug!(registry = NAME, local = %current.hashcode(), server = %expected, "hash codes differ after a delta; fetching in full");
        }
        *copy = Some(Apps::full(self.fetch("/apps").await?));
        Ok(true)
    }

    /// Follows the shared poller and sends `service`'s instances when they change.
    async fn run_watch(self, service: &str, feed: Feed) -> Result<(), Closed> {
        let app = service.to_ascii_uppercase();
        let mut polled = self.subscribe();
        let mut last: Option<Vec<Instance>> = None;
        // Entries already counted as malformed: each is counted and logged once, when
        // it appears, not at every poll.
        let mut known_malformed = BTreeSet::new();
        loop {
            let current = polled.borrow_and_update().clone();
            match current {
                Polled::Waiting => {}
                Polled::Fresh { apps, full } => {
                    let (instances, malformed) = apps.snapshot(&app);
                    for (id, why) in &malformed {
                        if !known_malformed.contains(id) {
                            tracing::warn!(registry = NAME, app = %app, instance = %id, %why, "ignoring an unreadable Eureka instance");
                            count_malformed(NAME, service);
                        }
                    }
                    known_malformed = malformed.into_keys().collect();
                    // Without an id there is nothing to remember them by: counted at each
                    // full fetch that lists them.
                    let unreadable = if full { apps.unreadable(&app) } else { 0 };
                    if unreadable > 0 {
                        tracing::warn!(registry = NAME, app = %app, unreadable, "ignoring Eureka instances without an instanceId or hostName");
                        for _ in 0..unreadable {
                            count_malformed(NAME, service);
                        }
                    }
                    if last.as_ref() != Some(&instances) {
                        last = Some(instances.clone());
                        feed.snapshot(instances).await?;
                    }
                }
                Polled::Failed(error) => {
                    last = None;
                    feed.outage(error).await?;
                }
            }
            if polled.changed().await.is_err() {
                // The poller never stops while a watch holds a receiver.
                return Ok(());
            }
        }
    }
}

impl Registry for EurekaRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let this = self.clone();
        let service = service.to_string();
        feed::spawn(move |feed| async move { this.run_watch(&service, feed).await })
    }

    fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Registration, DiscoveryError>> {
        let this = self.clone();
        let app = self
            .config
            .app
            .clone()
            .unwrap_or_else(|| service.to_string());
        Box::pin(async move { lease::register(this, app, instance, ttl).await })
    }
}
