//! Names as endpoints: `host:port` among a service's endpoints and as `inbound.app`,
//! resolved through a real DNS server (`resolver.nameserver` points the sidecar at a
//! test zone) whose records change and which stops; traffic follows the records, and an
//! outage keeps the last addresses serving, marked stale in `/endpoints`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::dns::Zone;
use crate::support::*;

/// `resolver:` for `zone`: TTLs clamped to 100 ms – 1 s, a query given 300 ms.
fn resolver(zone: &Zone) -> String {
    format!(
        "resolver: {{ nameserver: {}, ttl: {{ min: 100ms, max: 1s }}, timeout: 300ms }}\n",
        zone.server
    )
}

/// A caller's sidecar whose service `orders` has `endpoints`, round robin.
async fn caller(zone: &Zone, endpoints: &str) -> remora::Sidecar {
    sidecar(&format!(
        "service: frontend\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         services:\n  orders:\n    listen: 127.0.0.1:0\n    endpoints: [{endpoints}]\n    balancer: {{ algorithm: round_robin }}\n",
        resolver(zone)
    ))
    .await
}

/// Recording upstreams on `127.0.0.<last>` for each of `lasts`, all on one port.
async fn on_one_port(lasts: &[u8], names: &[&'static str]) -> (u16, Vec<Log>) {
    'pick: for _ in 0..20 {
        let port = free_port();
        let mut listeners = Vec::new();
        for last in lasts {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, *last), port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'pick,
            }
        }
        let logs = listeners
            .into_iter()
            .zip(names)
            .map(|(listener, name)| recording_on(listener, name).1)
            .collect();
        return (port, logs);
    }
    panic!("no port free on every address");
}

/// Who answered a call to the sidecar's `orders` port; `None` unless 200.
async fn answered_by(caller: &remora::Sidecar) -> Option<String> {
    let url = format!("http://{}/", caller.addrs().service("orders").unwrap());
    let (status, headers, _) = get(&url).await;
    (status == 200).then(|| headers["x-upstream"].to_str().unwrap().to_string())
}

/// `/endpoints`' entry of `service`.
async fn endpoints_of(sidecar: &remora::Sidecar, service: &str) -> Value {
    let admin = sidecar.addrs().admin.unwrap();
    let body = get(&format!("http://{admin}/endpoints")).await.2;
    let all: Value = serde_json::from_str(&body).unwrap();
    let found = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service);
    found
        .cloned()
        .unwrap_or_else(|| panic!("{service} in {body}"))
}

/// The addresses and names `/endpoints` lists for `service`.
async fn listed(sidecar: &remora::Sidecar, service: &str) -> Vec<(String, Option<String>)> {
    let entry = endpoints_of(sidecar, service).await;
    let endpoints = entry["endpoints"].as_array().unwrap().iter();
    endpoints
        .map(|e| {
            let name = e.get("name").and_then(Value::as_str).map(str::to_string);
            (e["address"].as_str().unwrap().to_string(), name)
        })
        .collect()
}

#[tokio::test]
async fn a_name_stands_for_every_address_it_resolves_to() {
    let mut zone = Zone::start().await;
    let (port, logs) = on_one_port(&[1, 2], &["one", "two"]).await;
    zone.set_a("orders.test.local.", 60, &[1, 2]).await;
    let caller = caller(&zone, &format!("orders.test.local:{port}")).await;

    for _ in 0..10 {
        assert!(answered_by(&caller).await.is_some());
    }
    assert!(
        logs[0].len() >= 4 && logs[1].len() >= 4,
        "both addresses serve"
    );

    let name = Some(format!("orders.test.local:{port}"));
    assert_eq!(
        listed(&caller, "orders").await,
        vec![
            (format!("127.0.0.1:{port}"), name.clone()),
            (format!("127.0.0.2:{port}"), name),
        ]
    );
    let entry = endpoints_of(&caller, "orders").await;
    assert_eq!(entry["source"], "static+dns");
    assert_eq!(entry["stale"], false);
}

