//! Spans as remora records them: a small record whose attributes are written in their
//! OTLP wire form the moment they are set.
//!
//! A [`LiveSpan`] is shared (`Arc`) by the request path and, through [`SpanHandle`], by
//! the opentelemetry [`Context`](opentelemetry::Context) that propagators and
//! [`event`](super::event) read. Ending it moves a [`FinishedSpan`] into the export
//! queue ([`Sink`](super::export::Sink)); a span whose last handle is dropped unended is ended then, so a
//! request abandoned mid-flight still shows up.
//!
//! NOTE: why not the opentelemetry SDK's spans: they keep attributes as `KeyValue`s
//! (an allocation per string attribute and per growth of the list), and the OTLP
//! exporter converts each span into prost structs (again an allocation per attribute)
//! before encoding. Writing the wire form at once costs one buffer per span; measured in
//! `bench/RESULTS.md` ("Tracing, third pass").

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, Status};
use opentelemetry::{Array, KeyValue, Value};
use prost::encoding::{encoded_len_varint, WireType};

use super::export::Sink;
use super::wire::{encode_key, encode_varint};
use crate::core::short_text::ShortText;

/// OTLP field numbers of the messages remora writes (opentelemetry-proto's
/// `trace/v1/trace.proto` and `common/v1/common.proto`).
pub(super) mod field {
    /// `Span.attributes`.
    pub const SPAN_ATTRIBUTES: u32 = 9;
    /// `Span.Event.attributes`.
    pub const EVENT_ATTRIBUTES: u32 = 3;
    /// `Resource.attributes`.
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
}

/// Whether a span serves a call (inbound) or makes one (outbound, and every try).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
}

impl Kind {
    /// The OTLP enum value.
    pub(super) fn wire(self) -> u64 {
        match self {
            Self::Server => 2,
            Self::Client => 3,
        }
    }
}

/// A list of attributes in OTLP wire form: each one a complete `KeyValue` field of the
/// message that will hold the list (its field number given at creation), so encoding a
/// span copies the buffer as it is.
#[derive(Debug, Default)]
pub(super) struct Attributes {
    field: u32,
    wire: Vec<u8>,
}

/// `AnyValue` field numbers.
const STRING_VALUE: u32 = 1;
const BOOL_VALUE: u32 = 2;
const INT_VALUE: u32 = 3;
const DOUBLE_VALUE: u32 = 4;
const ARRAY_VALUE: u32 = 5;

/// One attribute value, borrowed for the time it takes to encode it.
#[derive(Debug, Clone, Copy)]
pub(super) enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl AttrValue<'_> {
    /// Length of the `AnyValue` message.
    #[inline]
    fn len(self) -> usize {
        match self {
            Self::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
            Self::Int(i) => 1 + encoded_len_varint(i as u64),
            Self::Bool(_) => 2,
            Self::Double(_) => 9,
        }
    }

    /// Writes the `AnyValue` message's fields.
    #[inline]
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Self::Str(s) => {
                encode_key(STRING_VALUE, WireType::LengthDelimited, out);
                encode_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Int(i) => {
                encode_key(INT_VALUE, WireType::Varint, out);
                encode_varint(i as u64, out);
            }
            Self::Bool(b) => {
                encode_key(BOOL_VALUE, WireType::Varint, out);
                encode_varint(u64::from(b), out);
            }
            Self::Double(d) => {
                encode_key(DOUBLE_VALUE, WireType::SixtyFourBit, out);
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
    }
}

impl Attributes {
    /// An empty list that will be field `field` of its message.
    pub(super) fn new(field: u32, capacity: usize) -> Self {
        Self {
            field,
            wire: Vec::with_capacity(capacity),
        }
    }

    /// The encoded `KeyValue` fields.
    pub(super) fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Adds `key` = `value`.
    pub(super) fn add(&mut self, key: &str, value: AttrValue<'_>) {
        let any = value.len();
        self.open(key, 1 + encoded_len_varint(any as u64) + any);
        encode_varint(any as u64, &mut self.wire);
        value.write(&mut self.wire);
    }

    /// Adds a string attribute.
    pub(super) fn str(&mut self, key: &str, value: &str) {
        self.add(key, AttrValue::Str(value));
    }

    /// Adds an integer attribute.
    pub(super) fn int(&mut self, key: &str, value: i64) {
        self.add(key, AttrValue::Int(value));
    }

