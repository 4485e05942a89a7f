//! Loading configuration files as an operator would: real files in a temporary
//! directory, broken in the ways people break them, with the exact position asserted.

use std::path::{Path, PathBuf};

use remora::config::{self, Config, ConfigError, DiagnosticKind};

/// A valid preamble: 3 lines, so line numbers below start at 4.
const PREAMBLE: &str = "\
service: checkout
inbound:
  app: 127.0.0.1:8080
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Loads `text` from a file named `remora.yaml` and expects it to fail with one
/// diagnostic of `kind`; returns the rendered error.
fn load_error(text: &str, kind: DiagnosticKind) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "remora.yaml", text);
    let error = remora::build::load(&path).expect_err("config must be refused");
    let kinds: Vec<_> = error.diagnostics().iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec![kind], "{error}");
    // The message starts with the full path of the file.
    let rendered = error.to_string();
    assert!(
        rendered.starts_with(&path.display().to_string()),
        "{rendered}"
    );
    rendered
}

/// Asserts `rendered` has the header `remora.yaml:<position>: <rest>` on its first line.
fn assert_header(rendered: &str, position: &str, rest: &str) {
    let first = rendered.lines().next().unwrap_or_default();
    let expected = format!("remora.yaml:{position}: {rest}");
    assert!(
        first.ends_with(&expected),
        "expected …{expected}\n     got {first}"
    );
}

#[test]
fn yaml_syntax_error() {
    let text = format!("{PREAMBLE}outbound:\n  listen: \"127.0.0.1:15001\n");
    let rendered = load_error(&text, DiagnosticKind::Syntax);
    assert_header(
        &rendered,
        "5:11",
        // The parser fails inside `outbound` before it has read the `listen` key.
        "outbound: YAML syntax error: unclosed quote",
    );
    // The snippet shows the line and a caret under column 11.
    assert!(
        rendered.ends_with("5 |   listen: \"127.0.0.1:15001\n  |           ^"),
        "{rendered}"
    );
}

#[test]
fn unknown_field_suggests_the_closest_name() {
    let text =
        format!("{PREAMBLE}outbound: {{}}\nservices:\n  orders:\n    endpionts: [10.0.0.1:80]\n");
    let rendered = load_error(&text, DiagnosticKind::UnknownField);
    // The list of known fields grows with the schema: check its start.
    let first = rendered.lines().next().unwrap_or_default();
    assert!(
        first.contains(
            "remora.yaml:7:5: services.orders.endpionts: unknown field `endpionts`, \
             did you mean `endpoints`? (expected one of `listen`, `hosts`, "
        ),
        "{first}"
    );
}

#[test]
fn bad_socket_address() {
    let text = format!(
        "{PREAMBLE}outbound: {{}}\nservices:\n  orders:\n    endpoints:\n      - 10.0.0.1:80\n      - \"10.0.0.1:\"\n"
    );
    let rendered = load_error(&text, DiagnosticKind::InvalidValue);
    assert_header(
        &rendered,
        "9:9",
        "services.orders.endpoints[1]: invalid address \"10.0.0.1:\": \
         the port must be a number from 0 to 65535",
    );
}

#[test]
fn bad_duration() {
    let text = format!("{PREAMBLE}drain_timeout: 5 parsecs\n");
    let rendered = load_error(&text, DiagnosticKind::InvalidValue);
    let first = rendered.lines().next().unwrap_or_default();
    let expected = "remora.yaml:4:16: drain_timeout: invalid duration \"5 parsecs\": unknown time unit \"parsecs\"";
    assert!(
        first.contains(expected),
        "expected …{expected}\n     got {first}"
    );
}

#[test]
fn wrong_type() {
    let text = format!("{PREAMBLE}limits:\n  max_connections: lots # not a number\n");
    let rendered = load_error(&text, DiagnosticKind::InvalidValue);
    assert_header(
        &rendered,
        "5:20",
        "limits.max_connections: expected a non-negative integer, found `lots`",
    );
}

