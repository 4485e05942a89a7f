//! `remora validate` and `remora run` accept and refuse exactly the same configs:
//! validation runs the conversion of every section that start-up runs, so a value a
//! mechanism refuses is refused with its file, line, column and field, never first at
//! start. Each config in the repository goes through both; so does each case where
//! the two used to disagree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use remora::config::Config;
use remora::Sidecar;

/// Variables the example configs read without a default; `CERT_DIR` holds the
/// certificates the examples' `remora cert` step issues.
fn env(name: &str) -> Option<String> {
    static CERTS: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    match name {
        "INSTANCE" => Some("inventory-1".into()),
        "REGISTER_ADDR" => Some("127.0.0.1:15026".into()),
        "CERT_DIR" => {
            let certs = CERTS.get_or_init(|| {
                crate::support::certs::issue_mesh(
                    "remora.example",
                    &["frontend", "orders", "inventory"],
                )
            });
            Some(certs.path().display().to_string())
        }
        _ => std::env::var(name).ok(),
    }
}

/// Every remora config the repository ships, with the bench templates filled in.
fn shipped_configs() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in [
        "config",
        "examples/compose/config",
        "examples/local/config",
        "examples/registries",
        "bench",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !(name.ends_with(".yaml") || name.ends_with(".yaml.in")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .replace("@REMORA_ADMIN_PORT@", "28482")
                .replace("@REMORA_PORT@", "28481")
                .replace("@UPSTREAM_PORT@", "28480")
                .replace("@OTLP_PORT@", "28483");
            found.push((path, text));
        }
    }
    assert!(found.len() >= 8, "the repository's configs: {found:?}");
    found
}

/// `config` with every listener on an ephemeral port, so that starting it tests the
/// config, not which ports are free.
fn on_free_ports(mut config: Config) -> Config {
    let any = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = any;
    if let Some(inbound) = &mut config.inbound {
        inbound.listen = any;
    }
    if let Some(outbound) = &mut config.outbound {
        outbound.listen = any;
    }
    for service in config.services.values_mut() {
        if service.listen.is_some() {
            service.listen = Some(any);
        }
    }
    config
}

#[tokio::test]
async fn every_shipped_config_validates_and_starts() {
    for (path, text) in shipped_configs() {
        let origin = path.display().to_string();
        let config = remora::build::parse_with_env(&origin, &text, &env)
            .unwrap_or_else(|e| panic!("validate refuses {origin}:\n{e}"));
        let sidecar = Sidecar::start(on_free_ports(config))
            .await
            .unwrap_or_else(|e| panic!("{origin} validates but does not start: {e}"));
        sidecar.shutdown().await;
    }
}

fn remora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(args)
        .output()
        .unwrap()
}