#[tokio::test]
async fn traffic_follows_a_changed_record_within_its_ttl() {
    let mut zone = Zone::start().await;
    let (port, _) = on_one_port(&[1, 3], &["one", "three"]).await;
    zone.set_a("orders.test.local.", 1, &[1]).await;
    let caller = caller(&zone, &format!("orders.test.local:{port}")).await;
    assert_eq!(answered_by(&caller).await.as_deref(), Some("one"));

    let changed = Instant::now();
    zone.set_a("orders.test.local.", 1, &[3]).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            answered_by(&caller).await.as_deref() == Some("three")
        })
        .await,
        "the new address serves"
    );
    // The 1 s TTL, one query and a little scheduling: never the 60 s ceiling's worth.
    assert!(changed.elapsed() < Duration::from_millis(2500));
    for _ in 0..5 {
        assert_eq!(answered_by(&caller).await.as_deref(), Some("three"));
    }
}

#[tokio::test]
async fn a_dns_outage_keeps_the_last_addresses_serving_marked_stale() {
    let mut zone = Zone::start().await;
    let (port, logs) = on_one_port(&[1, 2], &["one", "two"]).await;
    zone.set_a("orders.test.local.", 1, &[1, 2]).await;
    let caller = caller(&zone, &format!("orders.test.local:{port}")).await;
    assert!(answered_by(&caller).await.is_some());

    zone.stop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            endpoints_of(&caller, "orders").await["stale"] == true
        })
        .await,
        "an unanswered re-resolution marks the set stale"
    );
    let entry = endpoints_of(&caller, "orders").await;
    assert!(
        entry["last_error"]
            .as_str()
            .unwrap()
            .contains("orders.test.local"),
        "{entry}"
    );
    assert_eq!(
        listed(&caller, "orders").await.len(),
        2,
        "nothing is dropped"
    );
    let before = (logs[0].len(), logs[1].len());
    for _ in 0..10 {
        assert!(answered_by(&caller).await.is_some());
    }
    assert!(logs[0].len() > before.0 && logs[1].len() > before.1);
}

#[tokio::test]
async fn a_list_mixes_addresses_and_names() {
    let mut zone = Zone::start().await;
    let (literal, literal_log) = recording("literal").await;
    let (port, logs) = on_one_port(&[2], &["named"]).await;
    zone.set_a("orders.test.local.", 60, &[2]).await;
    let caller = caller(&zone, &format!("{literal}, orders.test.local:{port}")).await;
    // The address serves at once; the name joins when it resolves.
    assert!(
        eventually(Duration::from_secs(2), || async {
            listed(&caller, "orders").await.len() == 2
        })
        .await
    );

    for _ in 0..10 {
        assert!(answered_by(&caller).await.is_some());
    }
    assert!(literal_log.len() >= 4 && logs[0].len() >= 4, "both serve");
    let listed = listed(&caller, "orders").await;
    assert!(listed.contains(&(literal.to_string(), None)), "{listed:?}");
    assert!(
        listed.contains(&(
            format!("127.0.0.2:{port}"),
            Some(format!("orders.test.local:{port}"))
        )),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_yet_is_served_once_it_does() {
    let mut zone = Zone::start().await;
    let (port, _) = on_one_port(&[4], &["late"]).await;
    // Not a config error: the sidecar starts with an empty, stale set.
    let caller = caller(&zone, &format!("late.test.local:{port}")).await;
    let url = format!("http://{}/", caller.addrs().service("orders").unwrap());
    let (status, headers, _) = get(&url).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-remora-error"], "no-healthy-endpoint");
    assert!(
        eventually(Duration::from_secs(2), || async {
            endpoints_of(&caller, "orders").await["stale"] == true
        })
        .await
    );

    zone.set_a("late.test.local.", 1, &[4]).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            answered_by(&caller).await.as_deref() == Some("late")
        })
        .await,
        "served at the next attempt once the name resolves"
    );
    assert_eq!(endpoints_of(&caller, "orders").await["stale"], false);
}