    /// Adds a string attribute written by `value`'s `Display`, without a `String` when
    /// it is short (addresses, numbers).
    pub(super) fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        let mut text = ShortText::default();
        if write!(text, "{value}").is_ok() {
            self.str(key, text.as_str());
        } else {
            self.str(key, &value.to_string());
        }
    }

    /// Adds an address as text (`192.0.2.1:8080`, `[2001:db8::1]:8080`).
    pub(super) fn socket_addr(&mut self, key: &str, addr: SocketAddr) {
        self.str(key, ShortText::socket_addr(addr).as_str());
    }

    /// Adds an IP address as text.
    pub(super) fn ip(&mut self, key: &str, ip: IpAddr) {
        self.str(key, ShortText::ip(ip).as_str());
    }

    /// Adds an opentelemetry `KeyValue` (what the API's spans and events are given).
    pub(super) fn key_value(&mut self, attribute: &KeyValue) {
        let key = attribute.key.as_str();
        match &attribute.value {
            Value::Bool(b) => self.add(key, AttrValue::Bool(*b)),
            Value::I64(i) => self.add(key, AttrValue::Int(*i)),
            Value::F64(d) => self.add(key, AttrValue::Double(*d)),
            Value::String(s) => self.add(key, AttrValue::Str(s.as_str())),
            Value::Array(array) => self.array(key, array),
            // A future value kind: written as text rather than lost.
            other => self.display(key, other),
        }
    }

    /// Adds an array attribute (`ArrayValue` of `AnyValue`s).
    fn array(&mut self, key: &str, array: &Array) {
        let mut values = Vec::new();
        let mut push = |value: AttrValue<'_>| {
            encode_key(1, WireType::LengthDelimited, &mut values);
            encode_varint(value.len() as u64, &mut values);
            value.write(&mut values);
        };
        match array {
            Array::Bool(items) => items.iter().for_each(|b| push(AttrValue::Bool(*b))),
            Array::I64(items) => items.iter().for_each(|i| push(AttrValue::Int(*i))),
            Array::F64(items) => items.iter().for_each(|d| push(AttrValue::Double(*d))),
            Array::String(items) => items.iter().for_each(|s| push(AttrValue::Str(s.as_str()))),
            _ => {}
        }
        let array_len = values.len();
        let any = 1 + encoded_len_varint(array_len as u64) + array_len;
        self.open(key, 1 + encoded_len_varint(any as u64) + any);
        encode_varint(any as u64, &mut self.wire);
        encode_key(ARRAY_VALUE, WireType::LengthDelimited, &mut self.wire);
        encode_varint(array_len as u64, &mut self.wire);
        self.wire.extend_from_slice(&values);
    }

    /// Writes the list field's key and a `KeyValue` up to its value field's length:
    /// `value_field` is the encoded size of field 2 without its key.
    #[inline]
    fn open(&mut self, key: &str, value_field: usize) {
        let key_field = 1 + encoded_len_varint(key.len() as u64) + key.len();
        let message = key_field + value_field;
        // One growth at most per attribute: the list's key (at most 2 bytes for the
        // fields remora writes), the length, and the message.
        self.wire
            .reserve(2 + encoded_len_varint(message as u64) + message);
        encode_key(self.field, WireType::LengthDelimited, &mut self.wire);
        encode_varint(message as u64, &mut self.wire);
        encode_key(1, WireType::LengthDelimited, &mut self.wire);
        encode_varint(key.len() as u64, &mut self.wire);
        self.wire.extend_from_slice(key.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut self.wire);
    }
}

/// A span event (a decision on the request path).
#[derive(Debug)]
pub(super) struct Event {
    pub(super) time: SystemTime,
    pub(super) name: Cow<'static, str>,
    pub(super) attributes: Attributes,
}

/// What a span records until it ends.
#[derive(Debug)]
pub(super) struct Recording {
    pub(super) name: Cow<'static, str>,
    pub(super) attributes: Attributes,
    pub(super) events: Vec<Event>,
    pub(super) status: Status,
}

impl Recording {
    /// Sets the span status; an error is never downgraded (OpenTelemetry's rule).
    pub(super) fn set_status(&mut self, status: Status) {
        if status > self.status {
            self.status = status;
        }
    }
}

/// A span on its way to the collector.
#[derive(Debug)]
pub(super) struct FinishedSpan {
    pub(super) context: SpanContext,
    /// The parent span and whether it was remote (in another process).
    pub(super) parent: Option<(SpanId, bool)>,
    pub(super) kind: Kind,
    pub(super) start: SystemTime,
    pub(super) end: SystemTime,
    pub(super) recording: Recording,
}

/// A sampled span being recorded.
#[derive(Debug)]
pub(super) struct LiveSpan {
    context: SpanContext,
    /// The id the span is exported with instead of `context`'s, once set (see
    /// [`LiveSpan::hand_over_id`]).
    exported_id: std::sync::OnceLock<SpanId>,
    parent: Option<(SpanId, bool)>,
    kind: Kind,
    start: SystemTime,
    sink: Sink,
    /// `None` once ended.
    recording: Mutex<Option<Recording>>,
}

