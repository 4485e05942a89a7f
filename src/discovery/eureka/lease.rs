//! A Eureka registration: the instance document, its lease and the heartbeats.
//!
//! `POST /apps/<APP>` with the document registers (the server answers 204);
//! `PUT /apps/<APP>/<id>` renews the lease (404: the server no longer knows the
//! instance, after a restart or an eviction, so it is registered again);
//! `DELETE /apps/<APP>/<id>` cancels it. The lease lasts the registration's TTL and is
//! renewed every `renew_interval`, at most every third of the TTL, so that one lost
//! heartbeat never lets it lapse.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Value};

use super::{EurekaRegistry, NAME};
use crate::discovery::http::encode;
use crate::discovery::{DiscoveryError, Instance, Registration};

/// One instance kept registered.
#[derive(Clone)]
struct Lease {
    registry: EurekaRegistry,
    /// Upper-case application name.
    app: String,
    id: String,
    /// The registration body, re-sent when the server forgot the instance.
    document: Value,
    renew_every: Duration,
}

/// The instance document Eureka expects, with a lease of `ttl` renewed every
/// `renew_every`. The weight travels as metadata `weight`, which watches read back.
fn document(app: &str, instance: &Instance, ttl: Duration, renew_every: Duration) -> Value {
    let ip = instance.addr.ip().to_string();
    let mut metadata = instance.metadata.clone();
    metadata.insert("weight".into(), instance.weight.to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({"instance": {
        "instanceId": instance.id,
        "hostName": ip,
        "app": app,
        "ipAddr": ip,
        "vipAddress": app.to_ascii_lowercase(),
        "status": "UP",
        "port": {"$": instance.addr.port(), "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "dataCenterInfo": {
            "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            "name": "MyOwn",
        },
        "leaseInfo": {
            "renewalIntervalInSecs": renew_every.as_secs().max(1),
            "durationInSecs": ttl.as_secs_f64().ceil() as u64,
        },
        "metadata": metadata,
        "lastDirtyTimestamp": now.to_string(),
    }})
}

/// Registers `instance` as part of `app` and keeps its lease renewed.
pub(super) async fn register(
    registry: EurekaRegistry,
    app: String,
    instance: Instance,
    ttl: Duration,
) -> Result<Registration, DiscoveryError> {
    if ttl < Duration::from_secs(1) {
        return Err(DiscoveryError::new(
            NAME,
            format!("lease {ttl:?} is below 1s"),
        ));
    }
    let app = app.to_ascii_uppercase();
    let renew_every = registry.config.renew_interval.min(ttl / 3);
    let lease = Lease {
        document: document(&app, &instance, ttl, renew_every),
        registry,
        app,
        id: instance.id.clone(),
        renew_every,
    };
    lease.register().await?;
    let keep_alive = tokio::spawn(lease.clone().keep_alive());
    let service = lease.app.clone();
    let remove = Box::pin(lease.cancel());
    Ok(Registration::new(
        NAME,
        &service,
        &instance.id,
        keep_alive,
        remove,
    ))
}

impl Lease {
    fn path(&self) -> String {
        format!("/apps/{}/{}", encode(&self.app), encode(&self.id))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::StatusCode, DiscoveryError> {
        let body = body.map(|b| ("application/json", b));
        let answer = self
            .registry
            .client
            .call(
                method.clone(),
                path,
                &[],
                body,
                self.registry.config.request_timeout,
            )
            .await?;
        if answer.status == http::StatusCode::NOT_FOUND {
            return Ok(answer.status);
        }
        answer
            .success(NAME, &format!("{method} {path}"))
            .map(|answer| answer.status)
    }

    async fn register(&self) -> Result<(), DiscoveryError> {
        let path = format!("/apps/{}", encode(&self.app));
        let body = self.document.to_string().into_bytes();
        match self.call(Method::POST, &path, Some(body)).await? {
            http::StatusCode::NOT_FOUND => Err(DiscoveryError::new(
                NAME,
                format!("POST {path}: 404 (is the URL the server's service URL?)"),
            )),
            _ => Ok(()),
        }
    }

    /// A heartbeat; `Ok(false)` when the server no longer knows the instance.
    async fn renew(&self) -> Result<bool, DiscoveryError> {
        let path = format!("{}?status=UP", self.path());
        Ok(self.call(Method::PUT, &path, None).await? != http::StatusCode::NOT_FOUND)
    }

    /// Renews every `renew_every`; registers again when the server forgot the instance.
    async fn keep_alive(self) {
        loop {
            tokio::time::sleep(self.renew_every).await;
            let forgotten = match self.renew().await {
                Ok(true) => continue,
                Ok(false) => true,
                Err(error) => {
                    tracing::warn!(registry = NAME, app = %self.app, instance = %self.id, %error, "eureka heartbeat failed");
                    continue;
                }
            };
            if forgotten {
                tracing::info!(registry = NAME, app = %self.app, instance = %self.id, "eureka forgot the instance; registering again");
                if let Err(error) = self.register().await {
                    tracing::warn!(registry = NAME, app = %self.app, instance = %self.id, %error, "eureka registration failed");
                }
            }
        }
    }

    async fn cancel(self) -> Result<(), DiscoveryError> {
        let path = self.path();
        self.call(Method::DELETE, &path, None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_the_lease_weight_and_metadata() {
        let mut instance = Instance::new("10.0.0.7:8080".parse().unwrap()).with_id("orders-1");
        instance.weight = 4;
        instance
            .metadata
            .insert("remora_mtls".into(), "spiffe://x/y".into());
        let doc = document(
            "ORDERS",
            &instance,
            Duration::from_secs(90),
            Duration::from_secs(30),
        );
        let doc = &doc["instance"];
        assert_eq!(doc["port"]["$"], 8080);
        assert_eq!(doc["port"]["@enabled"], "true");
        assert_eq!(doc["leaseInfo"]["durationInSecs"], 90);
        assert_eq!(doc["leaseInfo"]["renewalIntervalInSecs"], 30);
        assert_eq!(doc["metadata"]["weight"], "4");
        assert_eq!(doc["metadata"]["remora_mtls"], "spiffe://x/y");
        assert_eq!(doc["dataCenterInfo"]["name"], "MyOwn");
    }
}