#[tokio::test]
async fn inbound_app_may_be_a_name() {
    let mut zone = Zone::start().await;
    let (port, logs) = on_one_port(&[5], &["app"]).await;
    zone.set_a("app.test.local.", 60, &[5]).await;
    let sidecar = sidecar(&format!(
        "service: orders\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         {}\
         inbound: {{ listen: 127.0.0.1:0, app: app.test.local:{port} }}\n",
        resolver(&zone)
    ))
    .await;
    let inbound = sidecar.addrs().inbound.unwrap();
    let (status, headers, _) = get(&format!("http://{inbound}/stock")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "app");
    assert_eq!(logs[0].len(), 1);
    assert_eq!(
        listed(&sidecar, "inbound").await,
        vec![(
            format!("127.0.0.5:{port}"),
            Some(format!("app.test.local:{port}"))
        )]
    );
}

#[tokio::test]
async fn a_reload_keeps_a_names_watch_unless_its_list_or_resolver_changes() {
    let mut zone = Zone::start().await;
    let (port, _) = on_one_port(&[6], &["named"]).await;
    let (literal, _) = recording("literal").await;
    zone.set_a("orders.test.local.", 60, &[6]).await;
    let yaml = |endpoints: &str, min: &str| {
        format!(
            "service: frontend\n\
             admin: {{ listen: 127.0.0.1:0 }}\n\
             resolver: {{ nameserver: {}, ttl: {{ min: {min}, max: 1s }}, timeout: 300ms }}\n\
             services:\n  orders:\n    listen: 127.0.0.1:0\n    endpoints: [{endpoints}]\n",
            zone.server
        )
    };
    let config = |text: String| remora::build::parse("test.yaml", &text).unwrap();
    let named = format!("orders.test.local:{port}");
    let caller = sidecar(&yaml(&named, "100ms")).await;
    assert_eq!(answered_by(&caller).await.as_deref(), Some("named"));

    // The same list and resolver: the watch and its set carry over, so the set stays
    // whole while the DNS server is gone.
    zone.stop();
    let handle = caller.handle();
    handle.reload(config(yaml(&named, "100ms"))).await.unwrap();
    assert_eq!(answered_by(&caller).await.as_deref(), Some("named"));

    // Another resolver setting: a new watch, which finds no server and starts empty.
    handle.reload(config(yaml(&named, "200ms"))).await.unwrap();
    assert_eq!(listed(&caller, "orders").await, vec![]);

    // A list of addresses alone: static again.
    handle
        .reload(config(yaml(&literal.to_string(), "200ms")))
        .await
        .unwrap();
    assert_eq!(answered_by(&caller).await.as_deref(), Some("literal"));
    assert_eq!(endpoints_of(&caller, "orders").await["source"], "static");
}

#[test]
fn malformed_names_are_refused_where_they_are_written() {
    let text = "service: frontend\n\
                inbound: { listen: 127.0.0.1:15006, app: \"app:http\" }\n\
                outbound: {}\n\
                services:\n  orders:\n    endpoints: [orders:8080, \"-orders:8080\"]\n\
                resolver: { ttl: { min: 2s, max: 1s } }\n";
    let error = remora::build::parse("remora.yaml", text).expect_err("malformed");
    let rendered = error.to_string();
    assert!(
        rendered.contains(
            "remora.yaml:2:42: inbound.app: invalid address \"app:http\": \
             the port must be a number from 0 to 65535"
        ),
        "{rendered}"
    );

    let text = text.replace("app:http", "app:8080");
    let error = remora::build::parse("remora.yaml", &text).expect_err("malformed");
    let rendered = error.to_string();
    assert!(
        rendered.contains("remora.yaml:6:30: services.orders.endpoints[1]: invalid address"),
        "{rendered}"
    );

    let text = text.replace("\"-orders:8080\"", "\"10.0.0.7:80\"");
    let error = remora::build::parse("remora.yaml", &text).expect_err("inverted bounds");
    let rendered = error.to_string();
    assert!(
        rendered.contains("resolver.ttl: refresh needs 0 < min <= max"),
        "{rendered}"
    );

    // A name nothing resolves is no config error.
    let text = text.replace("{ min: 2s, max: 1s }", "{ min: 1s, max: 1m }");
    remora::build::parse("remora.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
}
