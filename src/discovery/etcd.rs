//! The `etcd` registry: instances stored as JSON under `<prefix>/<service>/<instance-id>`.
//!
//! A watch reads the service's keys once (a range read at revision R), then follows a
//! watch from R + 1. A broken watch reconnects with capped backoff and resumes from the
//! last revision it applied; if etcd compacted that revision meanwhile, the watch is
//! cancelled with a compact revision and the service is listed again. Every change is
//! sent as a full snapshot.
//!
//! Registration puts the instance under a lease and keeps the lease alive every TTL/3.
//! When the lease is lost (the keep-alive reports TTL 0, or the stream breaks because
//! etcd restarted), a new lease is granted and the key is put again under it.
//!
//! Over TLS (`https://` endpoints) the client is a tonic channel whose connections are
//! made by discovery's own [`Connector`] with remora's rustls config, ALPN `h2`: one
//! connection at a time, to the first member that answers, the next member after a
//! failure. etcd-client's TLS features are not used, since they build their own rustls
//! config from PEM bytes (and `tls` would bring ring).
//! NOTE: plaintext endpoints keep etcd-client's balanced channel (one connection per
//! member, calls spread over them); TLS ones fail over instead of spreading.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::connect::{chain, host_port, Connector, RegistryTls};
use super::feed::{self, Closed, Feed};
use super::{Backoff, DiscoveryError, Instance, Registration, Registry};

const NAME: &str = "etcd";

/// Settings of the `etcd` registry.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster (`http://10.0.0.2:2379`, `https://10.0.0.2:2379`):
    /// all `http://` or all `https://`.
    pub endpoints: Vec<String>,
    /// TLS toward the cluster; required with `https://` endpoints, refused with
    /// `http://` ones.
    pub tls: Option<RegistryTls>,
    /// Key prefix of every service, without a trailing slash.
    pub prefix: String,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on one unary call (range, grant, put, revoke).
    pub request_timeout: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl EtcdConfig {
    /// `endpoints` under `/remora/services`, 2 s connect, 5 s requests, backoff 100 ms to 5 s.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            prefix: "/remora/services".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Instances kept in etcd.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    config: Arc<EtcdConfig>,
    /// With TLS: the connector of every channel.
    connector: Option<Connector>,
}

impl EtcdRegistry {
    /// Checks `config`; connections are made by each watch and registration.
    pub fn new(mut config: EtcdConfig) -> Result<Self, DiscoveryError> {
        if config.endpoints.is_empty() {
            return Err(DiscoveryError::new(NAME, "at least one endpoint is needed"));
        }
        config.prefix = config.prefix.trim_end_matches('/').to_string();
        if !config.prefix.starts_with('/') {
            return Err(DiscoveryError::new(
                NAME,
                format!("prefix {:?} must start with '/'", config.prefix),
            ));
        }
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(DiscoveryError::new(NAME, "timeouts must be non-zero"));
        }
        Backoff::for_registry(NAME, config.min_backoff, config.max_backoff)?;
        let connector = tls_connector(&config)?;
        Ok(Self {
            config: Arc::new(config),
            connector,
        })
    }

    /// The key prefix of `service`'s instances, with its trailing slash.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.config.prefix)
    }

    fn backoff(&self) -> Backoff {
        Backoff::try_new(self.config.min_backoff, self.config.max_backoff)
            .expect("bounds checked by the constructor")
    }

    async fn connect(&self) -> Result<Client, DiscoveryError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.config.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let Some(connector) = &self.connector else {
            let connect = Client::connect(&self.config.endpoints, Some(options));
            return self.timed("connect", connect).await;
        };
        // The URI names the channel's authority; the connector picks the member.
        let endpoint = tonic::transport::Endpoint::from_shared(self.config.endpoints[0].clone())
            .map_err(|e| self.failed("connect", &e))?
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let channel = async {
            let channel = endpoint
                .connect_with_connector(connector.clone())
                .await
                .map_err(|e| self.failed("connect", &e))?;
            Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options))
                .await
                .map_err(|e| self.failed("connect", &e))
        };
        match tokio::time::timeout(self.config.request_timeout, channel).await {
            Ok(result) => result,
            Err(_) => Err(DiscoveryError::new(
                NAME,
                format!(
                    "connect: no answer within {:?}",
                    self.config.request_timeout
                ),
            )),
        }
    }

    /// `what` failed with `error`: its causes, and over TLS the last connection error
    /// (a server's alert arrives where the client sees only a closed connection).
    fn failed(&self, what: &str, error: &dyn std::error::Error) -> DiscoveryError {
        let mut message = format!("{what}: {}", chain(error));
        if let Some(failure) = self.connector.as_ref().and_then(Connector::last_failure) {
            message.push_str(&format!(" (TLS connection: {failure})"));
        }
        DiscoveryError::new(NAME, message)
    }

    /// Runs one unary call within `request_timeout`.
    async fn timed<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, DiscoveryError> {
        match tokio::time::timeout(self.config.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failed(what, &error)),
            Err(_) => Err(DiscoveryError::new(
                NAME,
                format!("{what}: no answer within {:?}", self.config.request_timeout),
            )),
        }
    }
}

