//! The `consul` registry: the local Consul agent's HTTP API.
//!
//! A watch is a loop of blocking queries, `GET /v1/health/service/<name>?passing=true`
//! with `index` set to the last `X-Consul-Index`: the agent holds each request until the
//! result changes or `wait` elapses, so an idle service costs one request per `wait`. An
//! index that goes backwards (a Consul restart, a snapshot restore) resets it to 0.
//!
//! Registration is an agent service with a TTL check: the sidecar passes the check every
//! TTL/3; if it stops, the check turns critical after the TTL (and the instance leaves
//! every `passing=true` answer), and Consul removes the service after
//! `deregister_critical_after`.
//!
//! Over HTTPS (an `https://` address, or a TLS config) the agent's certificate is
//! checked against its host name or the configured server name, and a client
//! certificate is presented when configured. The ACL token travels in a header, so
//! it is never written to a log: [`ConsulConfig`]'s `Debug` hides it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::uri::Authority;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;

use super::connect::{chain, host_port, Connector, RegistryTls};
use super::feed::{self, Closed, Feed};
use super::{Backoff, DiscoveryError, Instance, Registration, Registry};

const NAME: &str = "consul";

/// The largest answer read from the agent.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Settings of the `consul` registry.
#[derive(Clone)]
pub struct ConsulConfig {
    /// The agent's address: `host:port` (`127.0.0.1:8500`, `consul:8500`), or a URL
    /// (`http://consul:8500`, `https://consul:8501`).
    pub address: String,
    /// Sent as `X-Consul-Token` when set. A secret: never logged.
    pub token: Option<String>,
    /// HTTPS toward the agent; required with an `https://` address, refused with an
    /// `http://` one.
    pub tls: Option<RegistryTls>,
    /// How long the agent may hold a blocking query.
    pub wait: Duration,
    /// How long a registered instance may stay critical before Consul removes it.
    pub deregister_critical_after: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl ConsulConfig {
    /// The agent at `address`: 30 s blocking queries, removal after 1 min critical,
    /// backoff 100 ms to 5 s.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            token: None,
            tls: None,
            wait: Duration::from_secs(30),
            deregister_critical_after: Duration::from_secs(60),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("wait", &self.wait)
            .field("deregister_critical_after", &self.deregister_critical_after)
            .finish_non_exhaustive()
    }
}

/// Instances from a Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `http` or `https`.
    scheme: &'static str,
    authority: Authority,
    config: ConsulConfig,
    client: Client<Connector, Full<Bytes>>,
    /// The client's connector, asked why a TLS connection closed.
    connector: Connector,
}

/// What the agent answered.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    body: Bytes,
}

impl ConsulRegistry {
    /// Checks `config`.
    pub fn new(config: ConsulConfig) -> Result<Self, DiscoveryError> {
        let refuse =
            |why: &str| DiscoveryError::new(NAME, format!("address {:?}: {why}", config.address));
        let (written, bare) = match config.address.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, config.address.as_str()),
        };
        let scheme = match (written, &config.tls) {
            (Some("https") | None, Some(_)) => "https",
            (Some("http") | None, None) => "http",
            (Some("http"), Some(_)) => {
                return Err(refuse("plain http, but TLS is configured: write https://"))
            }
            (Some("https"), None) => return Err(refuse("https needs a TLS config")),
            (Some(other), _) => return Err(refuse(&format!("{other} is neither http nor https"))),
        };
        let authority = bare
            .trim_end_matches('/')
            .parse::<Authority>()
            .map_err(|e| refuse(&e.to_string()))?;
        let default_port = if scheme == "https" { 8501 } else { 8500 };
        let connector = Connector::new(
            &[host_port(&authority, default_port)],
            config.tls.as_ref(),
            b"http/1.1",
        )
        .map_err(|e| DiscoveryError::new(NAME, e))?;
        if config.wait < Duration::from_secs(1) || config.wait > Duration::from_secs(600) {
            return Err(DiscoveryError::new(
                NAME,
                format!("wait {:?} must be between 1s and 10m", config.wait),
            ));
        }
        Backoff::for_registry(NAME, config.min_backoff, config.max_backoff)?;
        let client = Client::builder(TokioExecutor::new()).build(connector.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                scheme,
                authority,
                config,
                client,
                connector,
            }),
        })
    }

    fn backoff(&self) -> Backoff {
        let config = &self.inner.config;
        Backoff::try_new(config.min_backoff, config.max_backoff)
            .expect("bounds checked by the constructor")
    }

    /// One request to the agent, answered within `timeout`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, DiscoveryError> {
        let failed =
            |message: String| DiscoveryError::new(NAME, format!("{method} {path}: {message}"));
        let uri = format!("{}://{}{path}", self.inner.scheme, self.inner.authority);
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = &self.inner.config.token {
            // Marked sensitive: hidden wherever the request is printed.
            match http::HeaderValue::from_str(token) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request = request.header("x-consul-token", value);
                }
                Err(_) => {
                    return Err(failed(
                        "the token holds characters a header cannot carry".into(),
                    ))
                }
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .client
                .request(request)
                .await
                .map_err(|e| failed(self.why(&e)))?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                index,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
    }

    /// Why a request failed: `error` and its causes, and over TLS the last connection
    /// error (a refused client certificate shows only as a closed connection).
    fn why(&self, error: &dyn std::error::Error) -> String {
        let mut text = chain(error);
        if let Some(failure) = self.inner.connector.last_failure() {
            text = format!("{text} (TLS connection: {failure})");
        }
        text
    }

    /// Fails on a non-success status, quoting the agent's message.
    fn expect_success(answer: Answer, what: &str) -> Result<Answer, DiscoveryError> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        let text = String::from_utf8_lossy(&answer.body);
        Err(DiscoveryError::new(
            NAME,
            format!("{what}: {} {}", answer.status, text.trim()),
        ))
    }
}

