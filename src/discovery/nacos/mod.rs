//! The `nacos` registry: Nacos's open API v1 over HTTP.
//!
//! A watch polls `GET /v1/ns/instance/list` (with `healthyOnly=false`, so that remora
//! sees and decides itself) every `poll_interval` and sends a snapshot when the list
//! changed. Only instances that are enabled, healthy and of a weight above zero get
//! traffic. Nacos 1.x can also push changes over UDP to a port the client opens; remora
//! does not: the server must reach the client's address back (rarely true across NAT or
//! container networks), the push is only a hint the client must still poll behind, and
//! Nacos 2.x replaced it with a gRPC stream.
//!
//! Registration is an ephemeral instance kept healthy by heartbeats ([`beat`]). With
//! `username`/`password`, every request carries an `accessToken` from
//! `POST /v1/auth/login`, renewed before its `tokenTtl` runs out or after a 403.

mod beat;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::{Method, StatusCode};
use serde_json::Value;

use super::connect::RegistryTls;
use super::feed::{self, Closed, Feed};
use super::http::{encode, Answer, RestClient};
use super::metrics::count_malformed;
use super::{Backoff, DiscoveryError, Instance, Registration, Registry};

const NAME: &str = "nacos";

/// Settings of the `nacos` registry.
#[derive(Clone)]
pub struct NacosConfig {
    /// The server: `http://nacos:8848` (the path defaults to `/nacos`), or `https://...`
    /// with `tls`.
    pub address: String,
    /// The namespace id; empty is Nacos's `public` namespace.
    pub namespace: String,
    /// The group of every service looked up or registered.
    pub group: String,
    /// The cluster registered in, and the only one watched when set.
    pub cluster: Option<String>,
    /// Login for an `accessToken`; both or neither.
    pub username: Option<String>,
    /// A secret: never logged.
    pub password: Option<String>,
    /// HTTPS toward the server; required with an `https://` address, refused without.
    pub tls: Option<RegistryTls>,
    /// Time between two reads of a watched service.
    pub poll_interval: Duration,
    /// Heartbeat period of a registration, at most a third of its TTL.
    pub heartbeat_interval: Duration,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// First wait after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl NacosConfig {
    /// The server at `address`, group `DEFAULT_GROUP`, the public namespace: reads every
    /// 2 s, heartbeats every 5 s (Nacos's default), requests answered within 5 s,
    /// backoff 100 ms to 5 s.
    ///
    /// NOTE: 2 s because a Nacos list read is small and the server itself needs 15 s
    /// without heartbeats to mark an instance unhealthy: polling adds little to that.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            namespace: String::new(),
            group: "DEFAULT_GROUP".into(),
            cluster: None,
            username: None,
            password: None,
            tls: None,
            poll_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for NacosConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NacosConfig")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Instances from a Nacos server.
#[derive(Debug, Clone)]
pub struct NacosRegistry {
    client: RestClient,
    config: Arc<NacosConfig>,
    /// The current `accessToken` and when to renew it.
    token: Arc<Mutex<Option<(String, Instant)>>>,
}

impl NacosRegistry {
    /// Checks `config`.
    pub fn new(config: NacosConfig) -> Result<Self, DiscoveryError> {
        let client = RestClient::new(NAME, &config.address, "/nacos", config.tls.as_ref())?;
        if config.username.is_some() != config.password.is_some() {
            return Err(DiscoveryError::new(
                NAME,
                "username and password go together",
            ));
        }
        if config.group.is_empty() {
            return Err(DiscoveryError::new(NAME, "the group must not be empty"));
        }
        for (what, value) in [
            ("poll_interval", config.poll_interval),
            ("heartbeat_interval", config.heartbeat_interval),
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
            config: Arc::new(config),
            token: Arc::default(),
        })
    }

    fn backoff(&self) -> Backoff {
        Backoff::try_new(self.config.min_backoff, self.config.max_backoff)
            .expect("bounds checked by the constructor")
    }

