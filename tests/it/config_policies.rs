//! The `policies:` section and references to it: a full example parses; each kind of
//! mistake is refused with its file, line:column, field path and a useful message.

use remora::config::{self, Condition, FallbackTrigger, Percent, RateLimitKeyName};

const BASE: &str = "\
outbound: {}
policies:
  timeouts: { fast: 300ms }
  retries:
    standard:
      attempts: 3
      retry_on: [connect_failure, reset, 503, unavailable]
      per_try_timeout: 100ms
      backoff: { base: 25ms, max: 250ms, jitter: 0% }
  breakers:
    default:
      consecutive_failures: 5
      failure_rate: { threshold: 50%, min_requests: 20, window: 10s }
      open_for: 5s
      max_open_for: 60s
      half_open_requests: 3
  rate_limits: { api: { rate: 10/s, burst: 100, key: client_ip } }
  fallbacks:
    default_price:
      on: [breaker_open, timeout, rate_limited, no_endpoint, 5xx, unavailable]
      respond: { status: 200, headers: { content-type: application/json }, body: '{\"price\": 0}' }
  faults: { chaos: { delay: { percent: 10%, duration: 200ms }, abort: { percent: 5%, status: 503 } } }
services:
  prices:
    endpoints: [127.0.0.1:9000]
    timeout: fast
    retry: standard
    breaker: default
    rate_limit: api
    fallback: default_price
    fault: chaos
    max_in_flight: 100
    routes:
      - match: { path_prefix: /slow }
        timeout: 2s
        retry: none
      - match: { grpc_method: shop.Prices/Quote }
        fallback: none
";

fn error_of(text: &str) -> String {
    remora::build::parse("remora.yaml", text)
        .expect_err("config must be refused")
        .to_string()
}

#[test]
fn the_full_example_parses_into_the_schema() {
    let config = remora::build::parse("remora.yaml", BASE).unwrap_or_else(|e| panic!("{e}"));
    let retry = &config.policies.retries["standard"];
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.retry_on,
        [
            Condition::ConnectFailure,
            Condition::Reset,
            Condition::Status(503),
            Condition::Grpc(tonic::Code::Unavailable)
        ]
    );
    assert_eq!(retry.backoff.jitter, Percent(0.0));
    let breaker = &config.policies.breakers["default"];
    assert_eq!(
        breaker.failure_rate.as_ref().unwrap().threshold,
        Percent(0.5)
    );
    let limit = &config.policies.rate_limits["api"];
    assert_eq!(limit.rate.count, 10);
    assert_eq!(limit.key, RateLimitKeyName::ClientIp);
    let fallback = &config.policies.fallbacks["default_price"];
    assert_eq!(
        fallback.on[5],
        FallbackTrigger::Grpc(tonic::Code::Unavailable)
    );
    let prices = &config.services["prices"];
    assert_eq!(prices.routes.len(), 2);
    assert_eq!(prices.routes[0].timeout.as_deref(), Some("2s"));
}

#[test]
fn the_effective_config_round_trips() {
    let config = remora::build::parse("remora.yaml", BASE).unwrap();
    let again = remora::build::parse("effective.yaml", &config::to_yaml(&config))
        .unwrap_or_else(|e| panic!("{e}\n{}", config::to_yaml(&config)));
    assert_eq!(config, again);
}

#[test]
fn an_unknown_policy_reference_suggests_the_defined_one() {
    let text = BASE.replace("    retry: standard", "    retry: standrad");
    let error = error_of(&text);
    assert!(
        error.starts_with("remora.yaml:27:12: services.prices.retry: unknown retry policy `standrad`, did you mean `standard`?"),
        "{error}"
    );
}

#[test]
fn a_bad_rate_is_located() {
    let error = error_of(&BASE.replace("rate: 10/s", "rate: 10 per second"));
    assert!(error.starts_with("remora.yaml:17:"), "{error}");
    assert!(error.contains("invalid rate \"10 per second\""), "{error}");
}

#[test]
fn a_bad_condition_is_located() {
    let error = error_of(&BASE.replace("503, unavailable", "503, sometimes"));
    assert!(error.starts_with("remora.yaml:7:"), "{error}");
    assert!(error.contains("unknown condition \"sometimes\""), "{error}");
}

#[test]
fn a_bad_percentage_is_located() {
    let error = error_of(&BASE.replace("threshold: 50%", "threshold: 150%"));
    assert!(error.starts_with("remora.yaml:13:"), "{error}");
    assert!(error.contains("expected 0% to 100%"), "{error}");
}

#[test]
fn a_fallback_takes_exactly_one_action() {
    let text = BASE.replace(
        "      respond: { status: 200,",
        "      forward_to: prices\n      respond: { status: 200,",
    );
    let error = error_of(&text);
    assert!(
        error.contains("policies.fallbacks.default_price: a fallback takes exactly one action"),
        "{error}"
    );
}

