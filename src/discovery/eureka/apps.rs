//! Eureka's registry as JSON, and the local copy a watch keeps of it.
//!
//! A full fetch (`GET /apps`) replaces the copy; a delta fetch (`GET /apps/delta`) lists
//! the instances added, modified or deleted recently, each with its `actionType`, and
//! the server's `apps__hashcode` after them. The copy applies the delta, then compares
//! its own hash code with the server's: a mismatch (a missed delta, a server restart)
//! means the copy drifted and must be fetched in full again.
//!
//! Eureka's JSON codec writes a one-element list as a bare object, numbers sometimes as
//! strings, and `"@class"` keys into maps; the readers here accept all of that.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::discovery::Instance;

/// The only status that gets traffic.
pub(super) const UP: &str = "UP";

/// One instance as the server lists it: its status and the raw document, read into an
/// [`Instance`] only when a snapshot is made.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// Upper-case application name.
    pub(super) app: String,
    pub(super) status: String,
    pub(super) document: Value,
}

/// The local copy of the server's registry: instances by id.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Apps {
    entries: BTreeMap<String, Entry>,
    /// `(app, status)` of the full fetch's instances without an id: outside the
    /// snapshots, inside the hash code (the server counts them).
    unreadable: Vec<(String, String)>,
}

/// What one fetch answered.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The server's hash code of its whole registry (after the delta, for a delta).
    pub(crate) hashcode: String,
    /// `(id, entry, action)`; `action` is `ADDED`, `MODIFIED` or `DELETED` in a delta.
    pub(super) instances: Vec<(String, Entry, String)>,
    /// `(app, status)` of instances without an id: they cannot be tracked, so they are
    /// left out (a real server refuses a registration without `hostName`).
    pub(super) unreadable: Vec<(String, String)>,
}

/// A JSON list, or the single object Eureka writes instead of a one-element list.
fn list(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(one) => vec![one],
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the `{"applications": {...}}` answer of a full or delta fetch.
pub(crate) fn parse(body: &[u8]) -> Result<Fetched, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let applications = root
        .get("applications")
        .ok_or("no \"applications\" object in the answer")?;
    let hashcode = text(applications.get("apps__hashcode")).unwrap_or_default();
    let mut instances = Vec::new();
    let mut unreadable = Vec::new();
    for application in list(applications.get("application")) {
        let app = text(application.get("name")).unwrap_or_default();
        for document in list(application.get("instance")) {
            let id = text(document.get("instanceId"))
                .filter(|id| !id.is_empty())
                .or_else(|| text(document.get("hostName")).filter(|h| !h.is_empty()));
            let status = text(document.get("status")).unwrap_or_else(|| "UNKNOWN".into());
            let Some(id) = id else {
                unreadable.push((app.to_ascii_uppercase(), status));
                continue;
            };
            let app = text(document.get("app")).unwrap_or_else(|| app.clone());
            let entry = Entry {
                app: app.to_ascii_uppercase(),
                status,
                document: document.clone(),
            };
            let action = text(document.get("actionType")).unwrap_or_else(|| "ADDED".into());
            instances.push((id, entry, action));
        }
    }
    Ok(Fetched {
        hashcode,
        instances,
        unreadable,
    })
}

impl Apps {
    /// The copy a full fetch makes.
    pub(crate) fn full(fetched: Fetched) -> Self {
        let entries = fetched
            .instances
            .into_iter()
            .map(|(id, entry, _)| (id, entry))
            .collect();
        Self {
            entries,
            unreadable: fetched.unreadable,
        }
    }

    /// How many of `app`'s instances have no id.
    pub(crate) fn unreadable(&self, app: &str) -> usize {
        self.unreadable.iter().filter(|(a, _)| a == app).count()
    }

    /// Applies a delta fetch.
    pub(crate) fn apply(&mut self, delta: Fetched) {
        for (id, entry, action) in delta.instances {
            if action == "DELETED" {
                self.entries.remove(&id);
            } else {
                self.entries.insert(id, entry);
            }
        }
    }

    /// Eureka's reconcile hash code: `STATUS_count_` per status present, statuses in
    /// alphabetical order (`DOWN_1_UP_3_`).
    pub(crate) fn hashcode(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let statuses = self.entries.values().map(|entry| entry.status.as_str());
        for status in statuses.chain(self.unreadable.iter().map(|(_, s)| s.as_str())) {
            *counts.entry(status).or_default() += 1;
        }
        counts
            .iter()
            .map(|(status, count)| format!("{status}_{count}_"))
            .collect()
    }

    /// The instances of `app` that take traffic (status `UP`), sorted by id, and the ids
    /// of its entries that could not be read, with why.
    pub(crate) fn snapshot(&self, app: &str) -> (Vec<Instance>, BTreeMap<String, String>) {
        let mut instances = Vec::new();
        let mut malformed = BTreeMap::new();
        for (id, entry) in &self.entries {
            if !entry.app.eq_ignore_ascii_case(app) || entry.status != UP {
                continue;
            }
            match read_instance(id, &entry.document) {
                Ok(instance) => instances.push(instance),
                Err(why) => {
                    malformed.insert(id.clone(), why);
                }
            }
        }
        (instances, malformed)
    }
}