impl Registry for ConsulRegistry {
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
        let service = service.to_string();
        Box::pin(async move { this.register_instance(&service, instance, ttl).await })
    }
}

// ---- watch ----

/// One entry of `/v1/health/service/<name>`; only the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: Node,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

impl HealthEntry {
    /// The instance, when its address is an IP (an empty service address means the node's).
    fn into_instance(self) -> Option<Instance> {
        let address = match self.service.address.as_str() {
            "" => &self.node.address,
            address => address,
        };
        let ip = address.parse::<IpAddr>().ok()?;
        Some(Instance {
            id: self.service.id,
            addr: SocketAddr::new(ip, self.service.port),
            weight: self.service.weights.map_or(1, |w| w.passing.max(1)),
            metadata: self.service.meta.unwrap_or_default(),
        })
    }
}

pub(crate) fn parse_health(body: &[u8]) -> Result<Vec<Instance>, String> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut instances = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = entry.service.id.clone();
        match entry.into_instance() {
            Some(instance) => instances.push(instance),
            None => {
                tracing::warn!(instance = %id, "ignoring a Consul instance without an IP address")
            }
        }
    }
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(instances)
}

impl ConsulRegistry {
    async fn run_watch(self, service: &str, feed: Feed) -> Result<(), Closed> {
        let wait = self.inner.config.wait;
        // Consul adds up to wait/16 of jitter; leave room for it and for the network.
        let timeout = wait + wait / 16 + Duration::from_secs(5);
        let mut backoff = self.backoff();
        let mut index = 0u64;
        let mut last: Option<Vec<Instance>> = None;
        loop {
            let path = format!(
                "/v1/health/service/{service}?passing=true&index={index}&wait={}ms",
                wait.as_millis()
            );
            let answer = self
                .call(Method::GET, &path, None, timeout)
                .await
                .and_then(|answer| Self::expect_success(answer, "health query"));
            let result = answer.and_then(|answer| {
                let instances = parse_health(&answer.body)
                    .map_err(|e| DiscoveryError::new(NAME, format!("health of {service}: {e}")))?;
                let next = answer.index.ok_or_else(|| {
                    DiscoveryError::new(NAME, "health answer has no X-Consul-Index")
                })?;
                Ok((instances, next))
            });
            match result {
                Ok((instances, next)) => {
                    backoff.reset();
                    let unchanged = next == index;
                    // An index that goes backwards means a new Consul state: start over.
                    index = if next < index { 0 } else { next };
                    if last.as_ref() != Some(&instances) {
                        last = Some(instances.clone());
                        feed.snapshot(instances).await?;
                    }
                    if unchanged {
                        // A held query that ends without a change is normal; one that
                        // returns at once with the same index must not become a busy loop.
                        tokio::time::sleep(self.inner.config.min_backoff).await;
                    }
                }
                Err(error) => {
                    last = None;
                    feed.outage(error).await?;
                    backoff.wait().await;
                }
            }
        }
    }
}

// ---- registration ----

/// One instance kept registered with a TTL check.
#[derive(Clone)]
struct TtlCheck {
    registry: ConsulRegistry,
    service_id: String,
    check_id: String,
    /// The `/v1/agent/service/register` body, re-sent when the agent forgot the service.
    definition: Vec<u8>,
    ttl: Duration,
}

