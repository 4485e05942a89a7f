//! The `tracing` section -> the tracer's settings, the collector's TLS config read from
//! its files (or the system's roots for an `https://` collector without a `tls` block).

use super::{field, BuildError};
use crate::config::Config;
use crate::trace::{TracingConfig, TracingError};

/// The tracing pipeline of a sidecar beside `config.service`.
pub fn tracing(config: &Config) -> Result<TracingConfig, BuildError> {
    use crate::config::{AttemptSpansName, CompressionName, OtlpProtocolName, PropagationName};
    use crate::trace::{AttemptSpans, Compression, OtlpProtocol, Propagation};
    let section = &config.tracing;
    let mut propagate = vec![Propagation::W3c];
    for name in &section.propagate {
        let format = match name {
            PropagationName::W3c => continue,
            PropagationName::B3 => Propagation::B3,
            PropagationName::Jaeger => Propagation::Jaeger,
        };
        if !propagate.contains(&format) {
            propagate.push(format);
        }
    }
    let https = section
        .endpoint
        .as_deref()
        .is_some_and(|endpoint| endpoint.starts_with("https://"));
    let default = crate::config::TlsSection::default();
    let tls = match &section.tls {
        Some(tls) => Some(tls),
        None if https => Some(&default),
        None => None,
    };
    let tls = match tls {
        Some(tls) => Some(crate::trace::CollectorTls {
            config: super::external_tls(tls).map_err(|e| e.under("tls"))?,
            server_name: tls.server_name.clone(),
        }),
        None => None,
    };
    let tracing = TracingConfig {
        endpoint: section.endpoint.clone(),
        tls,
        protocol: match section.protocol.unwrap_or_default() {
            OtlpProtocolName::Grpc => OtlpProtocol::Grpc,
            OtlpProtocolName::Http => OtlpProtocol::HttpProtobuf,
        },
        sampling_ratio: section.sampling.0,
        propagate,
        service_name: section
            .resource
            .get("service.name")
            .cloned()
            .unwrap_or_else(|| config.service.clone()),
        resource: resource(config),
        headers: export_headers(&section.headers)?,
        compression: match section.compression.unwrap_or_default() {
            CompressionName::None => Compression::None,
            CompressionName::Gzip => Compression::Gzip,
        },
        queue_size: section.queue_size,
        batch_size: section.batch_size,
        batch_delay: section.batch_delay,
        export_timeout: section
            .export_timeout
            .unwrap_or(crate::config::DEFAULT_EXPORT_TIMEOUT),
        access_log: section.access_log,
        attempt_spans: match section.attempt_spans {
            AttemptSpansName::Retries => AttemptSpans::Retries,
            AttemptSpansName::Always => AttemptSpans::Always,
        },
    };
    tracing.validate().map_err(|error| {
        let name = match &error {
            TracingError::SamplingRatio(_) => "sampling",
            TracingError::ZeroBound(name) | TracingError::ZeroDuration(name) => name,
            TracingError::Endpoint { .. } => "endpoint",
        };
        BuildError::at(field(name), error)
    })?;
    Ok(tracing)
}

/// The resource attributes besides `service.name`: `service.instance.id` first (the
/// configured one, else the registration's id, else a random UUID of this process),
/// then the configured ones in key order.
fn resource(config: &Config) -> Vec<(String, String)> {
    const INSTANCE: &str = "service.instance.id";
    let configured = &config.tracing.resource;
    let instance = configured
        .get(INSTANCE)
        .cloned()
        .unwrap_or_else(|| match &config.register {
            Some(register) => register
                .id
                .clone()
                .unwrap_or_else(|| register.address.to_string()),
            None => process_instance_id().to_string(),
        });
    let mut resource = vec![(INSTANCE.to_string(), instance)];
    resource.extend(
        configured
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), INSTANCE | "service.name"))
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    resource
}

/// A random UUID (version 4) drawn once per process: the instance id of a sidecar that
/// does not register, the same across reloads.
fn process_instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = crate::access::new_request_id();
        String::from_utf8_lossy(id.as_bytes()).into_owned()
    })
}

/// The export headers as HTTP header names and values, each refused at its key.
fn export_headers(
    headers: &crate::config::ExportHeaders,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, BuildError> {
    headers
        .0
        .iter()
        .map(|(name, value)| {
            let at = || field("headers").key(name);
            let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                BuildError::at(at(), format!("{name:?} is not a valid header name"))
            })?;
            if matches!(
                header.as_str(),
                "content-type" | "content-encoding" | "te" | "host" | "grpc-encoding"
            ) || header.as_str().starts_with(':')
            {
                return Err(BuildError::at(
                    at(),
                    format!("{name} is set by the exporter itself"),
                ));
            }
            let mut value = http::HeaderValue::from_str(value).map_err(|_| {
                BuildError::at(at(), "the value holds characters a header cannot carry")
            })?;
            value.set_sensitive(true);
            Ok((header, value))
        })
        .collect()
}