/// An instance document as an [`Instance`]: `ipAddr`, `port.$` (enabled), metadata
/// without Eureka's `@` keys, weight from metadata `weight`.
fn read_instance(id: &str, document: &Value) -> Result<Instance, String> {
    let ip = text(document.get("ipAddr")).ok_or("no ipAddr")?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("ipAddr {ip:?} is not an IP"))?;
    let port = document.get("port").ok_or("no port")?;
    if text(port.get("@enabled")).is_some_and(|enabled| enabled != "true") {
        return Err("its plain port is disabled".into());
    }
    let number = text(port.get("$")).ok_or("no port number")?;
    let port: u16 = number
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {number:?} is not a port"))?;
    let mut metadata = BTreeMap::new();
    if let Some(Value::Object(map)) = document.get("metadata") {
        for (key, value) in map {
            if key.starts_with('@') {
                continue;
            }
            let value = text(Some(value)).ok_or_else(|| format!("metadata {key:?} is not text"))?;
            metadata.insert(key.clone(), value);
        }
    }
    // The weight is the instance's own field: out of the metadata, so that an instance
    // registered by remora reads back as it was registered.
    let weight = match metadata.remove("weight") {
        None => 1,
        Some(weight) => weight
            .parse::<u32>()
            .ok()
            .filter(|w| *w > 0)
            .ok_or_else(|| format!("metadata weight {weight:?} is not a positive integer"))?,
    };
    Ok(Instance {
        id: id.to_string(),
        addr: SocketAddr::new(ip, port),
        weight,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"applications": {"versions__delta": "1", "apps__hashcode": "DOWN_1_UP_2_",
      "application": [
        {"name": "ORDERS", "instance": [
          {"instanceId": "a", "app": "ORDERS", "ipAddr": "10.0.0.1", "status": "UP",
           "port": {"$": 8080, "@enabled": "true"},
           "metadata": {"@class": "java.util.Collections$EmptyMap", "weight": "3", "zone": "z"}},
          {"instanceId": "b", "app": "ORDERS", "ipAddr": "10.0.0.2", "status": "DOWN",
           "port": {"$": "8080", "@enabled": "true"}}
        ]},
        {"name": "USERS", "instance":
          {"instanceId": "u", "app": "USERS", "ipAddr": "users.local", "status": "UP",
           "port": {"$": 80, "@enabled": "true"}}}
      ]}}"#;

    #[test]
    fn a_full_fetch_keeps_up_instances_and_counts_unreadable_ones() {
        let fetched = parse(FULL.as_bytes()).unwrap();
        assert_eq!(fetched.hashcode, "DOWN_1_UP_2_");
        let apps = Apps::full(fetched);
        assert_eq!(apps.hashcode(), "DOWN_1_UP_2_");
        let (orders, malformed) = apps.snapshot("orders");
        assert!(malformed.is_empty());
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].addr, "10.0.0.1:8080".parse().unwrap());
        assert_eq!(orders[0].weight, 3);
        assert_eq!(orders[0].metadata.len(), 1);
        let (users, malformed) = apps.snapshot("USERS");
        assert!(users.is_empty());
        assert_eq!(malformed.into_keys().collect::<Vec<_>>(), ["u"]);
    }

    #[test]
    fn deltas_add_modify_and_delete() {
        let mut apps = Apps::full(parse(FULL.as_bytes()).unwrap());
        let delta = r#"{"applications": {"apps__hashcode": "UP_3_", "application": [
            {"name": "ORDERS", "instance": [
              {"instanceId": "b", "app": "ORDERS", "ipAddr": "10.0.0.2", "status": "UP",
               "port": {"$": 8080, "@enabled": "true"}, "actionType": "MODIFIED"},
              {"instanceId": "a", "app": "ORDERS", "status": "UP", "actionType": "DELETED"},
              {"instanceId": "c", "app": "ORDERS", "ipAddr": "10.0.0.3", "status": "UP",
               "port": {"$": 8080, "@enabled": "true"}, "actionType": "ADDED"}
            ]}]}}"#;
        let delta = parse(delta.as_bytes()).unwrap();
        let expected = delta.hashcode.clone();
        apps.apply(delta);
        assert_eq!(apps.hashcode(), expected);
        let ids: Vec<String> = apps
            .snapshot("ORDERS")
            .0
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn an_instance_without_an_id_is_left_out_but_kept_in_the_hash_code() {
        let body = r#"{"applications": {"apps__hashcode": "UP_2_", "application":
            {"name": "ORDERS", "instance": [
              {"instanceId": "a", "app": "ORDERS", "ipAddr": "10.0.0.1", "status": "UP",
               "port": {"$": 80, "@enabled": "true"}},
              {"app": "ORDERS", "ipAddr": "10.0.0.2", "status": "UP",
               "port": {"$": 80, "@enabled": "true"}}
            ]}}}"#;
        let fetched = parse(body.as_bytes()).unwrap();
        let expected = fetched.hashcode.clone();
        let apps = Apps::full(fetched);
        assert_eq!(apps.hashcode(), expected, "no full fetch at every poll");
        assert_eq!(apps.unreadable("ORDERS"), 1);
        assert_eq!(apps.snapshot("ORDERS").0.len(), 1);
    }
}
