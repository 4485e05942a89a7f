//! Trace context in headers: which formats are read and written, and the B3 and Jaeger
//! formats themselves (the Jaeger propagator crate is not released for the
//! opentelemetry version used, and the B3 one ships inside the deprecated Zipkin
//! exporter crate; both formats are a few lines).
//!
//! Every format is read on every request: W3C `traceparent`/`tracestate` and `baggage`,
//! B3 single (`b3`) and multi (`X-B3-*`), and Jaeger `uber-trace-id`. When several are
//! present, W3C wins, then B3, then Jaeger. Toward the upstream, W3C is always written,
//! B3 (multi-header) and Jaeger when configured; every trace header the caller sent is
//! removed first, so no stale parent reaches the upstream. `baggage` is passed on as the
//! caller sent it: remora adds nothing to it, and the opentelemetry writer would change
//! its meaning (a property holding an encoded `,` became an entry of its own).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::OnceLock;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use super::Propagation;

/// The propagators of one sidecar: one reading every format, one writing the configured ones.
#[derive(Debug)]
pub(crate) struct Propagators {
    extract: TextMapCompositePropagator,
    /// The formats written besides W3C (which [`inject_w3c`] writes), if any.
    inject: Option<TextMapCompositePropagator>,
    /// Every trace header any format reads (not `baggage`): removed before injecting.
    fields: Vec<HeaderName>,
}

/// W3C baggage's header.
static BAGGAGE_HEADER: HeaderName = HeaderName::from_static(BAGGAGE);

impl Propagators {
    /// Reads every format and baggage; writes W3C and those of `propagate`.
    pub(crate) fn new(propagate: &[Propagation]) -> Self {
        // Later propagators overwrite earlier ones in the composite: lowest priority first.
        let extract = TextMapCompositePropagator::new(vec![
            Box::new(JaegerPropagator),
            Box::new(B3Propagator),
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        let fields = extract
            .fields()
            .filter(|name| *name != BAGGAGE)
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        let mut writers: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
        if propagate.contains(&Propagation::B3) {
            writers.push(Box::new(B3Propagator));
        }
        if propagate.contains(&Propagation::Jaeger) {
            writers.push(Box::new(JaegerPropagator));
        }
        Self {
            extract,
            inject: (!writers.is_empty()).then(|| TextMapCompositePropagator::new(writers)),
            fields,
        }
    }

    /// The caller's context, or an empty one.
    pub(crate) fn extract(&self, headers: &HeaderMap) -> Context {
        self.extract_carried(headers).0
    }

    /// The caller's context, or an empty one, and whether `headers` hold any trace
    /// header (a field [`Self::inject`] removes).
    pub(crate) fn extract_carried(&self, headers: &HeaderMap) -> (Context, bool) {
        // Without any header a format reads, every format would find nothing: one pass
        // over the names says so, where each format would look its names up one by one.
        let mut baggage = false;
        let mut fields = false;
        for name in headers.keys() {
            if *name == BAGGAGE_HEADER {
                baggage = true;
            } else if self.fields.contains(name) {
                fields = true;
                break;
            }
        }
        if !baggage && !fields {
            return (Context::new(), false);
        }
        let cx = self
            .extract
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        (cx, fields)
    }

    /// Replaces the trace headers of `headers` with `cx`'s.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        // Only those present are removed: a removal hashes its name, a comparison does not.
        let stale: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.fields.contains(name))
            .cloned()
            .collect();
        for name in stale {
            headers.remove(name);
        }
        self.write(cx, headers);
    }

    /// Writes `cx` into `headers` that hold no trace header (as
    /// [`Self::extract_carried`] found): [`Self::inject`] without looking for stale ones.
    ///
    /// NOTE: comparing every header name with the nine trace fields cost about 700
    /// instructions per request, for headers a caller almost never sends.
    pub(crate) fn write(&self, cx: &Context, headers: &mut HeaderMap) {
        inject_w3c(cx, headers);
        if let Some(inject) = &self.inject {
            inject.inject_context(cx, &mut HeaderInjector(headers));
        }
    }
}

/// W3C `traceparent` and a non-empty `tracestate`, as opentelemetry's writer puts them
/// (only the sampled flag is passed on), without its formatting and `String`s.
fn inject_w3c(cx: &Context, headers: &mut HeaderMap) {
    static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return;
    }
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    crate::core::hex::write(&mut value[3..35], &context.trace_id().to_bytes());
    crate::core::hex::write(&mut value[36..52], &context.span_id().to_bytes());
    let flags = (context.trace_flags() & TraceFlags::SAMPLED).to_u8();
    crate::core::hex::write(&mut value[53..55], &[flags]);
    if let Ok(mut value) = HeaderValue::from_bytes(&value) {
        // A new span id with every call.
        crate::access::never_indexed(&mut value);
        headers.insert(&TRACEPARENT, value);
    }
    // An empty `tracestate` says nothing: not sent (W3C allows that).
    let state = context.trace_state().header();
    if !state.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&state) {
            headers.insert(&TRACESTATE, value);
        }
    }
}

