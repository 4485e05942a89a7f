//! The discovery side of the config: registries, references, registration, balancers,
//! health checks and outlier detection, each mistake located.

const BASE: &str = "\
outbound: {}
inbound: { listen: 127.0.0.1:15006, app: 127.0.0.1:8080 }
registries:
  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }
register: { registry: main, address: 10.0.0.7:15006 }
services:
  stock:
    discovery: { registry: main }
    balancer: { algorithm: maglev, hash_key: 'header:x-user' }
    health_check: { tcp: {}, interval: 5s }
    outlier_detection: { consecutive_failures: 3 }
";

fn error_of(text: &str) -> String {
    remora::build::parse("remora.yaml", text)
        .expect_err("config must be refused")
        .to_string()
}

#[test]
fn the_example_parses_and_resolves() {
    let config = remora::build::parse("remora.yaml", BASE).unwrap_or_else(|e| panic!("{e}"));
    let stock = &config.services["stock"];
    assert!(remora::build::resolve::balancer(&stock.balancer).is_ok());
    assert!(remora::build::resolve::health_check(stock.health_check.as_ref().unwrap()).is_ok());
    assert!(remora::build::resolve::outlier(stock.outlier_detection.as_ref().unwrap()).is_ok());
    assert_eq!(
        config.register.unwrap().ttl,
        std::time::Duration::from_secs(10)
    );
}

#[test]
fn an_unknown_registry_is_located_with_a_suggestion() {
    let error = error_of(&BASE.replace(
        "discovery: { registry: main }",
        "discovery: { registry: mian }",
    ));
    assert!(
        error.starts_with("remora.yaml:8:28: services.stock.discovery.registry: unknown registry `mian`, did you mean `main`?"),
        "{error}"
    );
}

#[test]
fn endpoints_and_discovery_exclude_each_other() {
    let error = error_of(&BASE.replace(
        "    discovery: { registry: main }",
        "    discovery: { registry: main }\n    endpoints: [10.0.0.1:80]",
    ));
    assert!(
        error.contains(
            "services.stock.endpoints: a service takes `endpoints` or `discovery`, not both"
        ),
        "{error}"
    );
}

#[test]
fn consistent_hashing_needs_a_valid_key() {
    let error = error_of(&BASE.replace("hash_key: 'header:x-user'", "hash_key: 'query:user'"));
    assert!(
        error.contains("services.stock.balancer.hash_key: invalid hash_key \"query:user\""),
        "{error}"
    );
    let error = error_of(&BASE.replace(", hash_key: 'header:x-user'", ""));
    assert!(
        error.contains("consistent hashing needs `hash_key`"),
        "{error}"
    );
}

#[test]
fn a_health_check_takes_one_probe() {
    let error = error_of(&BASE.replace("tcp: {}", "tcp: {}, grpc: {}"));
    assert!(
        error.contains("services.stock.health_check: a health check takes exactly one of"),
        "{error}"
    );
}

#[test]
fn registration_needs_a_registry_that_holds_entries() {
    let text = BASE
        .replace(
            "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }",
            "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }\n  names: { dns: {} }",
        )
        .replace(
            "register: { registry: main,",
            "register: { registry: names,",
        );
    let error = error_of(&text);
    assert!(
        error.contains(
            "register.registry: only etcd, Consul, Eureka, Nacos and ZooKeeper registries take registrations"
        ),
        "{error}"
    );
}

#[test]
fn eureka_and_nacos_sections_are_checked_where_written() {
    let eureka = BASE.replace(
        "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }",
        "  main: { eureka: { url: \"eureka:8761\" } }",
    );
    let error = error_of(&eureka);
    assert!(
        error.contains("registries.main.eureka.url: invalid Eureka URL"),
        "{error}"
    );
    let nacos = BASE.replace(
        "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }",
        "  main: { nacos: { address: \"http://127.0.0.1:8848\", username: remora } }",
    );
    let error = error_of(&nacos);
    assert!(
        error.contains("registries.main.nacos: `username` and `password` go together"),
        "{error}"
    );
}

