//! A batch of finished spans as one OTLP `ExportTraceServiceRequest` message.
//!
//! Remora's spans keep their attributes in wire form already ([`Attributes`]), so a
//! batch is encoded by copying them between a few length prefixes: one buffer per
//! batch, no per-span or per-attribute allocation. The lengths are counted first, so
//! each span is written once, in place (writing spans into a buffer of their own and
//! copying it into the message was a third of the exporter's work). The layout follows
//! opentelemetry-proto's `collector/trace/v1/trace_service.proto`; the test below and
//! the test suite's OTLP receiver decode it with opentelemetry-proto's types.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::Status;
use prost::encoding::{encoded_len_varint, WireType};

use super::wire::{encode_key, encode_varint};

use super::span::{field, AttrValue, Attributes, Event, FinishedSpan};

/// Encodes batches for one sidecar: its resource and scope are written once.
#[derive(Debug)]
pub(super) struct Encoder {
    /// `ResourceSpans.resource` (field 1), complete.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), complete.
    scope: Vec<u8>,
    /// The length of each span's message in the batch being encoded (reused).
    lens: Vec<usize>,
}

impl Encoder {
    /// An encoder whose resource names `service_name`, with `more` attributes.
    pub(super) fn new(service_name: &str, more: &[(String, String)]) -> Self {
        let mut attributes = Attributes::new(field::RESOURCE_ATTRIBUTES, 64);
        attributes.add("service.name", AttrValue::Str(service_name));
        for (key, value) in more {
            attributes.str(key, value);
        }
        attributes.str("telemetry.sdk.name", "remora");
        attributes.str("telemetry.sdk.language", "rust");
        let mut resource = Vec::new();
        len_field(&mut resource, 1, attributes.wire());
        let mut scope_message = Vec::new();
        str_field(&mut scope_message, 1, "remora");
        str_field(&mut scope_message, 2, env!("CARGO_PKG_VERSION"));
        let mut scope = Vec::new();
        len_field(&mut scope, 1, &scope_message);
        Self {
            resource,
            scope,
            lens: Vec::new(),
        }
    }

    /// The `ExportTraceServiceRequest` holding `batch`, written after `prefix` bytes of
    /// zeros (room for a gRPC frame header) in a new buffer.
    pub(super) fn encode(&mut self, batch: &[FinishedSpan], prefix: usize) -> Vec<u8> {
        self.lens.clear();
        let mut spans = 0;
        for span in batch {
            let len = span_len(span);
            self.lens.push(len);
            spans += field_len(2, len);
        }
        let scope_spans = self.scope.len() + spans;
        let resource_spans = self.resource.len() + field_len(2, scope_spans);
        let mut out = Vec::with_capacity(prefix + field_len(1, resource_spans));
        out.resize(prefix, 0);
        // ExportTraceServiceRequest.resource_spans
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_spans as u64, &mut out);
        out.extend_from_slice(&self.resource);
        // ResourceSpans.scope_spans
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(scope_spans as u64, &mut out);
        out.extend_from_slice(&self.scope);
        // ScopeSpans.spans
        for (span, &len) in batch.iter().zip(&self.lens) {
            encode_key(2, WireType::LengthDelimited, &mut out);
            encode_varint(len as u64, &mut out);
            let start = out.len();
            write_span(&mut out, span);
            debug_assert_eq!(out.len() - start, len, "span_len and write_span disagree");
        }
        out
    }
}

