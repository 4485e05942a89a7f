//! The `tracing` section -> the tracer's settings, the collector's TLS config read from
//! its files (or the system's roots for an `https://` collector without a `tls` block).

use super::{field, BuildError};
use crate::config::Config;
use crate::trace::{TracingConfig, TracingError};

/// The tracing pipeline of a sidecar beside `config.service`.
pub fn tracing(config: &Config) -> Result<TracingConfig, BuildError> {
    use crate::config::{AttemptSpansName, OtlpProtocolName, PropagationName};
    use crate::trace::{AttemptSpans, OtlpProtocol, Propagation};
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
        protocol: match section.protocol {
            OtlpProtocolName::Grpc => OtlpProtocol::Grpc,
            OtlpProtocolName::Http => OtlpProtocol::HttpProtobuf,
        },
        sampling_ratio: section.sampling.0,
        propagate,
        service_name: config.service.clone(),
        queue_size: section.queue_size,
        batch_size: section.batch_size,
        batch_delay: section.batch_delay,
        export_timeout: section.export_timeout,
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