#[test]
fn a_breaker_that_cannot_open_is_refused() {
    let text = BASE.replace("      consecutive_failures: 5\n      failure_rate: { threshold: 50%, min_requests: 20, window: 10s }\n", "");
    let error = error_of(&text);
    assert!(
        error.contains("policies.breakers.default: a circuit breaker needs"),
        "{error}"
    );
}

#[test]
fn a_route_matches_on_at_most_one_path() {
    let text = BASE.replace(
        "{ path_prefix: /slow }",
        "{ path_prefix: /slow, grpc_service: shop.Prices }",
    );
    let error = error_of(&text);
    assert!(
        error.contains("services.prices.routes[0].match: a route matches on at most one"),
        "{error}"
    );
}

#[test]
fn route_labels_default_to_the_match_and_must_be_distinct() {
    let config = remora::build::parse("remora.yaml", BASE).expect("valid");
    let labels: Vec<&str> = config.services["prices"]
        .routes
        .iter()
        .map(|route| route.label())
        .collect();
    assert_eq!(labels, ["/slow", "shop.Prices/Quote"]);

    let named = BASE.replace(
        "      - match: { grpc_method: shop.Prices/Quote }",
        "      - name: quote\n        match: { grpc_method: shop.Prices/Quote }",
    );
    let config = remora::build::parse("remora.yaml", &named).expect("valid");
    assert_eq!(config.services["prices"].routes[1].label(), "quote");

    let clash = BASE.replace(
        "      - match: { grpc_method: shop.Prices/Quote }",
        "      - name: /slow\n        match: { grpc_method: shop.Prices/Quote }",
    );
    let error = error_of(&clash);
    assert!(
        error.contains("services.prices.routes[1].name: routes[0] already has the label \"/slow\""),
        "{error}"
    );
    let reserved = BASE.replace(
        "      - match: { grpc_method: shop.Prices/Quote }",
        "      - name: default\n        match: { grpc_method: shop.Prices/Quote }",
    );
    let error = error_of(&reserved);
    assert!(
        error.contains("services.prices.routes[1].name: invalid route name \"default\""),
        "{error}"
    );
}

#[test]
fn an_unknown_fallback_trigger_lists_the_known_ones() {
    let error = error_of(&BASE.replace("no_endpoint,", "no_endpoints,"));
    assert!(error.starts_with("remora.yaml:20:"), "{error}");
    assert!(
        error.contains("unknown fallback trigger \"no_endpoints\""),
        "{error}"
    );
}

#[test]
fn the_tracing_section_maps_onto_the_pipeline() {
    let text = format!(
        "{BASE}tracing:\n  endpoint: http://127.0.0.1:4318\n  protocol: http\n  sampling: 25%\n  propagate: [b3, jaeger]\n"
    );
    let config = remora::build::parse("remora.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let tracing = remora::build::resolve::tracing(&config).unwrap();
    assert_eq!(tracing.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    assert_eq!(tracing.protocol, remora::trace::OtlpProtocol::HttpProtobuf);
    assert_eq!(tracing.sampling_ratio, 0.25);
    assert_eq!(
        tracing.propagate,
        [
            remora::trace::Propagation::W3c,
            remora::trace::Propagation::B3,
            remora::trace::Propagation::Jaeger
        ]
    );
    let error = remora::build::parse(
        "remora.yaml",
        &text.replace("http://127.0.0.1:4318", "jaeger:4318"),
    )
    .expect_err("no scheme")
    .to_string();
    assert!(
        error.contains("tracing.endpoint: invalid collector address"),
        "{error}"
    );
}

#[test]
fn a_shared_rate_limit_is_checked_where_it_is_written() {
    let shared = |fields: &str| {
        format!(
            "service: orders\ninbound: {{ listen: 127.0.0.1:0, app: 127.0.0.1:8080 }}\n\
             policies:\n  rate_limits:\n    api:\n      rate: 100/s\n      burst: 5\n      \
             shared: {{ {fields} }}\n"
        )
    };
    let error = error_of(&shared("redis: \"redis://cache:6379\", batch: 6"));
    assert!(error.starts_with("remora.yaml:"), "{error}");
    assert!(error.contains("shared.batch"), "{error}");
    assert!(
        error.contains("batch of 6 is above the burst of 5"),
        "{error}"
    );
    let error = error_of(&shared("redis: \"memcached://cache\""));
    assert!(error.contains("shared.redis"), "{error}");
    let error = error_of(&shared("redis: \"redis://cache\", timeout: 5s"));
    assert!(error.contains("shared.timeout"), "{error}");
    let error = error_of(&shared("redis: \"redis://cache\", on_error: maybe"));
    assert!(error.contains("on_error"), "{error}");
    remora::build::parse("remora.yaml", &shared("redis: \"redis://cache:6379\""))
        .expect("a shared limit with defaults is valid");
}
