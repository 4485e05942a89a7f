//! The deployment files read as a whole, since no Docker engine runs here: the compose
//! file's services, mounts and ports agree with each other, with the sidecar configs
//! (which load as `remora validate` loads them) and with the Dockerfile; the
//! `examples/local` configs load too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the config sits in the remora image (Dockerfile ENTRYPOINT).
const CONFIG_PATH: &str = "/etc/remora/remora.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose_dir() -> PathBuf {
    root().join("examples/compose")
}

/// The compose file as JSON, with `<<` merge keys applied (if the parser left any).
fn compose() -> Value {
    let text = std::fs::read_to_string(compose_dir().join("docker-compose.yml")).unwrap();
    let mut value: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    merge_keys(&mut value);
    value
}

fn merge_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // `<<: *a` or `<<: [*a, *b]` (earlier maps win, the map's own keys first).
            let bases = match map.remove("<<") {
                Some(Value::Object(base)) => vec![base],
                Some(Value::Array(items)) => items
                    .into_iter()
                    .filter_map(|item| match item {
                        Value::Object(base) => Some(base),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for base in bases {
                for (key, item) in base {
                    map.entry(key).or_insert(item);
                }
            }
            map.values_mut().for_each(merge_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(merge_keys),
        _ => {}
    }
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("a services map")
}

/// Compose's own interpolation as the file is used: `${X:-default}` -> `default` (no
/// variable is set when a person runs `docker compose up`).
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        match inner.split_once(":-") {
            Some((_, default)) => out.push_str(default),
            None => panic!("compose variable ${{{inner}}} has no default"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A service's `environment` (map form), interpolated.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), interpolate(&v))
        })
        .collect()
}

/// The app whose network namespace a sidecar shares.
fn shares_with(service: &Value) -> Option<&str> {
    service
        .get("network_mode")?
        .as_str()?
        .strip_prefix("service:")
}

/// `(source, container path)` of each volume in short syntax.
fn mounts(service: &Value) -> Vec<(String, String)> {
    let Some(list) = service.get("volumes").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|v| {
            let parts: Vec<&str> = v
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .collect();
            assert!(parts.len() >= 2, "volume {v}");
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

/// Whether a volume source is a host path rather than a named volume.
fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// `(host path, container path)` of each bind mount, host paths relative to the
/// compose dir.
fn volumes(service: &Value) -> Vec<(PathBuf, String)> {
    mounts(service)
        .into_iter()
        .filter(|(source, _)| is_bind(source))
        .map(|(source, target)| (compose_dir().join(source), target))
        .collect()
}

/// The services the examples' certificates are issued for.
const MESH_SERVICES: [&str; 4] = ["frontend", "orders", "inventory", "inventory-v2"];

/// What the compose `certs` service and `examples/local/run.sh` write.
fn issued_certificates() -> tempfile::TempDir {
    crate::support::certs::issue_mesh("remora.example", &MESH_SERVICES)
}

/// A sidecar's config, loaded as `remora validate` would with the sidecar's environment,
/// its certificates read from `certs` (standing in for the `certs` volume).
fn sidecar_config(name: &str, service: &Value, certs: &Path) -> remora::config::Config {
    let (file, _) = volumes(service)
        .into_iter()
        .find(|(_, target)| target == CONFIG_PATH)
        .unwrap_or_else(|| panic!("{name} mounts no config at {CONFIG_PATH}"));
    let text = std::fs::read_to_string(&file).unwrap();
    let mut env = environment(service);
    env.insert("CERT_DIR".into(), certs.display().to_string());
    let lookup = |key: &str| env.get(key).cloned();
    remora::build::parse_with_env(&file.display().to_string(), &text, &lookup)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `host` and `port` of a `http://host:port[/...]` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{url}"));
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url}"));
    (host.to_string(), port.parse().unwrap())
}

#[test]
fn every_service_named_exists() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in services {
        let mut named: Vec<String> = Vec::new();
        match service.get("depends_on") {
            Some(Value::Array(list)) => {
                named.extend(list.iter().map(|v| v.as_str().unwrap().to_string()))
            }
            Some(Value::Object(map)) => named.extend(map.keys().cloned()),
            _ => {}
        }
        named.extend(shares_with(service).map(str::to_string));
        for other in named {
            assert!(
                services.contains_key(&other),
                "{name} names {other}, which is not a service"
            );
        }
        let has_image = service.get("image").is_some() || service.get("build").is_some();
        assert!(has_image, "{name} has neither image nor build");
    }
}

#[test]
fn every_mounted_file_exists_and_every_config_loads() {
    let compose = compose();
    let certs = issued_certificates();
    let declared = compose["volumes"].as_object().cloned().unwrap_or_default();
    let mut configs = 0;
    for (name, service) in services(&compose) {
        for (source, _) in mounts(service).iter().filter(|(s, _)| !is_bind(s)) {
            assert!(
                declared.contains_key(source),
                "{name} mounts the volume {source}, which is not declared"
            );
        }
        for (file, target) in volumes(service) {
            assert!(
                file.exists(),
                "{name} mounts {}, which does not exist",
                file.display()
            );
            if target == CONFIG_PATH {
                sidecar_config(name, service, certs.path());
                configs += 1;
            }
        }
    }
    assert_eq!(
        configs, 6,
        "frontend, orders, three inventory sidecars and the canary's"
    );
}

#[test]
fn sidecar_ports_agree_with_configs_and_apps() {
    let compose = compose();
    let services = services(&compose);
    let prometheus = std::fs::read_to_string(compose_dir().join("prometheus.yml")).unwrap();
    let certs = issued_certificates();
    // Inbound port of each app's sidecar, by the app's compose name.
    let mut inbound_by_app: BTreeMap<String, u16> = BTreeMap::new();
    let mut sidecars = Vec::new();
    for (name, service) in services {
        let Some(app_name) = shares_with(service) else {
            continue;
        };
        let app = &services[app_name];
        let config = sidecar_config(name, service, certs.path());
        let app_env = environment(app);
        let app_listen: SocketAddr = app_env["LISTEN"].parse().unwrap();

        // The app listens where the sidecar forwards, on loopback only.
        let inbound = config.inbound.as_ref().expect("an inbound listener");
        assert_eq!(
            inbound.app.addr(),
            Some(app_listen),
            "{name}: inbound.app vs {app_name}'s LISTEN"
        );
        assert!(
            app_listen.ip().is_loopback(),
            "{app_name} must be reachable only via its sidecar"
        );

        // Every upstream URL the app is given is one of the sidecar's outbound ports.
        for (key, url) in app_env.iter().filter(|(k, _)| k.ends_with("_URL")) {
            let (host, port) = host_port(url);
            assert_eq!(host, "127.0.0.1", "{app_name} {key}");
            let served = config
                .services
                .values()
                .any(|s| s.listen.map(|l| l.port()) == Some(port));
            assert!(
                served,
                "{app_name} {key}={url}: no service of {name} listens on {port}"
            );
        }

        // Prometheus scrapes the admin port at the app's name (shared namespace).
        let admin = format!("\"{app_name}:{}\"", config.admin.listen.port());
        assert!(
            prometheus.contains(&admin),
            "prometheus.yml does not scrape {admin}"
        );
        assert!(
            config.admin.listen.ip().is_unspecified(),
            "{name}: admin must be reachable by Prometheus"
        );

        // Published ports are the sidecar's inbound port.
        for port in app
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let container: u16 = port
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                container,
                inbound.listen.port(),
                "{app_name} publishes {port}"
            );
        }

        // Registries and the OTLP collector are other compose services: etcd, and
        // ZooKeeper in its profile.
        for registry in config.registries.values() {
            let (hosts, port) = match (&registry.etcd, &registry.zookeeper) {
                (Some(etcd), _) => (etcd.endpoints.clone(), 2379),
                (_, Some(zookeeper)) => (zookeeper.servers.clone(), 2181),
                _ => panic!("{name}: a registry compose does not run"),
            };
            for server in hosts {
                let url = match server.starts_with("http://") {
                    true => server,
                    false => format!("http://{server}"),
                };
                let (host, found) = host_port(&url);
                assert!(services.contains_key(&host), "{name}: registry host {host}");
                assert_eq!(found, port);
            }
        }
        let (otlp_host, otlp_port) = host_port(config.tracing.endpoint.as_deref().expect("OTLP"));
        assert!(
            services.contains_key(&otlp_host),
            "{name}: OTLP host {otlp_host}"
        );
        assert_eq!(otlp_port, 4317, "Jaeger's OTLP/gRPC port");

        // A registering sidecar registers its app's name (the shared namespace's
        // address in Docker's DNS) and its inbound port.
        if let Some(register) = &config.register {
            assert_eq!(
                register.address.to_string(),
                format!("{app_name}:{}", inbound.listen.port()),
                "{name} registers another address than its inbound listener's"
            );
        }
        inbound_by_app.insert(app_name.to_string(), inbound.listen.port());
        sidecars.push(config);
    }
    assert_eq!(sidecars.len(), 6);
    assert_eq!(
        sidecars.iter().filter(|c| c.register.is_some()).count(),
        4,
        "three inventory replicas and the canary register themselves"
    );

    // Static endpoints name another app, on its sidecar's inbound port.
    for config in &sidecars {
        for (service, upstream) in &config.services {
            for endpoint in &upstream.endpoints {
                let remora::config::Destination::Name { host, port } = endpoint else {
                    panic!("{endpoint}: compose services are reached by name")
                };
                let inbound = inbound_by_app.get(host).unwrap_or_else(|| {
                    panic!(
                        "{}: {service} endpoint {endpoint} is no app",
                        config.service
                    )
                });
                assert_eq!(host, service, "{endpoint}");
                assert_eq!(
                    inbound, port,
                    "{endpoint}: not {host}'s sidecar inbound port"
                );
            }
        }
    }

    // The load generator enters through frontend's sidecar.
    let (host, port) = host_port(&environment(&services["loadgen"])["TARGET"]);
    assert_eq!(host, "frontend");
    assert_eq!(Some(&port), inbound_by_app.get("frontend"));
}