    /// The access token, logging in when there is none or it is about to expire.
    async fn access_token(&self) -> Result<Option<String>, DiscoveryError> {
        let (Some(username), Some(password)) = (&self.config.username, &self.config.password)
        else {
            return Ok(None);
        };
        if let Some((token, renew_at)) = self.token.lock().unwrap().clone() {
            if Instant::now() < renew_at {
                return Ok(Some(token));
            }
        }
        let form = format!(
            "username={}&password={}",
            encode(username),
            encode(password)
        );
        let body = Some(("application/x-www-form-urlencoded", form.into_bytes()));
        let answer = self
            .client
            .call(
                Method::POST,
                "/v1/auth/login",
                &[],
                body,
                self.config.request_timeout,
            )
            .await?
            .success(NAME, "login")?;
        let login: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| DiscoveryError::new(NAME, format!("login: unreadable answer: {e}")))?;
        let token = login["accessToken"]
            .as_str()
            .ok_or_else(|| DiscoveryError::new(NAME, "login: no accessToken in the answer"))?
            .to_string();
        // Renewed at half its life, so a slow request never carries an expired one.
        let ttl = Duration::from_secs(login["tokenTtl"].as_u64().unwrap_or(18_000));
        *self.token.lock().unwrap() = Some((token.clone(), Instant::now() + ttl / 2));
        Ok(Some(token))
    }

    /// One request to `/v1/ns/...` with `query` (encoded pairs), the token added; any
    /// status is an answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Answer, DiscoveryError> {
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(key, value)| format!("{key}={}", encode(value)))
            .collect();
        if let Some(token) = self.access_token().await? {
            pairs.push(format!("accessToken={}", encode(&token)));
        }
        let target = format!("{path}?{}", pairs.join("&"));
        let answer = self
            .client
            .call(
                method.clone(),
                &target,
                &[],
                None,
                self.config.request_timeout,
            )
            .await?;
        if answer.status == StatusCode::FORBIDDEN {
            // A token the server no longer accepts: log in again next time.
            self.token.lock().unwrap().take();
        }
        Ok(answer)
    }

    /// The service, namespace and group parameters every request names.
    fn scope(&self, service: &str) -> Vec<(&'static str, String)> {
        vec![
            ("serviceName", service.to_string()),
            ("groupName", self.config.group.clone()),
            ("namespaceId", self.config.namespace.clone()),
        ]
    }

    async fn list(
        &self,
        service: &str,
    ) -> Result<(Vec<Instance>, BTreeMap<String, String>), DiscoveryError> {
        let mut query = self.scope(service);
        query.push(("clusters", self.config.cluster.clone().unwrap_or_default()));
        query.push(("healthyOnly", "false".into()));
        let path = "/v1/ns/instance/list";
        let answer = self
            .call(Method::GET, path, &query)
            .await?
            .success(NAME, &format!("GET {path}"))?;
        parse_list(&answer.body).map_err(|e| {
            DiscoveryError::new(NAME, format!("list of {service}: unreadable answer: {e}"))
        })
    }

    async fn run_watch(self, service: &str, feed: Feed) -> Result<(), Closed> {
        let mut backoff = self.backoff();
        let mut last: Option<Vec<Instance>> = None;
        // Entries already counted as malformed: each is counted and logged once.
        let mut known_malformed = BTreeMap::new();
        loop {
            match self.list(service).await {
                Ok((instances, malformed)) => {
                    backoff.reset();
                    for (id, why) in &malformed {
                        if !known_malformed.contains_key(id) {
                            tracing::warn!(registry = NAME, service, instance = %id, %why, "ignoring an unreadable Nacos instance");
                            count_malformed(NAME, service);
                        }
                    }
                    known_malformed = malformed;
                    if last.as_ref() != Some(&instances) {
                        last = Some(instances.clone());
                        feed.snapshot(instances).await?;
                    }
                    tokio::time::sleep(self.config.poll_interval).await;
                }
                Err(error) => {
                    tracing::warn!(registry = NAME, service, %error, "nacos list failed; keeping the last instances");
                    last = None;
                    feed.outage(error).await?;
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Reads an instance list: the instances that take traffic (enabled, healthy, weight
/// above zero), sorted by id, and the entries that could not be read, with why.
pub(crate) fn parse_list(body: &[u8]) -> Result<(Vec<Instance>, BTreeMap<String, String>), String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let hosts = root["hosts"].as_array().ok_or("no \"hosts\" list")?;
    let mut instances = Vec::new();
    let mut malformed = BTreeMap::new();
    for (i, host) in hosts.iter().enumerate() {
        let id = host["instanceId"].as_str().map_or_else(
            || format!("{}#{}", host["ip"], host["port"]),
            str::to_string,
        );
        match read_host(&id, host) {
            Ok(Some(instance)) => instances.push(instance),
            Ok(None) => {}
            Err(why) => {
                malformed.insert(if id.is_empty() { i.to_string() } else { id }, why);
            }
        }
    }
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((instances, malformed))
}

/// One host: `Ok(None)` when it is disabled, unhealthy or of weight 0. Nacos weights are
/// decimals; remora's are whole, so they are rounded, at least 1.
fn read_host(id: &str, host: &Value) -> Result<Option<Instance>, String> {
    let ip = host["ip"].as_str().ok_or("no ip")?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("ip {ip:?} is not an IP"))?;
    let port = host["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is not a port", host["port"]))?;
    let weight = host["weight"].as_f64().unwrap_or(1.0);
    if !weight.is_finite() || weight < 0.0 {
        return Err(format!("weight {weight} is not a weight"));
    }
    let mut metadata = BTreeMap::new();
    if let Some(map) = host["metadata"].as_object() {
        for (key, value) in map {
            let value = value
                .as_str()
                .ok_or_else(|| format!("metadata {key:?} is not text"))?;
            metadata.insert(key.clone(), value.to_string());
        }
    }
    let enabled = host["enabled"].as_bool().unwrap_or(true);
    let healthy = host["healthy"].as_bool().unwrap_or(false);
    if !enabled || !healthy || weight == 0.0 {
        return Ok(None);
    }
    Ok(Some(Instance {
        id: id.to_string(),
        addr: SocketAddr::new(ip, port),
        weight: (weight.round() as u32).max(1),
        metadata,
    }))
}

impl Registry for NacosRegistry {
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
        Box::pin(async move { beat::register(this, service, instance, ttl).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enabled_healthy_weighted_hosts_serve_and_bad_ones_are_named() {
        let body = br#"{"name": "DEFAULT_GROUP@@orders", "cacheMillis": 10000, "hosts": [
            {"instanceId": "a", "ip": "10.0.0.1", "port": 80, "weight": 2.6, "healthy": true,
             "enabled": true, "metadata": {"zone": "z"}},
            {"instanceId": "b", "ip": "10.0.0.2", "port": 80, "weight": 1.0, "healthy": false, "enabled": true},
            {"instanceId": "c", "ip": "10.0.0.3", "port": 80, "weight": 1.0, "healthy": true, "enabled": false},
            {"instanceId": "d", "ip": "10.0.0.4", "port": 80, "weight": 0.0, "healthy": true, "enabled": true},
            {"instanceId": "e", "ip": "orders.local", "port": 80, "weight": 1.0, "healthy": true, "enabled": true},
            {"instanceId": "f", "ip": "10.0.0.6", "port": 80, "weight": 0.2, "healthy": true, "enabled": true}
        ]}"#;
        let (instances, malformed) = parse_list(body).unwrap();
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "f"]);
        assert_eq!(instances[0].weight, 3);
        assert_eq!(instances[1].weight, 1);
        assert_eq!(instances[0].metadata["zone"], "z");
        assert_eq!(malformed.into_keys().collect::<Vec<_>>(), ["e"]);
    }

    #[test]
    fn the_password_is_never_shown() {
        let mut config = NacosConfig::new("http://127.0.0.1:8848");
        config.username = Some("nacos".into());
        config.password = Some("hunter2".into());
        assert!(!format!("{config:?}").contains("hunter2"));
        config.password = None;
        assert!(NacosRegistry::new(config).is_err());
    }
}