/// The TLS connector of `config`'s endpoints, when they are `https://`; refuses a mix
/// of schemes and a TLS config that does not match them.
fn tls_connector(config: &EtcdConfig) -> Result<Option<Connector>, DiscoveryError> {
    let https = config
        .endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https == 0 {
        if config.tls.is_some() {
            return Err(DiscoveryError::new(
                NAME,
                "TLS is configured but the endpoints are http://: write https://",
            ));
        }
        return Ok(None);
    }
    if https != config.endpoints.len() {
        return Err(DiscoveryError::new(
            NAME,
            "endpoints must be all http:// or all https://",
        ));
    }
    let Some(tls) = &config.tls else {
        return Err(DiscoveryError::new(
            NAME,
            "https:// endpoints need a TLS config",
        ));
    };
    let mut servers = Vec::with_capacity(config.endpoints.len());
    for url in &config.endpoints {
        let authority = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().cloned())
            .ok_or_else(|| DiscoveryError::new(NAME, format!("invalid endpoint URL {url:?}")))?;
        servers.push(host_port(&authority, 2379));
    }
    Connector::new(&servers, Some(tls), b"h2")
        .map(Some)
        .map_err(|e| DiscoveryError::new(NAME, e))
}

impl Registry for EtcdRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let this = self.clone();
        let prefix = self.service_prefix(service);
        feed::spawn(move |feed| async move { this.run_watch(prefix, feed).await })
    }

    fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Registration, DiscoveryError>> {
        let this = self.clone();
        let service = service.to_string();
        Box::pin(async move { this.register_instance(&service, instance, ttl).await })
    }
}

// ---- watch ----

/// What a watch knows between connections.
#[derive(Debug, Default)]
struct WatchState {
    /// The last revision applied; `None` means "list again".
    revision: Option<i64>,
    /// The service's instances by key.
    instances: BTreeMap<Vec<u8>, Instance>,
    /// An outage was reported and no snapshot has been sent since.
    stale: bool,
}

impl WatchState {
    fn snapshot(&self) -> Vec<Instance> {
        self.instances.values().cloned().collect()
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8]) {
        match Instance::from_json(value) {
            Ok(instance) => {
                self.instances.insert(key.to_vec(), instance);
            }
            Err(error) => {
                // One bad value must not hide the other instances.
                tracing::warn!(key = %String::from_utf8_lossy(key), %error, "ignoring an unreadable instance");
                self.instances.remove(key);
            }
        }
    }
}

/// Why one connected stretch of a watch ended.
enum WatchEnd {
    /// The consumer went away.
    Closed,
    /// The connection or the watch failed; reconnect after a backoff.
    Failed(DiscoveryError),
    /// The revision to resume from was compacted; list again now.
    Compacted,
}

