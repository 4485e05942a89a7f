//! The admin listener's `/live` and `/config`: liveness, and the effective config (every
//! default filled in) as YAML that parses back to the config serving, before and after a
//! reload.

use std::net::SocketAddr;

use crate::support::*;

fn config(endpoint: SocketAddr) -> remora::config::Config {
    // Only what differs from the defaults: the rest is filled in.
    remora::build::parse(
        "test.yaml",
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn live_answers_200() {
    let (upstream, _) = recording("a").await;
    let proxy = remora::Sidecar::start(config(upstream)).await.unwrap();
    let admin = proxy.addrs().admin.unwrap();
    let (status, _, body) = get(&format!("http://{admin}/live")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "live\n"));
}

#[tokio::test]
async fn config_is_the_effective_config_as_yaml() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let proxy = remora::Sidecar::start(config(a)).await.unwrap();
    let admin = proxy.addrs().admin.unwrap();
    let served = |text: &str| {
        remora::build::parse("/config", text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };

    let (status, headers, text) = get(&format!("http://{admin}/config")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/yaml");
    assert_eq!(served(&text), *proxy.handle().config());
    // Effective: defaults the source never wrote are there.
    for default in ["connect_timeout", "max_connections", "drain_timeout"] {
        assert!(text.contains(default), "no {default} in:\n{text}");
    }
    assert!(text.contains(&a.to_string()), "{text}");

    proxy.handle().reload(config(b)).await.unwrap();
    let (_, _, text) = get(&format!("http://{admin}/config")).await;
    assert_eq!(served(&text), *proxy.handle().config());
    assert_eq!(served(&text), config(b), "the reloaded config");
    assert!(!text.contains(&a.to_string()), "{text}");
}