/// W3C baggage: read, and left in the headers as the caller wrote it.
const BAGGAGE: &str = "baggage";

/// Reads propagation fields from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the B3 and Jaeger fields into request headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        if value.is_empty() {
            return;
        }
        // One exact-size copy; a `String` whose capacity exceeds its length would cost a
        // second allocation when turned into shared bytes.
        if let Ok(value) = HeaderValue::from_str(&value) {
            self.0.insert(name, value);
        }
    }
}

/// Zipkin B3: reads the single `b3` header (`{trace}-{span}[-{sampled}[-{parent}]]`)
/// or the multi-header form, writes the multi-header form (`X-B3-TraceId`, `X-B3-SpanId`,
/// `X-B3-Sampled`).
#[derive(Debug)]
pub(super) struct B3Propagator;

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";
const B3_PARENT: &str = "x-b3-parentspanid";

impl B3Propagator {
    /// A B3 trace id is 16 or 32 hex digits, a span id 16.
    fn ids(trace: &str, span: &str) -> Option<(TraceId, SpanId)> {
        if !matches!(trace.len(), 16 | 32) || span.len() != 16 {
            return None;
        }
        Some((TraceId::from_hex(trace).ok()?, SpanId::from_hex(span).ok()?))
    }

    fn context(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Option<SpanContext> {
        let flags = TraceFlags::default().with_sampled(sampled);
        let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        context.is_valid().then_some(context)
    }

    fn single(value: &str) -> Option<SpanContext> {
        let mut parts = value.split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        let (trace_id, span_id) = Self::ids(trace, span)?;
        let sampled = matches!(parts.next(), None | Some("1") | Some("d"));
        Self::context(trace_id, span_id, sampled)
    }

    fn multi(extractor: &dyn Extractor) -> Option<SpanContext> {
        let (trace_id, span_id) =
            Self::ids(extractor.get(B3_TRACE_ID)?, extractor.get(B3_SPAN_ID)?)?;
        let debug = extractor.get(B3_FLAGS) == Some("1");
        let sampled = debug || matches!(extractor.get(B3_SAMPLED), None | Some("1") | Some("true"));
        Self::context(trace_id, span_id, sampled)
    }
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        injector.set(B3_TRACE_ID, context.trace_id().to_string());
        injector.set(B3_SPAN_ID, context.span_id().to_string());
        let sampled = if context.is_sampled() { "1" } else { "0" };
        injector.set(B3_SAMPLED, sampled.to_string());
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let found = match extractor.get(B3_SINGLE) {
            Some(single) => Self::single(single),
            None => Self::multi(extractor),
        };
        match found {
            Some(context) => cx.with_remote_span_context(context),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 6]> = OnceLock::new();
        let fields = FIELDS.get_or_init(|| {
            [
                B3_SINGLE,
                B3_TRACE_ID,
                B3_SPAN_ID,
                B3_SAMPLED,
                B3_FLAGS,
                B3_PARENT,
            ]
            .map(String::from)
        });
        FieldIter::new(fields)
    }
}

/// Jaeger's `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}` (hex; the
/// parent field is deprecated and written as 0; flag bit 1 = sampled, bit 2 = debug).
#[derive(Debug)]
pub(super) struct JaegerPropagator;

const UBER_TRACE_ID: &str = "uber-trace-id";