/// The length of the `Span` message [`write_span`] writes for `span`.
fn span_len(span: &FinishedSpan) -> usize {
    let context = &span.context;
    let recording = &span.recording;
    // trace_id, span_id; kind (key and a one-byte enum); start and end (key, fixed64);
    // flags (a two-byte key, fixed32).
    let mut len = field_len(1, 16) + field_len(2, 8) + 2 + 2 * 9 + 6;
    let trace_state = context.trace_state().header();
    if !trace_state.is_empty() {
        len += field_len(3, trace_state.len());
    }
    if span.parent.is_some() {
        len += field_len(4, 8);
    }
    len += field_len(5, recording.name.len());
    len += recording.attributes.wire().len();
    for event in &recording.events {
        len += field_len(11, event_len(event));
    }
    len += match &recording.status {
        Status::Unset => 0,
        Status::Ok => field_len(15, 2),
        Status::Error { description } => field_len(15, error_status_len(description)),
    };
    len
}

/// The length of an `Event` message: time (key, fixed64), name, attributes.
fn event_len(event: &Event) -> usize {
    9 + field_len(2, event.name.len()) + event.attributes.wire().len()
}

/// The length of a `Status` message with code ERROR and `description`.
fn error_status_len(description: &str) -> usize {
    field_len(2, description.len()) + 2
}

/// Writes the fields of one `Span` message.
fn write_span(out: &mut Vec<u8>, span: &FinishedSpan) {
    let context = &span.context;
    len_field(out, 1, &context.trace_id().to_bytes());
    len_field(out, 2, &context.span_id().to_bytes());
    let trace_state = context.trace_state().header();
    if !trace_state.is_empty() {
        str_field(out, 3, &trace_state);
    }
    if let Some((parent, _)) = span.parent {
        len_field(out, 4, &parent.to_bytes());
    }
    let recording = &span.recording;
    str_field(out, 5, &recording.name);
    encode_key(6, WireType::Varint, out);
    encode_varint(span.kind.wire(), out);
    fixed64_field(out, 7, unix_nanos(span.start));
    fixed64_field(out, 8, unix_nanos(span.end));
    out.extend_from_slice(recording.attributes.wire());
    for event in &recording.events {
        encode_key(11, WireType::LengthDelimited, out);
        encode_varint(event_len(event) as u64, out);
        fixed64_field(out, 1, unix_nanos(event.time));
        len_field(out, 2, event.name.as_bytes());
        out.extend_from_slice(event.attributes.wire());
    }
    match &recording.status {
        Status::Unset => {}
        Status::Ok => {
            // Status { code = STATUS_CODE_OK }
            len_field(out, 15, &[3 << 3, 1]);
        }
        Status::Error { description } => {
            encode_key(15, WireType::LengthDelimited, out);
            encode_varint(error_status_len(description) as u64, out);
            len_field(out, 2, description.as_bytes());
            encode_key(3, WireType::Varint, out);
            encode_varint(2, out);
        }
    }
    // Span.flags: the W3C trace flags, and whether the parent is remote.
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    let mut flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if matches!(span.parent, Some((_, true))) {
        flags |= IS_REMOTE;
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&flags.to_le_bytes());
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The encoded size of length-delimited field `tag` holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    encoded_len_varint(u64::from(tag << 3)) + encoded_len_varint(len as u64) + len
}

fn len_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn str_field(out: &mut Vec<u8>, tag: u32, text: &str) {
    len_field(out, tag, text.as_bytes());
}

