//! The access log: one line per answered call, on its own `tracing` target so that a
//! log filter can route or silence it.
//!
//! remora writes the line itself, as `tracing_subscriber`'s formatter would write the
//! same event in the process's format (plain `key=value`, or a JSON object), and queues
//! it for the log writer: the formatter walks twenty fields through the formatting
//! machinery, its styling and its escaping one character at a time, which cost an
//! HTTP/1.1 call three quarters again of its own instructions in the plain format and
//! more in JSON (`bench/RESULTS.md`, "The access log's line"). On a terminal the
//! formatter colors its level and target; access lines stay uncolored. Where the process's
//! logging was not set up by remora (tests capturing lines), the line is an event
//! whose message holds the plain format's fields.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::writer::LogWriter;
use crate::core::short_text::ShortText;

/// The `tracing` target of access log lines.
pub const ACCESS_LOG_TARGET: &str = "remora::access";

/// Where the lines go, once the process's logging says, and whether its filter lets
/// them through (read once: the filter is fixed when it is installed).
static OUTPUT: OnceLock<(Output, bool)> = OnceLock::new();

/// Where access log lines go: set once, when remora installs the process's subscriber.
#[derive(Debug)]
pub enum Output {
    /// Written in the plain format and queued on the log writer.
    Plain(LogWriter),
    /// Written as a JSON object and queued on the log writer.
    Json(LogWriter),
}

/// Sends the process's access log lines to `output` from now on; only the first call
/// counts. Call it once the process's subscriber is installed: whether its filter
/// admits access lines is read here, once, not at every line (a filter's check costs
/// about 70 instructions a line).
pub fn set_output(output: Output) {
    let enabled = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO);
    let _ = OUTPUT.set((output, enabled));
}

/// One answered call, as its line says it.
pub struct Entry<'a> {
    /// The call's trace id (all zeros when unsampled and untraced).
    pub trace_id: [u8; 16],
    /// The request span's id.
    pub span_id: [u8; 8],
    /// The request's `x-request-id`, as the header holds it (bytes that are no UTF-8
    /// are written as `from_utf8_lossy` replaces them): most ids are printable ASCII,
    /// checked once, as the line is written.
    pub request_id: &'a [u8],
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The service that took it (`unknown` when none did).
    pub service: &'a str,
    /// The request method.
    pub method: &'a http::Method,
    /// The request path.
    pub path: &'a str,
    /// The `Host` (or the authority of an absolute-form or HTTP/2 request).
    pub host: Option<&'a str>,
    /// The caller's address (the connection's peer), written once per connection.
    pub client: Option<&'a str>,
    /// Request body bytes read from the caller (by the time the answer ended).
    pub request_bytes: u64,
    /// Response body bytes sent back to the caller.
    pub response_bytes: u64,
    /// Tries made upstream (0 when remora answered without calling: no endpoint, an
    /// open breaker, a rate limit, a fixed route answer...).
    pub attempts: u32,
    /// The answering endpoint's time to the response head, for the try that answered.
    pub upstream_time: Option<Duration>,
    /// Why remora answered itself or failed the call (`x-remora-error`:
    /// `no-healthy-endpoint`, `breaker-open`, `rate-limited`, `timeout`, ...).
    pub reason: Option<&'a str>,
    /// The trigger of the fallback answer served, when one was.
    pub fallback: Option<&'a str>,
    /// The HTTP status sent back.
    pub status: u16,
    /// The gRPC status sent back, for gRPC calls.
    pub grpc_status: Option<u32>,
    /// From arrival to the end of the answer's body.
    pub duration: Duration,
    /// The endpoint that answered, if one did.
    pub upstream: Option<SocketAddr>,
    /// The caller's SPIFFE ID, when it came over mutual TLS (the field is left out of
    /// the line otherwise).
    pub peer_identity: Option<&'a str>,
}