impl JaegerPropagator {
    fn parse(value: &str) -> Option<SpanContext> {
        // The value may arrive URL-encoded (`%3A` for `:`).
        let decoded;
        let value = if value.contains('%') {
            decoded = value.replace("%3A", ":").replace("%3a", ":");
            decoded.as_str()
        } else {
            value
        };
        let mut parts = value.split(':');
        let (trace, span, _parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || trace.len() > 32 || span.len() > 16 {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let sampled = flags & 0x01 != 0 || flags & 0x02 != 0;
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::default().with_sampled(sampled),
            true,
            TraceState::default(),
        );
        context.is_valid().then_some(context)
    }
}

impl TextMapPropagator for JaegerPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let flags = u8::from(context.is_sampled());
        injector.set(
            UBER_TRACE_ID,
            format!("{}:{}:0:{flags}", context.trace_id(), context.span_id()),
        );
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extractor.get(UBER_TRACE_ID).and_then(Self::parse) {
            Some(context) => cx.with_remote_span_context(context),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static FIELDS: OnceLock<[String; 1]> = OnceLock::new();
        FieldIter::new(FIELDS.get_or_init(|| [UBER_TRACE_ID.to_string()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::baggage::BaggageExt;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn trace_id(cx: &Context) -> String {
        cx.span().span_context().trace_id().to_string()
    }

    #[test]
    fn reads_jaeger_including_short_and_encoded_ids() {
        let propagators = Propagators::new(&[]);
        let cx = propagators.extract(&headers(&[("uber-trace-id", "abc:def:0:1")]));
        assert_eq!(trace_id(&cx), format!("{:0>32}", "abc"));
        assert!(cx.span().span_context().is_sampled());
        let cx = propagators.extract(&headers(&[("uber-trace-id", "abc%3Adef%3A0%3A0")]));
        assert_eq!(trace_id(&cx), format!("{:0>32}", "abc"));
        assert!(!cx.span().span_context().is_sampled());
        let cx = propagators.extract(&headers(&[("uber-trace-id", "0:0:0:1")]));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn w3c_wins_over_b3_and_jaeger() {
        let propagators = Propagators::new(&[]);
        let w3c = "0af7651916cd43dd8448eb211c80319c";
        let cx = propagators.extract(&headers(&[
            ("traceparent", &format!("00-{w3c}-b7ad6b7169203331-01")),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("uber-trace-id", "abc:def:0:1"),
        ]));
        assert_eq!(trace_id(&cx), w3c);
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let propagators = Propagators::new(&[]);
        let id = "80f198ee56343ba864fe8b2a57d3eff7";
        let cx = propagators.extract(&headers(&[("b3", &format!("{id}-e457b5a2e4d86bd1-1"))]));
        assert_eq!(trace_id(&cx), id);
        let cx = propagators.extract(&headers(&[
            ("x-b3-traceid", id),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(trace_id(&cx), id);
    }

    #[test]
    fn inject_replaces_stale_headers_and_writes_configured_formats() {
        let propagators =
            Propagators::new(&[Propagation::W3c, Propagation::B3, Propagation::Jaeger]);
        let mut map = headers(&[("b3", "stale"), ("uber-trace-id", "stale")]);
        let context = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        propagators.inject(&Context::new().with_remote_span_context(context), &mut map);
        assert_eq!(
            map["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            map["uber-trace-id"],
            "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331:0:1"
        );
        assert_eq!(map["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert!(map.get("b3").is_none());
    }

    /// remora writes W3C itself (for speed): what it writes must be what opentelemetry's
    /// writer would, flags masked to `sampled`, an empty `tracestate` left out.
    #[test]
    fn w3c_is_written_as_opentelemetry_writes_it() {
        let propagators = Propagators::new(&[]);
        let states = [
            TraceState::default(),
            TraceState::from_key_value([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")])
                .unwrap(),
        ];
        for (flags, state) in [(0x01, 0), (0x00, 1), (0xff, 1), (0x02, 0)]
            .map(|(f, s)| (TraceFlags::new(f), states[s].clone()))
        {
            let context = SpanContext::new(
                TraceId::from_hex("00f7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("07ad6b716920333a").unwrap(),
                flags,
                true,
                state,
            );
            let cx = Context::new().with_remote_span_context(context);
            let mut ours = HeaderMap::new();
            propagators.inject(&cx, &mut ours);
            let mut theirs = std::collections::HashMap::<String, String>::new();
            TraceContextPropagator::new().inject_context(&cx, &mut theirs);
            assert_eq!(ours["traceparent"], theirs["traceparent"]);
            match ours.get("tracestate") {
                Some(state) => assert_eq!(state, theirs["tracestate"].as_str()),
                None => assert_eq!(theirs["tracestate"], ""),
            }
        }
        let mut none = HeaderMap::new();
        propagators.inject(&Context::new(), &mut none);
        assert!(none.is_empty());
    }

    /// Found by the `trace_context` fuzz target: rewritten by the opentelemetry writer, a
    /// property holding an encoded `,` became an entry of its own, and one holding a
    /// control character dropped the whole header.
    #[test]
    fn baggage_reaches_the_upstream_as_the_caller_wrote_it() {
        let propagators = Propagators::new(&[Propagation::B3]);
        for baggage in ["user=alice;note=a%2Cadmin=true", "rojo=0e;p%06=1,tier=gold"] {
            let mut map = headers(&[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("baggage", baggage),
            ]);
            let cx = propagators.extract(&map);
            propagators.inject(&cx, &mut map);
            assert_eq!(map["baggage"], baggage);
            assert_eq!(map.get_all("baggage").iter().count(), 1);
            let again = propagators.extract(&map);
            assert_eq!(again.baggage().len(), cx.baggage().len());
        }
    }
}
