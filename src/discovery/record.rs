//! The JSON shape of an instance as registries store it.
//!
//! `{"id": "orders-1", "address": "10.0.0.7", "port": 8080, "weight": 1,
//! "metadata": {"zone": "a"}}`; `id`, `weight` and `metadata` may be left out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::Instance;

/// An [`Instance`] as stored in a registry value or a discovery file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    /// Unique within the service; defaults to `address:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An IP address (registries hold resolved addresses, not host names).
    pub address: IpAddr,
    /// The port the instance listens on.
    pub port: u16,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl From<InstanceRecord> for Instance {
    fn from(record: InstanceRecord) -> Self {
        let addr = SocketAddr::new(record.address, record.port);
        Instance {
            id: record.id.unwrap_or_else(|| addr.to_string()),
            addr,
            weight: record.weight,
            metadata: record.metadata,
        }
    }
}

impl From<&Instance> for InstanceRecord {
    fn from(instance: &Instance) -> Self {
        InstanceRecord {
            id: Some(instance.id.clone()),
            address: instance.addr.ip(),
            port: instance.addr.port(),
            weight: instance.weight,
            metadata: instance.metadata.clone(),
        }
    }
}

impl Instance {
    /// The instance as a registry value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&InstanceRecord::from(self))
            .expect("an instance record always serializes")
    }

    /// Reads a registry value.
    pub fn from_json(value: &[u8]) -> Result<Instance, serde_json::Error> {
        serde_json::from_slice::<InstanceRecord>(value).map(Instance::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_fills_defaults() {
        let mut instance = Instance::new("10.0.0.7:8080".parse().unwrap()).with_id("orders-1");
        instance.metadata.insert("zone".into(), "a".into());
        let json = instance.to_json();
        assert_eq!(
            json,
            r#"{"id":"orders-1","address":"10.0.0.7","port":8080,"weight":1,"metadata":{"zone":"a"}}"#
        );
        assert_eq!(Instance::from_json(json.as_bytes()).unwrap(), instance);
        let bare = Instance::from_json(br#"{"address":"::1","port":1}"#).unwrap();
        assert_eq!(bare, Instance::new("[::1]:1".parse().unwrap()));
        assert!(Instance::from_json(br#"{"address":"db","port":1}"#).is_err());
    }
}