/// Containers find each other by name: no fixed address to keep in step with configs.
#[test]
fn no_container_has_a_fixed_address() {
    let compose = compose();
    for (name, service) in services(&compose) {
        let networks = serde_json::to_string(&service["networks"]).unwrap();
        assert!(!networks.contains("ipv4_address"), "{name}: {networks}");
    }
    assert!(compose["networks"]["mesh"].get("ipam").is_none());
}

/// The canary: inventory-v2 registers as its own service, and orders' sidecar sends it
/// every call marked `x-canary: true` and 10% of the rest.
#[test]
fn orders_sends_the_canary_its_marked_calls_and_a_tenth_of_the_rest() {
    let compose = compose();
    let services = services(&compose);
    let certs = issued_certificates();
    let canary = sidecar_config(
        "inventory-v2-sidecar",
        &services["inventory-v2-sidecar"],
        certs.path(),
    );
    assert_eq!(canary.service, "inventory-v2");
    assert!(canary.register.is_some(), "the canary registers itself");
    let orders = sidecar_config("orders-sidecar", &services["orders-sidecar"], certs.path());
    let inventory = &orders.services["inventory"];
    let v2 = &orders.services["inventory-v2"];
    assert!(
        v2.discovery.is_some(),
        "the canary is found in the registry"
    );
    let routes = serde_json::to_value(&inventory.routes).unwrap();
    let routes = routes.as_array().expect("inventory has routes");
    let marked = routes
        .iter()
        .find(|r| r["match"]["headers"]["x-canary"]["exact"] == "true")
        .expect("a route for calls marked x-canary: true");
    assert_eq!(marked["backends"], serde_json::json!({ "inventory-v2": 1 }));
    let split = routes
        .iter()
        .find(|r| r["backends"].as_object().is_some_and(|b| b.len() == 2))
        .expect("a split route for the rest");
    assert_eq!(
        split["backends"],
        serde_json::json!({ "inventory": 90, "inventory-v2": 10 })
    );
    // The apps pass the mark along, so that it reaches orders' sidecar.
    let propagate = std::fs::read_to_string(root().join("examples/services/propagate.rs")).unwrap();
    assert!(propagate.contains("\"x-canary\""));
    let prometheus = std::fs::read_to_string(compose_dir().join("prometheus.yml")).unwrap();
    assert!(prometheus.contains("\"inventory-v2:15000\""));
    let dashboard =
        std::fs::read_to_string(root().join("examples/observability/grafana-dashboard.json"))
            .unwrap();
    assert!(dashboard.contains("Canary split"));
}

