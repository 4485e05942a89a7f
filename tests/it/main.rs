//! remora's scenario tests, one module per capability, linked as one test binary: each
//! drives the real proxy (a `remora::Sidecar` or the `remora` binary) through real
//! sockets against programmable upstreams and asserts what a user would observe.
//! [`support`] holds the upstreams, clients and harnesses (etcd, an OTLP collector)
//! they share.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod support;

/// The example services of `examples/compose` and `examples/local` (`frontend`, `orders`,
/// `inventory`), run in-process by the topology tests.
#[path = "../../examples/services/mod.rs"]
mod services;

mod access_log;
mod admin;
mod balance;
mod breaker;
mod cli;
mod config;
mod config_discovery;
mod config_policies;
mod demo;
mod deploy;
mod discovery_consul;
mod discovery_dns;
mod discovery_etcd;
mod discovery_eureka;
mod discovery_file;
mod discovery_nacos;
mod discovery_sidecar;
mod discovery_zookeeper;
mod docs;
mod drain;
mod fallback;
mod floors;
mod grpc;
mod h2c;
mod health;
mod hostile;
mod http1;
mod local_topology;
mod metrics;
mod mtls_inbound;
mod mtls_mesh;
mod mtls_outbound;
mod names;
mod netns;
mod otlp_export;
#[cfg(feature = "otlp-sdk-exporter")]
mod otlp_sdk_exporter;
mod pool;
mod rate_limit;
mod rate_limit_shared;
mod reload;
mod retry;
mod routing;
mod secrets;
mod tcp;
mod timeout;
mod tls;
mod tls_client;
mod tracing;
mod traffic_metrics;
mod upstream_faults;
mod upstream_faults_h2;
mod upstream_http1;
mod validate_is_building;
mod websocket;