/// Writes `entry`'s line, unless the log filter leaves the access log out.
pub fn log(entry: &Entry<'_>) {
    let output = match OUTPUT.get() {
        Some((_, false)) => return,
        Some((output, true)) => Some(output),
        None if !tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) => return,
        None => None,
    };
    thread_local! {
        /// The line being written, kept for the next one.
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            // Only a subscriber logging access lines while it writes one gets here.
            return;
        };
        line.clear();
        let (mut writer, json) = match output {
            Some(Output::Plain(writer)) => (writer, false),
            Some(Output::Json(writer)) => (writer, true),
            None => {
                Fields::plain(&mut line).entry(entry);
                // Whole `str`s only went in.
                let text = String::from_utf8_lossy(&line);
                tracing::info!(target: ACCESS_LOG_TARGET, "{text}");
                return;
            }
        };
        let now = SystemTime::now();
        if json {
            line.extend_from_slice(b"{\"timestamp\":\"");
            super::timestamp::write(&mut line, now);
            line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"access\"");
            Fields::json(&mut line).entry(entry);
            line.extend_from_slice(b",\"target\":\"remora::access\"}\n");
        } else {
            // As the formatter starts a line: time, level (right-aligned), target.
            super::timestamp::write(&mut line, now);
            line.extend_from_slice(b"  INFO remora::access: ");
            Fields::plain(&mut line).entry(entry);
            line.push(b'\n');
        }
        // The writer queues whole lines and never fails.
        let _ = writer.write(&line);
    });
}

/// A field's name as each format writes it before the value: ` name=` and `,"name":`.
macro_rules! key {
    ($name:literal) => {
        Key {
            plain: concat!(" ", $name, "=").as_bytes(),
            json: concat!(",\"", $name, "\":").as_bytes(),
        }
    };
}

struct Key {
    plain: &'static [u8],
    json: &'static [u8],
}

/// Writes fields as the formatter writes them: ` key=value` (text quoted and escaped
/// as `Debug` does), or `,"key":value` (text as JSON strings); absent fields left out.
///
/// The format is a constant (`JSON`) and the field writers are inlined into
/// [`Fields::entry`], so that each key, and each choice between the formats, is known
/// where it is written: a key is then copied by a store or two rather than by a call
/// to copy bytes of a length found at run time.
struct Fields<'a, const JSON: bool> {
    line: &'a mut Vec<u8>,
}

impl<'a> Fields<'a, false> {
    fn plain(line: &'a mut Vec<u8>) -> Self {
        Self { line }
    }
}

impl<'a> Fields<'a, true> {
    fn json(line: &'a mut Vec<u8>) -> Self {
        Self { line }
    }
}