#[test]
fn apps_are_the_cargo_examples_the_image_builds() {
    let compose = compose();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!(
            r#"ENTRYPOINT ["remora", "run", "--config", "{CONFIG_PATH}"]"#
        )),
        "the image reads its config where compose mounts it"
    );
    assert!(
        dockerfile.contains(&format!("ENV REMORA_CONFIG={CONFIG_PATH}"))
            && dockerfile.contains(r#"CMD ["remora", "live"]"#),
        "the health check asks the admin address of the mounted config"
    );
    // What the build reads through [patch.crates-io] is in the build context.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for line in manifest
        .lines()
        .filter(|l| l.contains("path = \"third_party/"))
    {
        let dir = line.split('"').nth(1).unwrap();
        let top = dir.split('/').next().unwrap();
        assert!(
            dockerfile.contains(&format!("COPY {top} {top}")),
            "the image build does not copy {dir}"
        );
    }
    for (name, service) in services(&compose) {
        let target = service["build"]["target"].as_str();
        if target == Some("examples") {
            let command = service["command"][0].as_str().unwrap();
            assert!(
                root().join(format!("examples/{command}.rs")).exists(),
                "{name} runs {command}, which is not a cargo example"
            );
            assert!(
                dockerfile.contains(&format!("--example {command}")),
                "{command} not built"
            );
        }
        if let Some(target) = target {
            assert!(
                dockerfile.contains(&format!(" AS {target}")),
                "no stage {target}"
            );
        }
    }
}

