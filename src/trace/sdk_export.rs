//! Span export through opentelemetry-otlp's gRPC `SpanExporter`, the alternative to
//! remora's encoder (`otlp.rs`) that exists to measure the two against each other
//! (`bench/RESULTS.md`). Compiled only with the `otlp-sdk-exporter` feature and chosen
//! at start with `REMORA_OTLP_EXPORTER=sdk`.
//!
//! The request path is the same as with the encoder: spans are remora's own records,
//! their attributes written in wire form as they are set. The export task hands each
//! batch to the SDK's exporter: every [`FinishedSpan`] becomes an `SpanData` (its
//! attributes read back from the wire form into `KeyValue`s), then the exporter turns
//! the batch into opentelemetry-proto's structs, encodes it and sends it with tonic.
//!
//! NOTE: reading the attributes back is what an integration that keeps remora's
//! recording would do. One that recorded `KeyValue`s instead would move the same
//! allocations (one per string value) onto the request path; keys are interned here
//! ([`Converter`]), as static keys would cost nothing there either.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::trace::{Event, SpanId, SpanKind};
use opentelemetry::{Array, InstrumentationScope, Key, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::encoding::{decode_key, decode_varint, WireType};

use super::span::{FinishedSpan, Kind};
use super::{Compression, OtlpProtocol, TracingConfig};

/// The environment variable that chooses this exporter (value `sdk`).
pub(super) const CHOICE: &str = "REMORA_OTLP_EXPORTER";

/// Whether the environment asks for this exporter.
pub(super) fn chosen() -> bool {
    std::env::var(CHOICE).is_ok_and(|value| value.trim() == "sdk")
}

/// opentelemetry-otlp's gRPC exporter and the conversion of remora's spans for it.
pub(super) struct SdkExporter {
    exporter: opentelemetry_otlp::SpanExporter,
    converter: Converter,
}

impl SdkExporter {
    /// An exporter to `endpoint` over plaintext gRPC, or why it cannot serve `config`
    /// (it is a measurement variant: no TLS, headers, compression or OTLP/HTTP).
    /// Must be called on a tokio runtime (tonic's channel).
    pub(super) fn new(endpoint: &str, config: &TracingConfig) -> Result<Self, String> {
        if config.protocol != OtlpProtocol::Grpc
            || config.tls.is_some()
            || !config.headers.is_empty()
            || config.compression != Compression::None
        {
            return Err("it exports plaintext OTLP/gRPC without headers or compression".into());
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|error| error.to_string())?;
        let mut resource = vec![KeyValue::new("service.name", config.service_name.clone())];
        resource.extend(
            (config.resource.iter()).map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        );
        exporter.set_resource(
            &Resource::builder_empty()
                .with_detector(Box::new(
                    opentelemetry_sdk::resource::TelemetryResourceDetector,
                ))
                .with_attributes(resource)
                .build(),
        );
        Ok(Self {
            exporter,
            converter: Converter::default(),
        })
    }

    /// Converts and exports `batch` (the exporter's own timeout and retries apply).
    pub(super) async fn export(
        &mut self,
        batch: &[FinishedSpan],
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.iter().map(|span| self.converter.span(span)).collect();
        self.exporter.export(spans).await
    }
}

/// Turns [`FinishedSpan`]s into `SpanData`, keeping one `Key` per attribute name seen.
struct Converter {
    /// Attribute names already seen, each an `Arc<str>` key that clones without
    /// allocating; at most [`MAX_KEYS`].
    keys: HashMap<String, Key>,
    scope: InstrumentationScope,
}

/// Attribute names interned at most (remora's are a fixed set; this bounds a surprise).
const MAX_KEYS: usize = 256;

impl Default for Converter {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            scope: InstrumentationScope::builder("remora")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }
}