impl<const JSON: bool> Fields<'_, JSON> {
    /// The entry's fields; in the plain format, after the message `access`.
    fn entry(mut self, entry: &Entry<'_>) {
        if !JSON {
            self.line.extend_from_slice(b"access");
        }
        let mut trace_id = [0; 32];
        crate::core::hex::write(&mut trace_id, &entry.trace_id);
        let mut span_id = [0; 16];
        crate::core::hex::write(&mut span_id, &entry.span_id);
        self.bare(key!("trace_id"), Some(&trace_id));
        self.bare(key!("span_id"), Some(&span_id));
        self.text(key!("request_id"), Some(entry.request_id));
        self.text(key!("direction"), Some(entry.direction.as_bytes()));
        self.text(key!("service"), Some(entry.service.as_bytes()));
        self.bare(key!("method"), Some(entry.method.as_str().as_bytes()));
        self.text(key!("host"), entry.host.map(str::as_bytes));
        self.text(key!("path"), Some(entry.path.as_bytes()));
        self.bare(key!("client"), entry.client.map(str::as_bytes));
        self.number(key!("status"), Some(entry.status.into()));
        self.number(key!("grpc_status"), entry.grpc_status.map(u64::from));
        self.text(key!("reason"), entry.reason.map(str::as_bytes));
        self.text(key!("fallback"), entry.fallback.map(str::as_bytes));
        self.millis(key!("duration_ms"), Some(entry.duration));
        self.address(key!("upstream"), entry.upstream);
        self.millis(key!("upstream_ms"), entry.upstream_time);
        self.number(key!("attempts"), Some(entry.attempts.into()));
        self.number(key!("request_bytes"), Some(entry.request_bytes));
        self.number(key!("response_bytes"), Some(entry.response_bytes));
        self.text(
            key!("peer_identity"),
            entry.peer_identity.map(str::as_bytes),
        );
    }

    #[inline(always)]
    fn key(&mut self, key: Key) {
        self.line
            .extend_from_slice(if JSON { key.json } else { key.plain });
    }

    /// Text that needs no escaping (ids, a method, an address): bare in the plain
    /// format, a string in JSON.
    #[inline(always)]
    fn bare(&mut self, key: Key, value: Option<&[u8]>) {
        let Some(value) = value else { return };
        self.key(key);
        if JSON {
            self.line.push(b'"');
            self.line.extend_from_slice(value);
            self.line.push(b'"');
        } else {
            self.line.extend_from_slice(value);
        }
    }

    /// Text from the request or the answer, quoted and escaped; bytes that are no
    /// UTF-8 are written as `from_utf8_lossy` replaces them.
    #[inline(always)]
    fn text(&mut self, key: Key, value: Option<&[u8]>) {
        let Some(value) = value else { return };
        self.key(key);
        if is_printable_ascii(value) {
            // What both formats write as it is, between quotes.
            self.line.push(b'"');
            self.line.extend_from_slice(value);
            self.line.push(b'"');
        } else {
            self.escaped(value);
        }
    }

    /// Text with something to escape, or no ASCII: rare, so left to the slow writers.
    #[cold]
    fn escaped(&mut self, value: &[u8]) {
        let value = String::from_utf8_lossy(value);
        if JSON {
            json_string(self.line, &value);
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    #[inline(always)]
    fn number(&mut self, key: Key, value: Option<u64>) {
        let Some(value) = value else { return };
        self.key(key);
        self.line
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// An upstream's address. A sidecar's calls mostly go to a few endpoints (inbound,
    /// to its one app), so the last one's text is kept per thread: a repeat costs a
    /// comparison, not a formatting.
    #[inline(always)]
    fn address(&mut self, key: Key, value: Option<SocketAddr>) {
        thread_local! {
            static LAST: RefCell<Option<(SocketAddr, ShortText)>> = const { RefCell::new(None) };
        }
        let Some(value) = value else { return };
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let text = match &*last {
                Some((addr, text)) if *addr == value => text,
                _ => &last.insert((value, ShortText::socket_addr(value))).1,
            };
            self.bare(key, Some(text.as_bytes()));
        });
    }

    /// Milliseconds with three decimals (`12.345`): to the microsecond.
    #[inline(always)]
    fn millis(&mut self, key: Key, value: Option<Duration>) {
        let Some(value) = value else { return };
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.key(key);
        self.line
            .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let mut fraction = *b".000";
        super::timestamp::digits(&mut fraction[1..], micros % 1000);
        self.line.extend_from_slice(&fraction);
    }
}