/// The image's remora is the build `scripts/pgo.sh` makes: the builder installs what the
/// script runs, and the build context (the Dockerfile's copies, less `.dockerignore`)
/// holds what it reads.
#[test]
fn the_image_builds_remora_with_the_profile_guided_script() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let script = std::fs::read_to_string(root().join("scripts/pgo.sh")).unwrap();
    assert!(
        dockerfile.contains(r#"cp "$(bash scripts/pgo.sh)" /out/remora"#),
        "the image does not ship the PGO build"
    );
    // Each command the script runs that the slim Rust image lacks, and its package.
    for (command, package) in [
        ("llvm-profdata-19", "llvm-19"),
        ("h2load", "nghttp2-client"),
        ("curl", "curl"),
        ("valgrind", "valgrind"),
    ] {
        assert!(script.contains(command), "pgo.sh no longer runs {command}");
        assert!(
            dockerfile.contains(&format!(" {package}")),
            "the builder does not install {package} for pgo.sh"
        );
    }
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignored
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(dockerfile.contains("COPY scripts/pgo.sh scripts/pgo.sh"));
    assert!(ignored.contains(&"!scripts/pgo.sh"), "{ignored:?}");
    // The files the script sources or trains on, as `bench/...` paths.
    let read: Vec<&str> = script
        .split(|c: char| c.is_whitespace() || c == '"')
        .filter(|word| word.starts_with("bench/"))
        .collect();
    assert!(read.contains(&"bench/common.sh"), "{read:?}");
    assert!(dockerfile.contains("COPY bench bench"));
    assert!(!ignored.contains(&"bench/"), "{ignored:?}");
    for file in read {
        assert!(
            root().join(file).exists(),
            "pgo.sh reads {file}, which is gone"
        );
    }
    // Where the builder's C library reads packed relocations (DT_RELR, glibc 2.36), the
    // script packs them, and the binary then starts only on a glibc as new: the image
    // that runs it must be of the builder's Debian release.
    assert!(script.contains("pack-relative-relocs") && script.contains("glibc_at_least 2 36"));
    assert!(
        dockerfile.contains("-slim-bookworm AS builder"),
        "the builder moved"
    );
    assert!(
        dockerfile.contains("FROM debian:bookworm-slim AS base"),
        "remora runs on another release than it is built on"
    );
    // The configs it trains on, through bench/common.sh's `template`.
    for variant in [
        "remora",
        "remora-policies",
        "remora-traced",
        "remora-logged",
    ] {
        assert!(root().join(format!("bench/{variant}.yaml.in")).exists());
    }
}

#[test]
fn local_configs_load_with_their_defaults() {
    let dir = root().join("examples/local/config");
    let certs = issued_certificates();
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // run.sh sets CERT_DIR to where it issued the certificates.
        let cert_dir = certs.path().display().to_string();
        let only_certs = |key: &str| (key == "CERT_DIR").then(|| cert_dir.clone());
        remora::build::parse_with_env(&path.display().to_string(), &text, &only_certs)
            .unwrap_or_else(|e| panic!("{e}"));
        loaded += 1;
    }
    assert_eq!(loaded, 3);
    assert!(Path::new(&root().join("examples/local/run.sh")).exists());
}