impl From<Closed> for WatchEnd {
    fn from(_: Closed) -> Self {
        WatchEnd::Closed
    }
}

impl From<DiscoveryError> for WatchEnd {
    fn from(error: DiscoveryError) -> Self {
        WatchEnd::Failed(error)
    }
}

impl EtcdRegistry {
    async fn run_watch(self, prefix: String, feed: Feed) -> Result<(), Closed> {
        let mut state = WatchState::default();
        let mut backoff = self.backoff();
        let mut client = None;
        loop {
            match self
                .follow(&mut client, &prefix, &mut state, &feed, &mut backoff)
                .await
            {
                WatchEnd::Closed => return Err(Closed),
                WatchEnd::Compacted => {
                    tracing::info!(%prefix, "watch revision was compacted; listing again");
                    state.revision = None;
                }
                WatchEnd::Failed(error) => {
                    client = None;
                    state.stale = true;
                    feed.outage(error).await?;
                    backoff.wait().await;
                }
            }
        }
    }

    /// Connects if needed, lists if needed, then applies watch events until something ends it.
    async fn follow(
        &self,
        client: &mut Option<Client>,
        prefix: &str,
        state: &mut WatchState,
        feed: &Feed,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let client = match client {
            Some(client) => client,
            None => match self.connect().await {
                Ok(connected) => client.insert(connected),
                Err(error) => return WatchEnd::Failed(error),
            },
        };
        match self.watch_once(client, prefix, state, feed, backoff).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn watch_once(
        &self,
        client: &mut Client,
        prefix: &str,
        state: &mut WatchState,
        feed: &Feed,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, WatchEnd> {
        let revision = match state.revision {
            Some(revision) => revision,
            None => {
                let list = client.get(prefix, Some(GetOptions::new().with_prefix()));
                let listed = self.timed("list", list).await?;
                state.instances.clear();
                for kv in listed.kvs() {
                    state.apply_put(kv.key(), kv.value());
                }
                let revision = listed.header().map_or(0, |h| h.revision());
                state.revision = Some(revision);
                state.stale = false;
                backoff.reset();
                feed.snapshot(state.snapshot()).await?;
                revision
            }
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = self
            .timed("watch", client.watch(prefix, Some(options)))
            .await?;
        loop {
            let message = watch
                .message()
                .await
                .map_err(|e| self.failed(&format!("watch {prefix}"), &e))?;
            let Some(response) = message else {
                return Err(
                    DiscoveryError::new(NAME, format!("watch {prefix}: stream ended")).into(),
                );
            };
            if response.compact_revision() > 0 {
                return Err(WatchEnd::Compacted);
            }
            if response.canceled() {
                let reason = response.cancel_reason();
                return Err(DiscoveryError::new(
                    NAME,
                    format!("watch {prefix} cancelled: {reason}"),
                )
                .into());
            }
            if response.created() {
                backoff.reset();
                // NOTE: the watch is back, so the endpoints are fresh again. If the resume
                // revision was compacted, the cancellation follows right after and the
                // re-list sends a corrected snapshot.
                if std::mem::take(&mut state.stale) {
                    feed.snapshot(state.snapshot()).await?;
                }
                continue;
            }
            if response.events().is_empty() {
                continue;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => state.apply_put(kv.key(), kv.value()),
                    EventType::Delete => {
                        state.instances.remove(kv.key());
                    }
                }
                state.revision = Some(kv.mod_revision().max(state.revision.unwrap_or(0)));
            }
            feed.snapshot(state.snapshot()).await?;
        }
    }
}

// ---- registration ----

/// One instance kept under a lease.
#[derive(Clone)]
struct Lease {
    registry: EtcdRegistry,
    client: Client,
    key: String,
    value: String,
    ttl_secs: i64,
    /// The lease the key is attached to now; replaced on re-grant.
    current: Arc<AtomicI64>,
}

impl EtcdRegistry {
    async fn register_instance(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> Result<Registration, DiscoveryError> {
        if ttl < Duration::from_secs(1) {
            return Err(DiscoveryError::new(
                NAME,
                format!("lease TTL {ttl:?} is below 1s"),
            ));
        }
        if instance.id.is_empty() || instance.id.contains('/') {
            return Err(DiscoveryError::new(
                NAME,
                format!(
                    "instance id {:?} must be non-empty and free of '/'",
                    instance.id
                ),
            ));
        }
        let mut lease = Lease {
            registry: self.clone(),
            client: self.connect().await?,
            key: format!("{}{}", self.service_prefix(service), instance.id),
            value: instance.to_json(),
            ttl_secs: i64::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX),
            current: Arc::new(AtomicI64::new(0)),
        };
        lease.grant_and_put().await?;
        let keep_alive = tokio::spawn(lease.clone().keep_alive());
        let remove = Box::pin(lease.revoke());
        Ok(Registration::new(
            NAME,
            service,
            &instance.id,
            keep_alive,
            remove,
        ))
    }
}

impl Lease {
    /// Grants a new lease and puts the key under it.
    async fn grant_and_put(&mut self) -> Result<(), DiscoveryError> {
        let registry = self.registry.clone();
        let granted = registry
            .timed("lease grant", self.client.lease_grant(self.ttl_secs, None))
            .await?;
        // Stored before the put, so a deregistration racing with it revokes this lease.
        self.current.store(granted.id(), Ordering::SeqCst);
        let options = PutOptions::new().with_lease(granted.id());
        let put = self
            .client
            .put(self.key.as_str(), self.value.as_str(), Some(options));
        registry.timed("put", put).await?;
        tracing::debug!(key = %self.key, lease = granted.id(), "registered in etcd");
        Ok(())
    }

    /// Renews the lease forever; re-grants and re-puts whenever it is lost.
    async fn keep_alive(mut self) {
        let mut backoff = self.registry.backoff();
        loop {
            let lost = self.renew().await;
            tracing::warn!(key = %self.key, error = %lost, "etcd lease lost; registering again");
            loop {
                backoff.wait().await;
                match self.grant_and_put().await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(key = %self.key, %error, "etcd registration failed")
                    }
                }
            }
            backoff.reset();
        }
    }

