//! A Nacos registration: an ephemeral instance kept healthy by heartbeats.
//!
//! `POST /v1/ns/instance` registers (`ephemeral=true`); `PUT /v1/ns/instance/beat`
//! every `heartbeat_interval` (at most a third of the TTL) keeps it healthy; an answer
//! with `code` 20404 (or a 404) means the server no longer knows it, so it is
//! registered again; `DELETE /v1/ns/instance` removes it. The TTL travels in the
//! instance's metadata as Nacos reads it: `preserved.heart.beat.timeout` (unhealthy,
//! no traffic, after one TTL without beats) and `preserved.ip.delete.timeout` (removed
//! after two).

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{NacosRegistry, NAME};
use crate::discovery::{DiscoveryError, Instance, Registration};

/// Nacos's answer `code` for an instance it does not know.
const NOT_FOUND_CODE: i64 = 20404;

/// Nacos's default cluster.
const DEFAULT_CLUSTER: &str = "DEFAULT";

/// One instance kept registered.
#[derive(Clone)]
struct Beat {
    registry: NacosRegistry,
    service: String,
    instance: Instance,
    /// The metadata sent, TTL settings included.
    metadata: Value,
    cluster: String,
    every: Duration,
}

/// Registers `instance` as part of `service` and keeps it healthy.
pub(super) async fn register(
    registry: NacosRegistry,
    service: String,
    instance: Instance,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    if ttl < Duration::from_secs(1) {
        return Err(DiscoveryError::new(
            NAME,
            format!("heartbeat timeout {ttl:?} is below 1s"),
        ));
    }
    let every = registry.config.heartbeat_interval.min(ttl / 3);
    let mut metadata = serde_json::Map::new();
    for (key, value) in &instance.metadata {
        metadata.insert(key.clone(), json!(value));
    }
    let millis = |d: Duration| json!(d.as_millis().to_string());
    metadata.insert("preserved.heart.beat.interval".into(), millis(every));
    metadata.insert("preserved.heart.beat.timeout".into(), millis(ttl));
    metadata.insert("preserved.ip.delete.timeout".into(), millis(ttl * 2));
    let cluster = registry
        .config
        .cluster
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER.into());
    let beat = Beat {
        registry,
        service,
        instance,
        metadata: Value::Object(metadata),
        cluster,
        every,
    };
    beat.register().await?;
    let keep_alive = tokio::spawn(beat.clone().keep_alive());
    let (service, id) = (beat.service.clone(), beat.instance.id.clone());
    let remove = Box::pin(beat.deregister());
    Ok(Registration::new(NAME, &service, &id, keep_alive, remove))
}

impl Beat {
    /// The parameters naming the instance.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = self.registry.scope(&self.service);
        query.push(("ip", self.instance.addr.ip().to_string()));
        query.push(("port", self.instance.addr.port().to_string()));
        query.push(("clusterName", self.cluster.clone()));
        query.push(("ephemeral", "true".into()));
        query
    }

    async fn register(&self) -> Result<(), DiscoveryError> {
        let mut query = self.query();
        query.push(("weight", self.instance.weight.to_string()));
        query.push(("enabled", "true".into()));
        query.push(("healthy", "true".into()));
        query.push(("metadata", self.metadata.to_string()));
        let path = "/v1/ns/instance";
        self.registry
            .call(Method::POST, path, &query)
            .await?
            .success(NAME, &format!("POST {path}"))
            .map(drop)
    }

    /// One heartbeat; `Ok(false)` when the server no longer knows the instance.
    async fn beat(&self) -> Result<bool, DiscoveryError> {
        let group = &self.registry.config.group;
        let beat = json!({
            "cluster": self.cluster,
            "ip": self.instance.addr.ip().to_string(),
            "port": self.instance.addr.port(),
            "metadata": self.metadata,
            "scheduled": true,
            "serviceName": format!("{group}@@{}", self.service),
            "weight": self.instance.weight,
            "period": self.every.as_millis() as u64,
        });
        let mut query = self.registry.scope(&self.service);
        query.push(("ephemeral", "true".into()));
        query.push(("beat", beat.to_string()));
        let path = "/v1/ns/instance/beat";
        let answer = self.registry.call(Method::PUT, path, &query).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let answer = answer.success(NAME, &format!("PUT {path}"))?;
        let code = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v["code"].as_i64());
        Ok(code != Some(NOT_FOUND_CODE))
    }

    /// Beats every `every`; registers again when the server forgot the instance.
    async fn keep_alive(self) {
        let id = &self.instance.id;
        loop {
            tokio::time::sleep(self.every).await;
            match self.beat().await {
                Ok(true) => continue,
                Ok(false) => {
                    tracing::info!(registry = NAME, service = %self.service, instance = %id, "nacos forgot the instance; registering again");
                }
                Err(error) => {
                    tracing::warn!(registry = NAME, service = %self.service, instance = %id, %error, "nacos heartbeat failed");
                    continue;
                }
            }
            if let Err(error) = self.register().await {
                tracing::warn!(registry = NAME, service = %self.service, instance = %id, %error, "nacos registration failed");
            }
        }
    }

    async fn deregister(self) -> Result<(), DiscoveryError> {
        let path = "/v1/ns/instance";
        self.registry
            .call(Method::DELETE, path, &self.query())
            .await?
            .success(NAME, &format!("DELETE {path}"))
            .map(drop)
    }
}