/// Mutual TLS is on by default: every sidecar has a certificate from the `certs`
/// volume, issued by the `certs` service for its service, which it waits for; calls
/// between sidecars are authorized to the callers the topology needs and no more.
#[test]
fn sidecars_speak_mutual_tls_with_certificates_the_certs_service_issues() {
    let compose = compose();
    let services = services(&compose);
    let certs = issued_certificates();
    let issuer = &services["certs"];
    let script = issuer["command"][0].as_str().expect("a script");
    assert!(
        script.contains("remora cert ca --trust-domain remora.example"),
        "{script}"
    );
    for service in MESH_SERVICES {
        assert!(
            script.contains(service),
            "certs does not issue for {service}"
        );
    }
    let mut allowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, service) in services {
        if shares_with(service).is_none() {
            continue;
        }
        let config = sidecar_config(name, service, certs.path());
        let tls = config
            .tls
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no tls"));
        let cert = tls.cert.file_name().unwrap().to_str().unwrap();
        assert_eq!(cert, format!("{}.pem", config.service), "{name}");
        assert!(
            mounts(service)
                .iter()
                .any(|(s, t)| s == "certs" && t == "/certs"),
            "{name} does not mount the certs volume"
        );
        assert!(
            service["depends_on"]["certs"]["condition"] == "service_healthy",
            "{name} does not wait for its certificate"
        );
        if let Some(inbound) = &config.inbound {
            if config.inbound_tls() == remora::config::InboundTlsMode::Strict {
                allowed.insert(
                    config.service.clone(),
                    inbound.allow.clone().expect("an explicit allow list"),
                );
            }
        }
        for (upstream, settings) in &config.services {
            let meshed = settings.tls.as_ref().is_some_and(|t| t.mesh);
            // Discovered services upgrade on the registry's word.
            assert!(
                meshed || settings.discovery.is_some(),
                "{name}: {upstream} is called in plaintext"
            );
        }
    }
    let expected: BTreeMap<String, Vec<String>> = [
        ("inventory".to_string(), vec!["orders".to_string()]),
        ("inventory-v2".to_string(), vec!["orders".to_string()]),
        ("orders".to_string(), vec!["frontend".to_string()]),
    ]
    .into_iter()
    .collect();
    assert_eq!(allowed, expected);
}

/// The registry is etcd by default and ZooKeeper in the `zookeeper` profile: with
/// REGISTRY=zookeeper every registering or discovering sidecar uses ZooKeeper, which
/// that profile runs.
#[test]
fn the_registry_switches_to_zookeeper_with_its_profile() {
    let compose = compose();
    let services = services(&compose);
    let zookeeper = &services["zookeeper"];
    assert_eq!(zookeeper["profiles"], serde_json::json!(["zookeeper"]));
    let certs = issued_certificates();
    let mut switched = 0;
    for (name, service) in services {
        if shares_with(service).is_none() {
            continue;
        }
        let env = environment(service);
        let config = sidecar_config(name, service, certs.path());
        let uses_registry =
            config.register.is_some() || config.services.values().any(|s| s.discovery.is_some());
        if !uses_registry {
            continue;
        }
        assert_eq!(
            env.get("REGISTRY").map(String::as_str),
            Some("etcd"),
            "{name}"
        );
        assert!(
            service["depends_on"]["zookeeper"]["required"] == false,
            "{name} waits for ZooKeeper only in its profile"
        );
        // The same sidecar with REGISTRY=zookeeper.
        let (file, _) = volumes(service)
            .into_iter()
            .find(|(_, target)| target == CONFIG_PATH)
            .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let mut env = env;
        env.insert("REGISTRY".into(), "zookeeper".into());
        env.insert("CERT_DIR".into(), certs.path().display().to_string());
        let lookup = |key: &str| env.get(key).cloned();
        let config = remora::build::parse_with_env(&file.display().to_string(), &text, &lookup)
            .unwrap_or_else(|e| panic!("{name} with ZooKeeper: {e}"));
        if let Some(register) = &config.register {
            assert_eq!(register.registry, "zookeeper", "{name}");
        }
        for (service, upstream) in &config.services {
            if let Some(discovery) = &upstream.discovery {
                assert_eq!(discovery.registry, "zookeeper", "{name}: {service}");
            }
        }
        assert!(config.registries["zookeeper"].zookeeper.is_some());
        switched += 1;
    }
    assert_eq!(
        switched, 5,
        "orders, three inventory replicas and the canary"
    );
}