/// Whether every byte of `text` is printable ASCII other than `"` and `\\` (what
/// `Debug` writes as it is). Eight bytes at a time: the line's texts (request id, path,
/// host, user agent) are checked on every call.
fn is_printable_ascii(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `word` is zero: the classic test, exact for the lowest such byte, and
    // never true when none is.
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut words = text.chunks_exact(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        // Any byte 0x80 or above, below 0x20 (0x20 subtracted borrows into its high
        // bit), or 0x7f, `"` or `\\`.
        if word & HIGHS != 0
            || word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0
            || has_zero(word ^ (ONES * 0x7f))
            || has_zero(word ^ (ONES * u64::from(b'"')))
            || has_zero(word ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// `value` as a JSON string, escaped as `serde_json` escapes it: quotes, backslashes
/// and control characters; the rest as it is.
fn json_string(line: &mut Vec<u8>, value: &str) {
    line.push(b'"');
    let mut start = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        line.extend_from_slice(&value.as_bytes()[start..at]);
        if escape.is_empty() {
            let _ = write!(line, "\\u{byte:04x}");
        } else {
            line.extend_from_slice(escape);
        }
        start = at + 1;
    }
    line.extend_from_slice(&value.as_bytes()[start..]);
    line.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check says what the byte-at-a-time one says: every byte value
    /// at every position of a word, and in the remainder after it.
    #[test]
    fn the_printable_check_agrees_with_a_byte_by_byte_one() {
        let printable = |text: &[u8]| {
            text.iter()
                .all(|&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        };
        for length in [1, 7, 8, 9, 16, 21] {
            for at in 0..length {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; length];
                    text[at] = byte;
                    assert_eq!(
                        is_printable_ascii(&text),
                        printable(&text),
                        "byte {byte:#04x} at {at} of {length}"
                    );
                }
            }
        }
        assert!(is_printable_ascii(b""));
    }

    fn entry() -> Entry<'static> {
        Entry {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            request_id: b"7d0c-\"quoted\"\\",
            direction: "outbound",
            service: "orders",
            method: &http::Method::POST,
            path: "/orders/7",
            host: Some("orders"),
            client: Some("10.0.0.7:50123"),
            request_bytes: 12,
            response_bytes: 3456,
            attempts: 2,
            upstream_time: Some(Duration::from_micros(1_250)),
            reason: None,
            fallback: Some("5xx"),
            status: 200,
            grpc_status: Some(14),
            duration: Duration::from_nanos(12_345_678),
            upstream: Some("[2001:db8::1]:8080".parse().unwrap()),
            peer_identity: Some("spiffe://example.org/ns/shop/sa/checkout\n"),
        }
    }

    #[test]
    fn a_line_reads_as_the_plain_format_writes_the_same_fields() {
        let mut line = Vec::new();
        Fields::plain(&mut line).entry(&entry());
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "access trace_id=abababababababababababababababab span_id=0101010101010101 \
             request_id=\"7d0c-\\\"quoted\\\"\\\\\" direction=\"outbound\" service=\"orders\" \
             method=POST host=\"orders\" path=\"/orders/7\" client=10.0.0.7:50123 status=200 \
             grpc_status=14 fallback=\"5xx\" duration_ms=12.345 upstream=[2001:db8::1]:8080 \
             upstream_ms=1.250 attempts=2 request_bytes=12 response_bytes=3456 \
             peer_identity=\"spiffe://example.org/ns/shop/sa/checkout\\n\""
        );
        // Text is escaped exactly as the formatter's `Debug` would.
        for text in TEXTS {
            let mut line = Vec::new();
            Fields::plain(&mut line).text(key!("k"), Some(text.as_bytes()));
            assert_eq!(String::from_utf8(line).unwrap(), format!(" k={text:?}"));
        }
        // Bytes that are no UTF-8 (a header may hold them), as `from_utf8_lossy` has them.
        let mut line = Vec::new();
        Fields::plain(&mut line).text(key!("k"), Some(b"a\xffb"));
        assert_eq!(String::from_utf8(line).unwrap(), " k=\"a\u{fffd}b\"");
    }

    #[test]
    fn each_line_names_its_own_upstream_when_they_alternate() {
        let addresses: [SocketAddr; 4] = [
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            "10.0.0.1:8080".parse().unwrap(),
            "[2001:db8::1]:8080".parse().unwrap(),
        ];
        for upstream in addresses.into_iter().chain(addresses) {
            let mut line = Vec::new();
            Fields::plain(&mut line).address(key!("upstream"), Some(upstream));
            assert_eq!(
                String::from_utf8(line).unwrap(),
                format!(" upstream={upstream}")
            );
        }
    }

    #[test]
    fn a_json_line_holds_each_field_as_a_key() {
        let mut line = b"{\"message\":\"access\"".to_vec();
        Fields::json(&mut line).entry(&entry());
        line.push(b'}');
        let object: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let expected = serde_json::json!({
            "message": "access",
            "trace_id": "abababababababababababababababab",
            "span_id": "0101010101010101",
            "request_id": "7d0c-\"quoted\"\\",
            "direction": "outbound",
            "service": "orders",
            "method": "POST",
            "host": "orders",
            "path": "/orders/7",
            "client": "10.0.0.7:50123",
            "status": 200,
            "grpc_status": 14,
            "fallback": "5xx",
            "duration_ms": 12.345,
            "upstream": "[2001:db8::1]:8080",
            "upstream_ms": 1.25,
            "attempts": 2,
            "request_bytes": 12,
            "response_bytes": 3456,
            "peer_identity": "spiffe://example.org/ns/shop/sa/checkout\n",
        });
        assert_eq!(object, expected);
        // Strings are escaped exactly as serde_json escapes them.
        for text in TEXTS {
            let mut line = Vec::new();
            Fields::json(&mut line).text(key!("k"), Some(text.as_bytes()));
            assert_eq!(
                String::from_utf8(line).unwrap(),
                format!(",\"k\":{}", serde_json::to_string(text).unwrap())
            );
        }
    }

    const TEXTS: [&str; 7] = [
        "7d0c-\"quoted\"\\",
        "tab\there\r\n",
        "é and ✓",
        "\u{7f}\u{1b}[31m",
        "\u{0}\u{8}\u{c}\u{1f}",
        "",
        "plain",
    ];
}
