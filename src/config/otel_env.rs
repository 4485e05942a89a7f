//! The OpenTelemetry SDK's environment variables, read the way the SDKs read them,
//! filling what the `tracing` section leaves unset (the file wins where both say).
//!
//! | variable | fills |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | `endpoint`, used as written |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | `endpoint`; for `http`, `/v1/traces` is appended to its path |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` | `protocol`: `grpc` or `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` | `headers`: `name=value,...`, values percent-decoded; a name the file sets keeps the file's value |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION` | `compression`: `gzip` or `none` |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` | `export_timeout`, in milliseconds |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `resource`: `key=value,...`, under the file's keys |
//! | `OTEL_SERVICE_NAME` | `resource` `service.name`, unless the file's `resource` sets it |
//!
//! The `TRACES_` form of a variable wins over the general one, as in the SDKs. A value
//! that cannot be read is a config error naming the variable.

use percent_encoding::percent_decode_str;

use super::env::EnvLookup;
use super::trace::{CompressionName, OtlpProtocolName, TracingSection};

/// Fills `section` from `env`; returns one message per variable that cannot be read.
pub(crate) fn apply(section: &mut TracingSection, env: EnvLookup<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    let file_names_service = section.resource.contains_key("service.name");
    // (name, value) of the traces-specific variable if set, else the general one.
    let read = |suffix: &str| {
        let traces = format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}");
        let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
        let set = |name: String| {
            env(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        };
        set(traces).or_else(|| set(general))
    };

    if section.protocol.is_none() {
        if let Some((name, value)) = read("PROTOCOL") {
            match value.trim() {
                "grpc" => section.protocol = Some(OtlpProtocolName::Grpc),
                "http/protobuf" => section.protocol = Some(OtlpProtocolName::Http),
                other => errors.push(format!(
                    "{name}={other:?}: remora exports `grpc` or `http/protobuf` (not http/json)"
                )),
            }
        }
    }
    if section.endpoint.is_none() {
        let http = section.protocol == Some(OtlpProtocolName::Http);
        let specific = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty());
        let general = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty());
        section.endpoint = match (specific, general) {
            (Some(endpoint), _) => Some(endpoint.trim().to_string()),
            (None, Some(base)) if http => {
                Some(format!("{}/v1/traces", base.trim().trim_end_matches('/')))
            }
            (None, Some(base)) => Some(base.trim().to_string()),
            (None, None) => None,
        };
    }
    if let Some((name, value)) = read("HEADERS") {
        match pairs(&value) {
            Ok(headers) => {
                for (key, value) in headers {
                    section
                        .headers
                        .0
                        .entry(key.to_ascii_lowercase())
                        .or_insert(value);
                }
            }
            Err(why) => errors.push(format!("{name}: {why}")),
        }
    }
    if section.compression.is_none() {
        if let Some((name, value)) = read("COMPRESSION") {
            match value.trim() {
                "gzip" => section.compression = Some(CompressionName::Gzip),
                "none" => section.compression = Some(CompressionName::None),
                other => errors.push(format!("{name}={other:?}: write `gzip` or `none`")),
            }
        }
    }
    if section.export_timeout.is_none() {
        if let Some((name, value)) = read("TIMEOUT") {
            match value.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => {
                    section.export_timeout = Some(std::time::Duration::from_millis(ms))
                }
                _ => errors.push(format!(
                    "{name}={value:?}: a whole number of milliseconds above 0"
                )),
            }
        }
    }
    if let Some(value) = env("OTEL_RESOURCE_ATTRIBUTES").filter(|v| !v.trim().is_empty()) {
        match pairs(&value) {
            Ok(attributes) => {
                for (key, value) in attributes {
                    section.resource.entry(key).or_insert(value);
                }
            }
            Err(why) => errors.push(format!("OTEL_RESOURCE_ATTRIBUTES: {why}")),
        }
    }
    if let Some(service) = env("OTEL_SERVICE_NAME").filter(|v| !v.trim().is_empty()) {
        // Over OTEL_RESOURCE_ATTRIBUTES' service.name, not over the file's.
        if !file_names_service {
            section
                .resource
                .insert("service.name".into(), service.trim().to_string());
        }
    }
    errors
}

/// `key=value,key=value` (W3C baggage-like, as the SDKs write these variables), values
/// percent-decoded and both sides trimmed.
fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{item:?} is not `key=value`"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{item:?} has no key"));
        }
        let value = percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key:?} is not UTF-8 once percent-decoded"))?;
        out.push((key.to_string(), value.into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn applied(section: &mut TracingSection, vars: &[(&str, &str)]) -> Vec<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        apply(section, &|name| vars.get(name).cloned())
    }

    #[test]
    fn the_environment_fills_what_the_file_leaves_unset() {
        let mut section = TracingSection::default();
        let errors = applied(
            &mut section,
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://otlp.example.com/otlp/",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=abc%3D%3D, X-Team = core",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=prod,service.name=x",
                ),
                ("OTEL_SERVICE_NAME", "checkout"),
            ],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            section.endpoint.as_deref(),
            Some("https://otlp.example.com/otlp/v1/traces")
        );
        assert_eq!(section.protocol, Some(OtlpProtocolName::Http));
        assert_eq!(section.headers.0["api-key"], "abc==");
        assert_eq!(section.headers.0["x-team"], "core");
        assert_eq!(
            section.compression,
            Some(CompressionName::Gzip),
            "TRACES_ wins"
        );
        assert_eq!(section.export_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(section.resource["deployment.environment.name"], "prod");
        assert_eq!(
            section.resource["service.name"], "checkout",
            "OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES"
        );
    }

    #[test]
    fn the_file_wins_where_both_say() {
        let mut section = TracingSection {
            endpoint: Some("http://collector:4317".into()),
            protocol: Some(OtlpProtocolName::Grpc),
            compression: Some(CompressionName::None),
            ..TracingSection::default()
        };
        section
            .headers
            .0
            .insert("api-key".into(), "from-file".into());
        section
            .resource
            .insert("service.name".into(), "file-name".into());
        let errors = applied(
            &mut section,
            &[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://elsewhere:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=from-env,other=1"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_SERVICE_NAME", "env-name"),
            ],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(section.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(section.protocol, Some(OtlpProtocolName::Grpc));
        assert_eq!(section.compression, Some(CompressionName::None));
        assert_eq!(section.headers.0["api-key"], "from-file");
        assert_eq!(section.headers.0["other"], "1");
        assert_eq!(section.resource["service.name"], "file-name");
    }

    #[test]
    fn a_grpc_base_endpoint_is_used_as_written() {
        let mut section = TracingSection::default();
        applied(
            &mut section,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")],
        );
        assert_eq!(section.endpoint.as_deref(), Some("http://jaeger:4317"));
    }

    #[test]
    fn unreadable_values_name_their_variable() {
        let mut section = TracingSection::default();
        let errors = applied(
            &mut section,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "novalue"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ("OTEL_RESOURCE_ATTRIBUTES", "=x"),
            ],
        );
        let text = errors.join("\n");
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_RESOURCE_ATTRIBUTES",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }
}