#[test]
fn zookeeper_sections_are_checked_where_written() {
    let zookeeper = |section: &str| {
        BASE.replace(
            "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }",
            &format!("  main:\n    zookeeper: {section}"),
        )
    };
    let good = zookeeper("{ servers: [\"zk-1:2181\", \"zk-2:2181\"], base: /apps, payload: none }");
    let config = remora::build::parse("remora.yaml", &good).unwrap_or_else(|e| panic!("{e}"));
    assert!(remora::build::resolve::registry(&config.registries["main"]).is_ok());

    let error = error_of(&zookeeper("{ servers: [\"zk-1:2181\", zk-2] }"));
    assert!(
        error.contains("remora.yaml:5:41")
            && error.contains(
                "registries.main.zookeeper.servers[1]: invalid ZooKeeper server \"zk-2\""
            ),
        "{error}"
    );
    let error = error_of(&zookeeper("{ servers: [\"zk-1:2181\"], base: services }"));
    assert!(
        error.contains("remora.yaml:5:48")
            && error.contains(
                "registries.main.zookeeper.base: the base \"services\" must start with '/'"
            ),
        "{error}"
    );
    let error = error_of(&zookeeper("{ servers: [], session_timeout: 0s }"));
    assert!(
        error.contains("zookeeper.servers: list at least one"),
        "{error}"
    );
    assert!(
        error.contains("zookeeper.session_timeout: the session timeout must be longer than zero"),
        "{error}"
    );
    let error = error_of(&zookeeper("{ servers: [\"zk-1:2181\"], tls: {} }"));
    assert!(
        error.contains("unknown field `tls`"),
        "TLS is refused: {error}"
    );
}

#[test]
fn a_registry_takes_one_backend() {
    let error = error_of(&BASE.replace(
        "  main: { etcd: { endpoints: [http://127.0.0.1:2379] } }",
        "  main: { etcd: { endpoints: [http://127.0.0.1:2379] }, dns: {} }",
    ));
    assert!(
        error.contains("registries.main: a registry takes exactly one of"),
        "{error}"
    );
}

#[test]
fn http2_pool_settings_are_read_and_checked() {
    let text = format!("{BASE}upstream: {{ http2_connections_per_endpoint: 2, http2_streams_per_connection: 50 }}\n");
    let config = remora::build::parse("remora.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let pool = remora::build::resolve::pool(&config.upstream);
    assert_eq!(
        (
            pool.http2_max_connections,
            pool.http2_streams_per_connection
        ),
        (2, 50)
    );
    let error = error_of(&text.replace(
        "http2_connections_per_endpoint: 2",
        "http2_connections_per_endpoint: 0",
    ));
    assert!(error.contains("upstream.http2_connections_per_endpoint: http2_connections_per_endpoint must be at least 1"), "{error}");
}

#[test]
fn registry_and_collector_tls_blocks_are_checked_and_located() {
    let registry =
        |etcd: &str| BASE.replace("{ etcd: { endpoints: [http://127.0.0.1:2379] } }", etcd);
    let error = error_of(&registry(
        "{ etcd: { endpoints: [http://127.0.0.1:2379], tls: { ca: ca.pem } } }",
    ));
    assert!(
        error.contains("remora.yaml:4:55: registries.main.etcd.tls: TLS needs https:// endpoints"),
        "{error}"
    );
    let error = error_of(&registry(
        "{ etcd: { endpoints: [http://a:2379, https://b:2379] } }",
    ));
    assert!(
        error.contains(
            "registries.main.etcd.endpoints: endpoints must be all http:// or all https://"
        ),
        "{error}"
    );
    let error = error_of(&registry(
        "{ etcd: { endpoints: [https://a:2379], tls: { mesh: true } } }",
    ));
    assert!(
        error.contains(
            "registries.main.etcd.tls.mesh: only a service's endpoints can be mesh peers"
        ),
        "{error}"
    );
    let error = error_of(&registry(
        "{ consul: { address: https://consul:8501, tls: { ca: /nonexistent/ca.pem } } }",
    ));
    assert!(
        error.contains("registries.main.consul.tls.ca:") && error.contains("/nonexistent/ca.pem"),
        "{error}"
    );
    let error = error_of(&registry(
        "{ consul: { address: 'http://consul:8500', tls: { cert: c.pem } } }",
    ));
    assert!(
        error.contains("registries.main.consul.tls: TLS needs an https://")
            && error.contains("registries.main.consul.tls.key: a client certificate needs both"),
        "{error}"
    );
    let error = error_of(&format!(
        "{BASE}tracing:\n  endpoint: http://collector:4317\n  tls: {{ ca: ca.pem }}\n"
    ));
    assert!(
        error.contains(
            "tracing.endpoint: a `tracing.tls` block needs an https:// collector endpoint"
        ),
        "{error}"
    );
    let error = error_of(&format!(
        "{BASE}tracing:\n  endpoint: https://collector:4317\n  tls: {{ ca: /nonexistent/ca.pem }}\n"
    ));
    assert!(error.contains("tracing.tls.ca:"), "{error}");
}
