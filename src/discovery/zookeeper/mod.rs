//! The `zookeeper` registry: Apache Curator's service discovery layout.
//!
//! Every instance is a znode `<base>/<service>/<id>` whose data is Curator's
//! `ServiceInstance` JSON ([`curator`]), so instances registered by Java apps through
//! Curator or Spring Cloud Zookeeper are found, and remora's own registrations are
//! readable by them.
//!
//! A watch ([`watch`]) holds one ZooKeeper session of its own: a persistent recursive
//! watch on `<base>/<service>` (ZooKeeper 3.6 and later), then a listing, then each
//! event applied by reading the znode it names. A lost connection reports an outage
//! while the client reconnects within the session; once connected again the service is
//! listed anew, since events can be lost while disconnected. An expired session is
//! replaced by a new one.
//!
//! A registration ([`ephemeral`]) is an EPHEMERAL znode in a session of its own whose
//! timeout is the registration's TTL: when the sidecar dies, the session expires and
//! ZooKeeper deletes the znode. Deregistering deletes it at once.
//!
//! NOTE: plaintext only: zookeeper-client's TLS builds its own rustls config from PEM
//! (and brings its own rustls features), which remora's TLS settings cannot feed.

mod curator;
mod ephemeral;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use zookeeper_client::Client;

use super::feed;
use super::{Backoff, DiscoveryError, Instance, Registration, Registry};
use curator::Payload;

pub use curator::Payload as ZookeeperPayload;
pub(crate) use curator::{from_json as curator_from_json, to_json as curator_to_json};

const NAME: &str = "zookeeper";

/// Settings of the `zookeeper` registry.
#[derive(Debug, Clone)]
pub struct ZookeeperConfig {
    /// The ensemble's client addresses, `host:port`.
    pub servers: Vec<String>,
    /// The znode under which every service lives, without a trailing slash.
    pub base: String,
    /// Session timeout asked for by a watch; the server bounds it (by default to 2 to
    /// 20 ticks).
    pub session_timeout: Duration,
    /// Limit on establishing one connection.
    pub connect_timeout: Duration,
    /// Limit on one request (list, read, create, delete).
    pub request_timeout: Duration,
    /// What a registration puts in Curator's `payload`.
    pub payload: Payload,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl ZookeeperConfig {
    /// `servers` under `/services` (Spring Cloud Zookeeper's root), 10 s sessions, 2 s
    /// connect, 5 s requests, backoff 100 ms to 5 s.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            base: "/services".into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            payload: Payload::default(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Instances kept in ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZookeeperRegistry {
    config: Arc<ZookeeperConfig>,
    /// `servers` joined: the client's connect string.
    connect_string: Arc<str>,
}

impl ZookeeperRegistry {
    /// Checks `config`; sessions are made by each watch and registration.
    pub fn new(mut config: ZookeeperConfig) -> Result<Self, DiscoveryError> {
        if config.servers.is_empty() {
            return Err(DiscoveryError::new(NAME, "at least one server is needed"));
        }
        for server in &config.servers {
            if !is_host_port(server) {
                return Err(DiscoveryError::new(
                    NAME,
                    format!("server {server:?} is not host:port"),
                ));
            }
        }
        config.base = config.base.trim_end_matches('/').to_string();
        check_base(&config.base).map_err(|message| DiscoveryError::new(NAME, message))?;
        if [
            config.session_timeout,
            config.connect_timeout,
            config.request_timeout,
        ]
        .iter()
        .any(|t| t.is_zero())
        {
            return Err(DiscoveryError::new(NAME, "timeouts must be non-zero"));
        }
        Backoff::for_registry(NAME, config.min_backoff, config.max_backoff)?;
        let connect_string = config.servers.join(",").into();
        Ok(Self {
            config: Arc::new(config),
            connect_string,
        })
    }

    /// The znode of `service`, parent of its instances.
    pub fn service_path(&self, service: &str) -> String {
        format!("{}/{service}", self.config.base)
    }

    fn backoff(&self) -> Backoff {
        Backoff::try_new(self.config.min_backoff, self.config.max_backoff)
            .expect("bounds checked by the constructor")
    }