/// `remora run --config path`, killed if it is still running after a while (a config it
/// accepted): its exit status and standard error.
fn run_briefly(path: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora"))
        .args(["run", "--config", path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const BASE: &str = "service: shop
admin: { listen: 127.0.0.1:0 }
outbound: { listen: 127.0.0.1:0 }
services:
  prices:
    endpoints: [127.0.0.1:9]
    retry: again
    breaker: guard
    fallback: cheap
    fault: chaos
policies:
  retries:
    again: { attempts: 3 }
  breakers:
    guard: { consecutive_failures: 5 }
  fallbacks:
    cheap:
      on: [breaker_open]
      respond: { status: 200, body: 'cheap' }
  faults:
    chaos:
      abort: { percent: 1%, status: 503 }
";

/// Each case `run` used to refuse at start, or refused without a location, while
/// `validate` accepted it: (what changes in BASE, the field refused, a word of why).
const REFUSED: &[(&str, &str, &str, &str)] = &[
    (
        "a collector CA file that is not there",
        "",
        "tracing:\n  endpoint: https://collector:4317\n  tls: { ca: /nonexistent/ca.pem }\n",
        "tracing.tls.ca: /nonexistent/ca.pem",
    ),
    (
        "an etcd CA file that is not there",
        "",
        "registries:\n  main: { etcd: { endpoints: [https://etcd:2379], tls: { ca: /nonexistent/etcd-ca.pem } } }\n",
        "registries.main.etcd.tls.ca: /nonexistent/etcd-ca.pem",
    ),
    (
        "more than 100 attempts",
        "again: { attempts: 3 }",
        "again: { attempts: 101 }",
        "policies.retries.again.attempts: invalid retry config: max_attempts must be at most 100",
    ),
    (
        "a replay buffer over 16 MiB",
        "again: { attempts: 3 }",
        "again: { attempts: 3, max_replay_bytes: 17000000 }",
        "policies.retries.again.max_replay_bytes:",
    ),
    (
        "a breaker whose longest opening is shorter than its first",
        "guard: { consecutive_failures: 5 }",
        "guard: { consecutive_failures: 5, open_for: 10s, max_open_for: 1s }",
        "policies.breakers.guard.max_open_for: max_open_for",
    ),
    (
        "a batch larger than the export queue",
        "",
        "tracing:\n  queue_size: 10\n  batch_size: 20\n",
        "tracing.batch_size:",
    ),
    (
        "an abort that is not an error",
        "status: 503",
        "status: 200",
        "policies.faults.chaos.abort.status:",
    ),
    (
        "a route regular expression that does not compile",
        "    fault: chaos\n",
        "    fault: chaos\n    routes:\n      - match: { path_regex: '(' }\n",
        "services.prices.routes[0].match.path_regex:",
    ),
    (
        "a split whose weights are all zero",
        "    fault: chaos\n",
        "    fault: chaos\n    routes:\n      - match: { path_prefix: / }\n        backends: { prices: 0 }\n",
        "services.prices.routes[0].backends: every backend weight is 0",
    ),
    (
        "a backend that is no service",
        "    fault: chaos\n",
        "    fault: chaos\n    routes:\n      - match: { path_prefix: / }\n        backends: { prices: 1, pricez: 1 }\n",
        "services.prices.routes[0].backends.pricez: unknown service",
    ),
];

#[test]
fn validate_and_run_refuse_the_same_configs_at_the_same_place() {
    let dir = tempfile::tempdir().unwrap();
    for (case, from, to, expected) in REFUSED {
        let text = if from.is_empty() {
            format!("{BASE}{to}")
        } else {
            assert!(BASE.contains(from), "{case}: BASE lacks {from:?}");
            BASE.replace(from, to)
        };
        let path = dir.path().join("remora.yaml");
        std::fs::write(&path, &text).unwrap();
        let path = path.to_str().unwrap();
        let validate = remora(&["validate", path]);
        let run = run_briefly(path);
        let validate_err = String::from_utf8_lossy(&validate.stderr).to_string();
        let (run_status, run_err) = run;
        assert_eq!(
            validate.status.code(),
            Some(1),
            "{case}: validate accepted it"
        );
        assert_eq!(run_status, Some(1), "{case}: run accepted it:\n{run_err}");
        // file:line:column: field: message, the same from both commands.
        let located = format!("{path}:");
        assert!(
            validate_err.contains(&located) && validate_err.contains(expected),
            "{case}: validate said:\n{validate_err}"
        );
        let first_line = validate_err.lines().next().unwrap();
        let position = first_line.split(": ").next().unwrap();
        assert!(
            position.matches(':').count() == 2,
            "{case}: no line:column in {first_line:?}"
        );
        assert!(
            run_err.contains(first_line),
            "{case}: run refused it differently:\n{run_err}\nvalidate:\n{validate_err}"
        );
    }
}

/// The config the README shows is a config remora accepts.
#[test]
fn the_readme_config_validates() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(!blocks.is_empty(), "the README shows a config");
    for block in blocks {
        remora::build::parse("README.md", block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    }
}