    /// Sends a keep-alive every TTL/3 until the lease or the stream is lost.
    async fn renew(&mut self) -> DiscoveryError {
        let lease = self.current.load(Ordering::SeqCst);
        let interval = Duration::from_secs(self.ttl_secs.max(1) as u64) / 3;
        let (mut keeper, mut responses) = match self.client.lease_keep_alive(lease).await {
            Ok(stream) => stream,
            Err(error) => return DiscoveryError::new(NAME, format!("lease keep-alive: {error}")),
        };
        loop {
            if let Err(error) = keeper.keep_alive().await {
                return DiscoveryError::new(NAME, format!("lease keep-alive: {error}"));
            }
            match tokio::time::timeout(interval, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    return DiscoveryError::new(NAME, format!("lease {lease} expired"))
                }
                Ok(Ok(None)) => return DiscoveryError::new(NAME, "lease keep-alive stream ended"),
                Ok(Err(error)) => {
                    return DiscoveryError::new(NAME, format!("lease keep-alive: {error}"))
                }
                Err(_) => {
                    return DiscoveryError::new(
                        NAME,
                        format!("no keep-alive answer within {interval:?}"),
                    )
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Revokes the current lease, which deletes the key with it.
    async fn revoke(mut self) -> Result<(), DiscoveryError> {
        let lease = self.current.load(Ordering::SeqCst);
        let registry = self.registry.clone();
        match registry
            .timed("lease revoke", self.client.lease_revoke(lease))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone (expired, or etcd lost it): so is the key.
            Err(error) if error.message.contains("lease not found") => Ok(()),
            Err(error) => Err(error),
        }
    }
}