impl Converter {
    fn span(&mut self, span: &FinishedSpan) -> SpanData {
        let recording = &span.recording;
        let mut events = SpanEvents::default();
        events.events = (recording.events.iter())
            .map(|event| {
                let attributes = self.key_values(event.attributes.wire());
                Event::new(event.name.clone(), event.time, attributes, 0)
            })
            .collect();
        SpanData {
            span_context: span.context.clone(),
            parent_span_id: span.parent.map_or(SpanId::INVALID, |(id, _)| id),
            parent_span_is_remote: matches!(span.parent, Some((_, true))),
            span_kind: match span.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            },
            name: recording.name.clone(),
            start_time: span.start,
            end_time: span.end,
            attributes: self.key_values(recording.attributes.wire()),
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: recording.status.clone(),
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// The `KeyValue`s of a list written by `Attributes` (repeated `KeyValue` fields).
    fn key_values(&mut self, mut wire: &[u8]) -> Vec<KeyValue> {
        let mut out = Vec::new();
        while let Some((_, Field::Bytes(message))) = next_field(&mut wire) {
            if let Some(attribute) = self.key_value(message) {
                out.push(attribute);
            }
        }
        out
    }

    /// One `KeyValue` message: key (1), `AnyValue` (2).
    fn key_value(&mut self, mut message: &[u8]) -> Option<KeyValue> {
        let (mut key, mut value) = (None, None);
        while let Some((tag, field)) = next_field(&mut message) {
            match (tag, field) {
                (1, Field::Bytes(name)) => key = std::str::from_utf8(name).ok(),
                (2, Field::Bytes(any)) => value = any_value(any),
                _ => {}
            }
        }
        Some(KeyValue::new(self.key(key?), value?))
    }

    fn key(&mut self, name: &str) -> Key {
        if let Some(key) = self.keys.get(name) {
            return key.clone();
        }
        let key = Key::from(Arc::<str>::from(name));
        if self.keys.len() < MAX_KEYS {
            self.keys.insert(name.to_string(), key.clone());
        }
        key
    }
}

/// An `AnyValue` message: string (1), bool (2), int (3), double (4) or array (5).
fn any_value(mut message: &[u8]) -> Option<Value> {
    let (tag, field) = next_field(&mut message)?;
    Some(match (tag, field) {
        (1, Field::Bytes(text)) => Value::String(text_value(text)),
        (2, Field::Varint(flag)) => Value::Bool(flag != 0),
        (3, Field::Varint(int)) => Value::I64(int as i64),
        (4, Field::Fixed64(bits)) => Value::F64(f64::from_bits(bits)),
        (5, Field::Bytes(array)) => Value::Array(array_value(array)),
        _ => return None,
    })
}

/// An `ArrayValue` message (repeated `AnyValue`, field 1): typed by its first value,
/// as text when the values are strings or of mixed kinds.
fn array_value(mut message: &[u8]) -> Array {
    let mut values = Vec::new();
    while let Some((1, Field::Bytes(any))) = next_field(&mut message) {
        values.extend(any_value(any));
    }
    let typed = match values.first() {
        Some(Value::Bool(_)) => all(&values, |value| match value {
            Value::Bool(flag) => Some(*flag),
            _ => None,
        })
        .map(Array::Bool),
        Some(Value::I64(_)) => all(&values, |value| match value {
            Value::I64(int) => Some(*int),
            _ => None,
        })
        .map(Array::I64),
        Some(Value::F64(_)) => all(&values, |value| match value {
            Value::F64(double) => Some(*double),
            _ => None,
        })
        .map(Array::F64),
        _ => None,
    };
    typed.unwrap_or_else(|| {
        Array::String(
            (values.iter())
                .map(|value| StringValue::from(value.as_str().into_owned()))
                .collect(),
        )
    })
}

/// `pick` of every value, or `None` if it refuses one.
fn all<T>(values: &[Value], pick: impl Fn(&Value) -> Option<T>) -> Option<Vec<T>> {
    values.iter().map(pick).collect()
}

fn text_value(bytes: &[u8]) -> StringValue {
    StringValue::from(String::from_utf8_lossy(bytes).into_owned())
}

/// One protobuf field's value, borrowed from the message.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// Reads the next field of `message`; `None` at its end or where it is malformed.
fn next_field<'a>(message: &mut &'a [u8]) -> Option<(u32, Field<'a>)> {
    if message.is_empty() {
        return None;
    }
    let (tag, wire_type) = decode_key(message).ok()?;
    let field = match wire_type {
        WireType::Varint => Field::Varint(decode_varint(message).ok()?),
        WireType::SixtyFourBit => {
            let (bits, rest) = message.split_first_chunk::<8>()?;
            *message = rest;
            Field::Fixed64(u64::from_le_bytes(*bits))
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(message).ok()?).ok()?;
            if len > message.len() {
                return None;
            }
            let (bytes, rest) = message.split_at(len);
            *message = rest;
            Field::Bytes(bytes)
        }
        _ => return None,
    };
    Some((tag, field))
}

#[cfg(test)]
mod tests {
    use super::super::span::{field, Attributes};
    use super::*;

    #[test]
    fn attributes_read_back_as_they_were_written() {
        let mut attributes = Attributes::new(field::SPAN_ATTRIBUTES, 0);
        attributes.str("url.path", "/prices/7");
        attributes.int("http.response.status_code", -503);
        attributes.key_value(&KeyValue::new("remora.flag", true));
        attributes.key_value(&KeyValue::new("remora.ratio", 0.25));
        attributes.key_value(&KeyValue::new(
            "remora.tries",
            Value::Array(vec![1i64, 2].into()),
        ));
        attributes.str("remora.long", &"x".repeat(300));
        let mut converter = Converter::default();
        let read = converter.key_values(attributes.wire());
        let expected = [
            KeyValue::new("url.path", "/prices/7"),
            KeyValue::new("http.response.status_code", -503),
            KeyValue::new("remora.flag", true),
            KeyValue::new("remora.ratio", 0.25),
            KeyValue::new("remora.tries", Value::Array(vec![1i64, 2].into())),
            KeyValue::new("remora.long", "x".repeat(300)),
        ];
        assert_eq!(read, expected);
        // Read again: the keys come from the cache, equal all the same.
        assert_eq!(converter.key_values(attributes.wire()), expected);
        assert_eq!(converter.keys.len(), 6);
    }
}