#[test]
fn missing_environment_variable() {
    // The variable name is unique to this test and never set.
    let text = format!(
        "{PREAMBLE}outbound: {{}}\nservices:\n  orders:\n    endpoints: [\"${{REMORA_TEST_UNSET_ORDERS}}\"]\n"
    );
    let rendered = load_error(&text, DiagnosticKind::Environment);
    assert_header(
        &rendered,
        "7:18",
        "services.orders.endpoints[0]: environment variable `REMORA_TEST_UNSET_ORDERS` is not set \
         (write `${REMORA_TEST_UNSET_ORDERS:-default}` to give it a default)",
    );
}

#[test]
fn missing_required_field() {
    let text = "service: checkout\ninbound:\n  listen: 0.0.0.0:15006\n";
    let rendered = load_error(text, DiagnosticKind::MissingField);
    assert_header(
        &rendered,
        "3:3",
        "inbound.app: missing required field `app`",
    );
}

#[test]
fn duplicate_listener() {
    let text = format!(
        "{PREAMBLE}outbound:\n  listen: 127.0.0.1:15001\nservices:\n  orders:\n    listen: 0.0.0.0:15001\n    endpoints: [10.0.0.1:80]\n"
    );
    let rendered = load_error(&text, DiagnosticKind::Semantic);
    assert_header(
        &rendered,
        "8:13",
        "services.orders.listen: listen address 0.0.0.0:15001 is already used by `outbound.listen`",
    );
}

#[test]
fn every_semantic_problem_is_reported_in_document_order() {
    let text = format!(
        "{PREAMBLE}outbound: {{}}\nlimits:\n  max_header_bytes: 1024\nservices:\n  orders: {{}}\n"
    );
    let error = remora::build::parse("remora.yaml", &text).expect_err("two problems");
    let headers: Vec<String> = error
        .diagnostics()
        .iter()
        .map(|d| {
            format!(
                "{}: {}",
                d.position.map_or(String::new(), |p| p.to_string()),
                d.path
            )
        })
        .collect();
    assert_eq!(
        headers,
        vec![
            "6:21: limits.max_header_bytes",
            "8:3: services.orders.endpoints"
        ]
    );
}

#[test]
fn positions_after_a_substitution_on_the_same_line_are_in_the_original_text() {
    let env = |name: &str| (name == "ORDERS_HOST").then(|| "10.0.0.1".to_string());
    let text = format!(
        "{PREAMBLE}outbound: {{}}\nservices:\n  orders:\n    endpoints: [\"${{ORDERS_HOST}}:80\", \"nope\"]\n"
    );
    let error = remora::build::parse_with_env("remora.yaml", &text, &env).expect_err("bad address");
    let rendered = error.to_string();
    // `"nope"` is at column 38 as written (column 32 after substitution).
    assert_header(
        &rendered,
        "7:38",
        "services.orders.endpoints[1]: invalid address \"nope\": \
         expected `host:port` or `ip:port`, e.g. `orders:8080`, `10.0.0.7:8080` or `[::1]:8080`",
    );
}

#[test]
fn substituted_values_are_used() {
    let env = |name: &str| match name {
        "APP_PORT" => Some("9090".to_string()),
        _ => None,
    };
    let text = "inbound:\n  app: 127.0.0.1:${APP_PORT}\n  listen: ${LISTEN:-0.0.0.0:16006}\n";
    let config = remora::build::parse_with_env("remora.yaml", text, &env).expect("valid");
    let inbound = config.inbound.expect("inbound");
    assert_eq!(inbound.app.port(), 9090);
    assert_eq!(inbound.listen.port(), 16006);
}