/// Whether `text` can be used in a URL path as it is.
fn is_path_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

impl ConsulRegistry {
    async fn register_instance(
        &self,
        service: &str,
        instance: Instance,
        ttl: Duration,
    ) -> Result<Registration, DiscoveryError> {
        if ttl < Duration::from_secs(1) {
            return Err(DiscoveryError::new(
                NAME,
                format!("check TTL {ttl:?} is below 1s"),
            ));
        }
        if !is_path_safe(&instance.id) || !is_path_safe(service) {
            return Err(DiscoveryError::new(
                NAME,
                format!("service {service:?} and instance id {:?} may hold only letters, digits, '-', '_', '.', ':'", instance.id),
            ));
        }
        let check_id = format!("service:{}", instance.id);
        let definition = json!({
            "ID": instance.id,
            "Name": service,
            "Address": instance.addr.ip().to_string(),
            "Port": instance.addr.port(),
            "Meta": instance.metadata,
            "Weights": { "Passing": instance.weight, "Warning": 1 },
            "Check": {
                "CheckID": check_id,
                "Name": "remora TTL",
                "TTL": go_duration(ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": go_duration(self.inner.config.deregister_critical_after),
            },
        });
        let check = TtlCheck {
            registry: self.clone(),
            service_id: instance.id.clone(),
            check_id,
            definition: definition.to_string().into_bytes(),
            ttl,
        };
        check.register().await?;
        let keep_alive = tokio::spawn(check.clone().keep_alive());
        let remove = Box::pin(check.deregister());
        Ok(Registration::new(
            NAME,
            service,
            &instance.id,
            keep_alive,
            remove,
        ))
    }
}

impl TtlCheck {
    fn request_timeout(&self) -> Duration {
        self.registry
            .inner
            .config
            .max_backoff
            .max(Duration::from_secs(5))
    }

    async fn register(&self) -> Result<(), DiscoveryError> {
        let answer = self
            .registry
            .call(
                Method::PUT,
                "/v1/agent/service/register",
                Some(self.definition.clone()),
                self.request_timeout(),
            )
            .await?;
        ConsulRegistry::expect_success(answer, "register").map(drop)
    }

    async fn pass(&self) -> Result<(), DiscoveryError> {
        let path = format!("/v1/agent/check/pass/{}", self.check_id);
        let answer = self
            .registry
            .call(Method::PUT, &path, None, self.request_timeout())
            .await?;
        ConsulRegistry::expect_success(answer, "check pass").map(drop)
    }

    /// Passes the check every TTL/3; registers again when the agent no longer knows it.
    async fn keep_alive(self) {
        let interval = self.ttl / 3;
        loop {
            tokio::time::sleep(interval).await;
            let Err(error) = self.pass().await else {
                continue;
            };
            tracing::warn!(service = %self.service_id, %error, "consul check pass failed; registering again");
            if let Err(error) = self.register().await {
                tracing::warn!(service = %self.service_id, %error, "consul registration failed");
            }
        }
    }

    async fn deregister(self) -> Result<(), DiscoveryError> {
        let path = format!("/v1/agent/service/deregister/{}", self.service_id);
        let answer = self
            .registry
            .call(Method::PUT, &path, None, self.request_timeout())
            .await?;
        ConsulRegistry::expect_success(answer, "deregister").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_entries_fall_back_to_the_node_address() {
        let body = br#"[
            {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "b", "Address": "", "Port": 80,
             "Meta": null, "Weights": {"Passing": 3, "Warning": 1}}},
            {"Node": {"Address": "10.0.0.2"}, "Service": {"ID": "a", "Address": "10.0.0.9", "Port": 81,
             "Meta": {"zone": "z"}}},
            {"Node": {"Address": "node.local"}, "Service": {"ID": "c", "Address": "", "Port": 82}}
        ]"#;
        let instances = parse_health(body).unwrap();
        assert_eq!(instances.len(), 2);
        assert_eq!(instances[0].addr, "10.0.0.9:81".parse().unwrap());
        assert_eq!(instances[0].metadata["zone"], "z");
        assert_eq!(instances[1].addr, "10.0.0.1:80".parse().unwrap());
        assert_eq!(instances[1].weight, 3);
    }

    #[test]
    fn rejects_a_bad_address() {
        assert!(ConsulRegistry::new(ConsulConfig::new("http://x/ y")).is_err());
        assert!(ConsulRegistry::new(ConsulConfig::new("127.0.0.1:8500")).is_ok());
    }
}