impl LiveSpan {
    /// Starts a span with `context` (its own ids) under `parent` (invalid for a root).
    pub(super) fn start(
        sink: &Sink,
        context: SpanContext,
        parent: &SpanContext,
        kind: Kind,
        name: Cow<'static, str>,
        start: SystemTime,
        attributes_capacity: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            context,
            exported_id: std::sync::OnceLock::new(),
            parent: parent
                .is_valid()
                .then(|| (parent.span_id(), parent.is_remote())),
            kind,
            start,
            sink: sink.clone(),
            recording: Mutex::new(Some(Recording {
                name,
                attributes: Attributes::new(field::SPAN_ATTRIBUTES, attributes_capacity),
                events: Vec::new(),
                status: Status::Unset,
            })),
        })
    }

    /// The span's ids, as propagated.
    pub(super) fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Gives the span a new id for its export and returns its context under that id;
    /// its old id is the caller's to give to another span (spans that named it as
    /// their parent then hang under that one). Only the first call renames.
    pub(super) fn hand_over_id(&self) -> SpanContext {
        let id = *self
            .exported_id
            .get_or_init(|| SpanId::from(fastrand::u64(1..)));
        SpanContext::new(
            self.context.trace_id(),
            id,
            self.context.trace_flags(),
            false,
            self.context.trace_state().clone(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Option<Recording>> {
        self.recording
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `record` on the span unless it has ended.
    pub(super) fn record(&self, record: impl FnOnce(&mut Recording)) {
        if let Some(recording) = self.lock().as_mut() {
            record(recording);
        }
    }

    /// Whether the span still records.
    pub(super) fn is_recording(&self) -> bool {
        self.lock().is_some()
    }

    /// Ends the span at `end` and queues it for export; later calls do nothing.
    pub(super) fn end_at(&self, end: SystemTime) {
        let ended = self.lock().take();
        if let Some(recording) = ended {
            self.queue(recording, end);
        }
    }

    /// Ends the span now (the clock is read only if it had not ended).
    pub(super) fn end(&self) {
        let ended = self.lock().take();
        if let Some(recording) = ended {
            self.queue(recording, SystemTime::now());
        }
    }

    /// Queues the ended span for export.
    fn queue(&self, recording: Recording, end: SystemTime) {
        let context = match self.exported_id.get() {
            None => self.context.clone(),
            Some(id) => SpanContext::new(
                self.context.trace_id(),
                *id,
                self.context.trace_flags(),
                false,
                self.context.trace_state().clone(),
            ),
        };
        self.sink.send(FinishedSpan {
            context,
            parent: self.parent,
            kind: self.kind,
            start: self.start,
            end,
            recording,
        });
    }
}

impl Drop for LiveSpan {
    /// A span nobody ended (its request was abandoned) ends when its last handle goes;
    /// an ended one costs no lock and no clock read here.
    fn drop(&mut self) {
        let recording = self
            .recording
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(recording) = recording {
            self.queue(recording, SystemTime::now());
        }
    }
}

/// A [`LiveSpan`] as the opentelemetry API's span, so that a [`Context`] carries it:
/// propagators read its ids, [`event`](super::event) adds to it.
///
/// [`Context`]: opentelemetry::Context
#[derive(Debug)]
pub(super) struct SpanHandle(pub(super) Arc<LiveSpan>);

impl opentelemetry::trace::Span for SpanHandle {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        self.0.record(|recording| {
            let mut encoded = Attributes::new(field::EVENT_ATTRIBUTES, 0);
            for attribute in &attributes {
                encoded.key_value(attribute);
            }
            recording.events.push(Event {
                time: timestamp,
                name: name.into(),
                attributes: encoded,
            });
        });
    }

    fn span_context(&self) -> &SpanContext {
        self.0.context()
    }

    fn is_recording(&self) -> bool {
        self.0.is_recording()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        self.0
            .record(|recording| recording.attributes.key_value(&attribute));
    }

    fn set_status(&mut self, status: Status) {
        self.0.record(|recording| recording.set_status(status));
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        self.0.record(|recording| recording.name = new_name.into());
    }

    /// Remora never links spans.
    fn add_link(&mut self, _span_context: SpanContext, _attributes: Vec<KeyValue>) {}

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.0.end_at(timestamp);
    }
}

/// A recording span of its own test queue, for tests of what records on spans.
#[cfg(test)]
pub(super) fn test_span() -> (Arc<LiveSpan>, Sink) {
    use opentelemetry::trace::{TraceFlags, TraceId, TraceState};
    let sink = Sink::detached(4);
    let context = SpanContext::new(
        TraceId::from(1),
        SpanId::from(2),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let span = LiveSpan::start(
        &sink,
        context,
        &SpanContext::empty_context(),
        Kind::Client,
        "test".into(),
        SystemTime::now(),
        0,
    );
    (span, sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute list holding `key` = `text` as a string, written the general way.
    fn expected(key: &str, text: &str) -> Vec<u8> {
        let mut attributes = Attributes::new(field::SPAN_ATTRIBUTES, 0);
        attributes.str(key, text);
        attributes.wire
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let addresses: [SocketAddr; 5] = [
            "0.0.0.0:0".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "10.20.3.40:443".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "[2001:db8::1]:9000".parse().unwrap(),
        ];
        for addr in addresses {
            let mut attributes = Attributes::new(field::SPAN_ATTRIBUTES, 0);
            attributes.socket_addr("remora.endpoint", addr);
            assert_eq!(
                attributes.wire,
                expected("remora.endpoint", &addr.to_string())
            );
            let mut attributes = Attributes::new(field::SPAN_ATTRIBUTES, 0);
            attributes.ip("server.address", addr.ip());
            assert_eq!(
                attributes.wire,
                expected("server.address", &addr.ip().to_string())
            );
        }
    }
}
