//! Trace context headers (W3C traceparent/tracestate, baggage, B3 single and multi,
//! Jaeger uber-trace-id), one `name: value` per line. Never panics; what is read, once
//! written back the way the upstream gets it, reads the same, through each written
//! format alone too; no header of the caller's survives the rewrite.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use remora::fuzzing;

/// Headers no format writes: the rewrite must remove the caller's.
const READ_ONLY: [&str; 3] = ["b3", "x-b3-flags", "x-b3-parentspanid"];

fn subset(headers: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for value in headers.get_all(*name) {
            out.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.clone(),
            );
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let read = fuzzing::trace_extract(&headers);
    let written = fuzzing::trace_reinject(&headers);
    for name in READ_ONLY {
        assert!(
            written.get(name).is_none(),
            "{name} survived the rewrite: {written:?}"
        );
    }
    let reread = fuzzing::trace_extract(&written);
    assert_eq!(read, reread, "written back as {written:?}");
    let Some((trace, span, sampled, _)) = &read.span else {
        return;
    };
    let formats: [&[&str]; 3] = [
        &["traceparent", "tracestate"],
        &["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"],
        &["uber-trace-id"],
    ];
    for names in formats {
        let alone = fuzzing::trace_extract(&subset(&written, names));
        let (t, s, sampled_alone, _) = alone
            .span
            .unwrap_or_else(|| panic!("{names:?} unread in {written:?}"));
        assert_eq!(
            (&t, &s, &sampled_alone),
            (trace, span, sampled),
            "{names:?} of {written:?}"
        );
    }
});