fn fixed64_field(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    use super::super::span::{Kind, Recording};
    use super::*;

    fn value(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Value {
        attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .unwrap_or_else(|| panic!("no attribute {key}"))
    }

    #[test]
    fn a_batch_decodes_as_the_collector_reads_it() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut attributes = Attributes::new(field::SPAN_ATTRIBUTES, 0);
        attributes.str("url.path", "/prices/7");
        attributes.int("http.response.status_code", 503);
        attributes.display(
            "server.address",
            "10.0.0.7:8080".parse::<std::net::SocketAddr>().unwrap(),
        );
        attributes.key_value(&KeyValue::new("remora.flag", true));
        attributes.key_value(&KeyValue::new("remora.ratio", 0.25));
        attributes.key_value(&KeyValue::new(
            "remora.tries",
            opentelemetry::Value::Array(vec![1i64, 2].into()),
        ));
        let long = "x".repeat(300);
        attributes.display("remora.long", &long);
        let mut event_attributes = Attributes::new(field::EVENT_ATTRIBUTES, 0);
        event_attributes.str("remora.fallback.trigger", "timeout");
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        let span = FinishedSpan {
            context: SpanContext::new(
                TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
                SpanId::from(0xb7ad6b7169203331),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent: Some((SpanId::from(0x1122334455667788), true)),
            kind: Kind::Client,
            start,
            end: start + Duration::from_millis(3),
            recording: Recording {
                name: "GET".into(),
                attributes,
                events: vec![Event {
                    time: start + Duration::from_millis(1),
                    name: "fallback".into(),
                    attributes: event_attributes,
                }],
                status: Status::error("HTTP 503"),
            },
        };
        let mut root = Recording {
            name: "pkg.Svc/Call".into(),
            attributes: Attributes::new(field::SPAN_ATTRIBUTES, 0),
            events: Vec::new(),
            status: Status::Unset,
        };
        root.set_status(Status::Ok);
        root.set_status(Status::error("ignored: Ok is final"));
        let root = FinishedSpan {
            context: SpanContext::new(
                TraceId::from(7),
                SpanId::from(8),
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
            parent: None,
            kind: Kind::Server,
            start,
            end: start,
            recording: root,
        };

        let mut encoder = Encoder::new("checkout", &[]);
        let wire = encoder.encode(&[span, root], 5);
        assert_eq!(&wire[..5], &[0; 5]);
        let request = ExportTraceServiceRequest::decode(&wire[5..]).unwrap();

        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one resource: {request:?}")
        };
        let resource = resource_spans.resource.as_ref().unwrap();
        assert_eq!(
            value(&resource.attributes, "service.name"),
            Value::StringValue("checkout".into())
        );
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one scope")
        };
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "remora");
        let [span, root] = &scope_spans.spans[..] else {
            panic!("two spans")
        };
        assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&span.span_id), "b7ad6b7169203331");
        assert_eq!(hex(&span.parent_span_id), "1122334455667788");
        assert_eq!(span.trace_state, "vendor=v1");
        assert_eq!(span.name, "GET");
        assert_eq!(span.kind, 3);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_126_456_789);
        assert_eq!(span.flags, 0x301);
        let attributes = &span.attributes;
        assert_eq!(attributes.len(), 7);
        assert_eq!(
            value(attributes, "url.path"),
            Value::StringValue("/prices/7".into())
        );
        assert_eq!(
            value(attributes, "http.response.status_code"),
            Value::IntValue(503)
        );
        assert_eq!(
            value(attributes, "server.address"),
            Value::StringValue("10.0.0.7:8080".into())
        );
        assert_eq!(value(attributes, "remora.flag"), Value::BoolValue(true));
        assert_eq!(value(attributes, "remora.ratio"), Value::DoubleValue(0.25));
        let Value::ArrayValue(tries) = value(attributes, "remora.tries") else {
            panic!("an array")
        };
        let tries: Vec<_> = tries.values.into_iter().map(|v| v.value.unwrap()).collect();
        assert_eq!(tries, [Value::IntValue(1), Value::IntValue(2)]);
        assert_eq!(value(attributes, "remora.long"), Value::StringValue(long));
        let [event] = &span.events[..] else {
            panic!("one event")
        };
        assert_eq!(event.name, "fallback");
        assert_eq!(event.time_unix_nano, 1_700_000_000_124_456_789);
        assert_eq!(
            value(&event.attributes, "remora.fallback.trigger"),
            Value::StringValue("timeout".into())
        );
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "HTTP 503"));

        assert_eq!(root.name, "pkg.Svc/Call");
        assert_eq!(root.kind, 2);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.flags, 0x100);
        assert_eq!(root.status.as_ref().unwrap().code, 1);
        assert!(root.attributes.is_empty() && root.events.is_empty());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