    /// Opens a session of `session_timeout`. A `detached` session is not closed when its
    /// client is dropped: it lives until it expires, like a crashed process's.
    async fn connect(
        &self,
        session_timeout: Duration,
        detached: bool,
    ) -> Result<Client, DiscoveryError> {
        let mut connector = Client::connector()
            .with_session_timeout(session_timeout)
            .with_connection_timeout(self.config.connect_timeout)
            .with_fail_eagerly();
        if detached {
            connector = connector.with_detached();
        }
        let servers = &self.connect_string;
        // Each server is tried once, each within connect_timeout; then the handshake.
        let limit = self.config.connect_timeout * self.config.servers.len() as u32
            + self.config.request_timeout;
        match tokio::time::timeout(limit, connector.connect(servers)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(DiscoveryError::new(
                NAME,
                format!("connect to {servers}: {error}"),
            )),
            Err(_) => Err(DiscoveryError::new(
                NAME,
                format!("connect to {servers}: no session within {limit:?}"),
            )),
        }
    }

    /// Runs one request on the znode `path` within `request_timeout`; the error names
    /// what was done and where.
    async fn timed<T>(
        &self,
        what: &str,
        path: &str,
        call: impl std::future::Future<Output = Result<T, zookeeper_client::Error>>,
    ) -> Result<T, ZkFailure> {
        match tokio::time::timeout(self.config.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let described = self.failed(what, path, &error);
                Err(ZkFailure::Server(error, described))
            }
            Err(_) => Err(ZkFailure::NoAnswer(DiscoveryError::new(
                NAME,
                format!(
                    "{what} {path}: no answer within {:?}",
                    self.config.request_timeout
                ),
            ))),
        }
    }

    fn failed(&self, what: &str, path: &str, error: &dyn std::fmt::Display) -> DiscoveryError {
        DiscoveryError::new(NAME, format!("{what} {path}: {error}"))
    }
}

/// A request that failed: ZooKeeper's answer (to match on), or no answer.
#[derive(Debug)]
enum ZkFailure {
    /// The server or the session answered with an error.
    Server(zookeeper_client::Error, DiscoveryError),
    /// No answer in time.
    NoAnswer(DiscoveryError),
}

impl ZkFailure {
    /// The server's error code, if it answered.
    fn code(&self) -> Option<&zookeeper_client::Error> {
        match self {
            ZkFailure::Server(code, _) => Some(code),
            ZkFailure::NoAnswer(_) => None,
        }
    }
}

impl From<ZkFailure> for DiscoveryError {
    fn from(failure: ZkFailure) -> Self {
        match failure {
            ZkFailure::Server(_, error) | ZkFailure::NoAnswer(error) => error,
        }
    }
}

/// Whether `text` is `host:port` with a port.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty() && !host.contains(['/', ',', ' ']) && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// Checks a base znode path: absolute, no empty or relative segment, not the root.
fn check_base(base: &str) -> Result<(), String> {
    let Some(rest) = base.strip_prefix('/') else {
        return Err(format!("base {base:?} must start with '/'"));
    };
    if rest.is_empty() {
        return Err("base must not be the root znode: write e.g. `/services`".into());
    }
    if rest
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!("base {base:?} has an empty, `.` or `..` segment"));
    }
    Ok(())
}

impl Registry for ZookeeperRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let this = self.clone();
        let service = service.to_string();
        feed::spawn(move |feed| async move { watch::run(this, service, feed).await })
    }

    fn register(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Registration, DiscoveryError>> {
        let this = self.clone();
        let service = service.to_string();
        Box::pin(async move { ephemeral::register(this, service, instance, ttl).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_base_are_checked() {
        assert!(is_host_port("zk-1:2181") && is_host_port("[::1]:2181"));
        assert!(!is_host_port("zk-1") && !is_host_port("zk-1:0") && !is_host_port("a/b:1"));
        assert!(check_base("/services").is_ok() && check_base("/a/b").is_ok());
        for bad in ["services", "/", "/a//b", "/a/../b"] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
        let mut config = ZookeeperConfig::new(vec!["127.0.0.1:2181".into()]);
        config.base = "/services/".into();
        let registry = ZookeeperRegistry::new(config).unwrap();
        assert_eq!(registry.service_path("orders"), "/services/orders");
        assert!(ZookeeperRegistry::new(ZookeeperConfig::new(vec![])).is_err());
    }
}