#[test]
fn unreadable_file_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.yaml");
    let error = remora::build::load(&path).expect_err("no such file");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().starts_with(&path.display().to_string()));
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{PREAMBLE}# {}\n", "x".repeat(config::MAX_CONFIG_BYTES));
    let path = write(dir.path(), "big.yaml", &text);
    let error = remora::build::load(&path).expect_err("too large");
    assert!(matches!(error, ConfigError::TooLarge { .. }), "{error}");
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn reference_config_loads_with_its_documented_defaults() {
    let config =
        remora::build::load(&repo_file("reference.yaml")).expect("reference.yaml is valid");
    let defaults = remora::build::parse("defaults", "inbound:\n  app: 127.0.0.1:8080\n")
        .expect("inbound alone is valid");
    // Everything the reference writes out is the default, except the example services
    // and the shared outbound listener it enables.
    assert_eq!(config.admin, defaults.admin);
    assert_eq!(config.inbound, defaults.inbound);
    assert_eq!(config.limits, defaults.limits);
    assert_eq!(config.upstream, defaults.upstream);
    assert_eq!(config.resolver, defaults.resolver);
    assert_eq!(config.drain_timeout, defaults.drain_timeout);
    assert_eq!(config.log, defaults.log);
    assert_eq!(config.service, defaults.service);
    assert_eq!(config.services.len(), 3);
    // The TCP example writes out its `tcp` block's defaults too.
    let cache = &config.services["cache"];
    assert_eq!(cache.tcp, Some(remora::config::TcpSection::default()));
}

#[test]
fn minimal_config_loads() {
    let config = remora::build::load(&repo_file("minimal.yaml")).expect("minimal.yaml is valid");
    assert_eq!(config.services["orders"].endpoints.len(), 1);
    assert!(config.outbound.is_some());
}

#[test]
fn effective_config_round_trips() {
    for name in ["reference.yaml", "minimal.yaml"] {
        let config = remora::build::load(&repo_file(name)).expect("valid");
        let rendered = config::to_yaml(&config);
        let reparsed: Config = remora::build::parse("rendered", &rendered)
            .unwrap_or_else(|e| panic!("{name} rendered:\n{rendered}\n{e}"));
        assert_eq!(reparsed, config, "{name}");
    }
}

#[test]
fn hosts_are_lowercased() {
    let text = "outbound: {}\nservices:\n  orders:\n    hosts: [Orders.Example.COM.]\n    endpoints: [10.0.0.1:80]\n";
    let config = remora::build::parse("remora.yaml", text).expect("valid");
    assert_eq!(config.services["orders"].hosts, vec!["orders.example.com"]);
}

/// The text of the error `remora::build::load` gives for a file holding `bytes`.
fn file_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    std::fs::write(&path, bytes).unwrap();
    let error = remora::build::load(&path).expect_err("refused");
    error
        .to_string()
        .replace(&path.display().to_string(), "remora.yaml")
}

/// YAML mistakes are reported at their real line, with their cause.
#[test]
fn yaml_mistakes_get_their_line_and_cause() {
    // A required key indented less than its siblings lands in the enclosing mapping.
    let error = file_error(b"inbound:\n  listen: 127.0.0.1:15006\n app: 127.0.0.1:8080\n");
    assert!(error.starts_with("remora.yaml:3:2: inbound.app: missing required field `app`; `app` is written at line 3 indented 1 spaces, while the other fields of this mapping are indented 2"), "{error}");

    // A key short of its siblings in a nested mapping.
    let error = file_error(
        b"services:\n  orders:\n    listen: 127.0.0.1:9001\n    endpoints: [10.0.0.1:80]\n   timeout: 2s\n",
    );
    assert!(error.starts_with("remora.yaml:5:4:"), "{error}");
    assert!(
        error.contains("`timeout` is indented 3 spaces: its siblings above are indented 4"),
        "{error}"
    );

    // A sequence never closed.
    let error = file_error(
        b"services:\n  orders:\n    listen: 127.0.0.1:9001\n    endpoints: [10.0.0.1:80\n    timeout: 2s\n",
    );
    assert!(
        error.contains("the `[` opened at line 4, column 16 is never closed"),
        "{error}"
    );

    // Nothing at all, or only comments.
    for text in [&b""[..], b"# a comment\n\n# another\n"] {
        let error = file_error(text);
        assert!(
            error.contains("the file is empty (only blank lines and comments)"),
            "{error}"
        );
    }

    // Bytes that are not UTF-8, with their position.
    let error = file_error(b"service: caf\xe9\nservices: {}\n");
    assert!(
        error.starts_with("remora.yaml:1:13: byte 0xe9 is not UTF-8"),
        "{error}"
    );
}
