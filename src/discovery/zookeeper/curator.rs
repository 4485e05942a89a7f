//! Apache Curator's `ServiceInstance` JSON, the value of every instance znode.
//!
//! Curator (and Spring Cloud Zookeeper on top of it) stores
//! `{"name", "id", "address", "port", "sslPort", "payload", "registrationTimeUTC",
//! "serviceType", "uriSpec", "enabled"}` under `<base>/<service>/<id>`. Its Jackson
//! reader ignores unknown fields and needs the payload's `@class` to build the payload
//! object, so what remora writes is exactly those fields, with a payload whose class a
//! reader knows (see [`Payload`]).
//!
//! remora reads the same fields leniently: `address` must be an IP and `port` a port,
//! `enabled: false` or a weight of 0 takes the instance out of traffic, and the payload's
//! `metadata` map (Spring Cloud's `ZookeeperInstance`) gives the instance's metadata, its
//! `weight` entry the weight.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::discovery::Instance;

/// The payload class of Spring Cloud Zookeeper's instances.
const SPRING_CLOUD_INSTANCE: &str =
    "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance";

/// The metadata key that carries an instance's weight (Spring Cloud LoadBalancer's).
const WEIGHT: &str = "weight";

/// What remora puts in the `payload` of its own registrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Payload {
    /// Spring Cloud Zookeeper's `ZookeeperInstance` (`@class`, `id`, `name`,
    /// `metadata`): Spring apps read the instance with its metadata; remora sidecars read
    /// the metadata (mutual TLS identity, weight, zone).
    #[default]
    SpringCloud,
    /// `null`: any Curator reader accepts it, whatever its payload class, but the
    /// metadata is not carried.
    Empty,
}

/// The instance as Curator stores it: `service`'s `instance`, registered `now`, its
/// znode ephemeral (`DYNAMIC`).
pub fn to_json(service: &str, instance: &Instance, payload: Payload, now: SystemTime) -> String {
    let registered = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let payload = match payload {
        Payload::Empty => Value::Null,
        Payload::SpringCloud => {
            let mut metadata = instance.metadata.clone();
            if instance.weight != 1 {
                metadata.insert(WEIGHT.into(), instance.weight.to_string());
            }
            json!({
                "@class": SPRING_CLOUD_INSTANCE,
                "id": instance.id,
                "name": service,
                "metadata": metadata,
            })
        }
    };
    json!({
        "name": service,
        "id": instance.id,
        "address": instance.addr.ip().to_string(),
        "port": instance.addr.port(),
        "sslPort": null,
        "payload": payload,
        "registrationTimeUTC": registered,
        "serviceType": "DYNAMIC",
        "uriSpec": null,
        "enabled": true,
    })
    .to_string()
}

/// Reads the znode `id`'s value: `Ok(None)` for an instance that takes no traffic
/// (disabled, weight 0), `Err` saying why for one that cannot be used.
pub fn from_json(id: &str, data: &[u8]) -> Result<Option<Instance>, String> {
    let value: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let address = fields
        .get("address")
        .and_then(Value::as_str)
        .ok_or("no \"address\"")?;
    let ip: IpAddr = address
        .parse()
        .map_err(|_| format!("address {address:?} is not an IP"))?;
    let port = match fields.get("port") {
        Some(Value::Number(port)) => port
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port} is not a port"))?,
        // Curator allows an instance with only an `sslPort`; remora would need TLS.
        _ => return Err("no plaintext \"port\"".into()),
    };
    let mut metadata = payload_metadata(&fields)?;
    let weight = match metadata.remove(WEIGHT) {
        None => 1,
        Some(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("weight {text:?} is not a whole number"))?,
    };
    let enabled = fields
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !enabled || weight == 0 {
        return Ok(None);
    }
    Ok(Some(Instance {
        id: id.to_string(),
        addr: SocketAddr::new(ip, port),
        weight,
        metadata,
    }))
}

/// The text entries of the payload's `metadata` map; none without a payload or a map.
fn payload_metadata(fields: &Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(Value::Object(map)) = fields.get("payload").and_then(|p| p.get("metadata")) else {
        return Ok(BTreeMap::new());
    };
    let mut metadata = BTreeMap::new();
    for (key, value) in map {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Null => continue,
            _ => return Err(format!("metadata {key:?} is not text")),
        };
        metadata.insert(key.clone(), text);
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Spring Cloud Zookeeper writes (through Curator) for an app instance.
    const SPRING: &str = r#"{"name":"orders","id":"5f1c","address":"10.0.0.7",
        "port":8080,"sslPort":null,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "id":"orders-1","name":"orders","metadata":{"instance_status":"UP","zone":"a"}},
        "registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC",
        "uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false}]}}"#;

    #[test]
    fn reads_what_spring_cloud_writes() {
        let instance = from_json("5f1c", SPRING.as_bytes()).unwrap().unwrap();
        assert_eq!(instance.id, "5f1c");
        assert_eq!(instance.addr, "10.0.0.7:8080".parse().unwrap());
        assert_eq!(instance.weight, 1);
        assert_eq!(instance.metadata["zone"], "a");
    }

    #[test]
    fn writes_a_service_instance_and_reads_it_back() {
        let mut instance = Instance::new("10.0.0.7:8080".parse().unwrap()).with_id("orders-1");
        instance.weight = 3;
        instance
            .metadata
            .insert("remora_mtls".into(), "spiffe://x/y".into());
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let json = to_json("orders", &instance, Payload::SpringCloud, at);
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["serviceType"], "DYNAMIC");
        assert_eq!(value["registrationTimeUTC"], 1_700_000_000_123u64);
        assert_eq!(value["payload"]["@class"], SPRING_CLOUD_INSTANCE);
        assert_eq!(value["payload"]["metadata"]["weight"], "3");
        assert_eq!(
            from_json("orders-1", json.as_bytes()).unwrap(),
            Some(instance)
        );

        let bare = to_json(
            "orders",
            &Instance::new("[::1]:1".parse().unwrap()),
            Payload::Empty,
            at,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&bare).unwrap()["payload"],
            Value::Null
        );
    }

    #[test]
    fn disabled_and_unusable_instances() {
        let disabled = r#"{"address":"10.0.0.1","port":1,"enabled":false}"#;
        assert_eq!(from_json("a", disabled.as_bytes()), Ok(None));
        let drained = r#"{"address":"10.0.0.1","port":1,"payload":{"metadata":{"weight":"0"}}}"#;
        assert_eq!(from_json("a", drained.as_bytes()), Ok(None));
        for (bad, why) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"address":"orders.local","port":1}"#, "is not an IP"),
            (
                r#"{"address":"10.0.0.1","port":null,"sslPort":443}"#,
                "no plaintext",
            ),
            (r#"{"address":"10.0.0.1","port":70000}"#, "is not a port"),
            (
                r#"{"address":"10.0.0.1","port":1,"payload":{"metadata":{"weight":"x"}}}"#,
                "weight",
            ),
        ] {
            let error = from_json("a", bad.as_bytes()).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
