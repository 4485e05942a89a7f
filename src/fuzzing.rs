//! Entry points of the fuzz targets (`fuzz/`, a harness built apart from the crate): each
//! runs the code remora runs on input it does not control, without a file or a socket
//! of its own. Not an API: hidden from the docs, no stability promised.
//!
//! Floor 5: the HTTP entry point serves a connection the way a listener does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::HeaderMap;
use hyper_util::rt::TokioIo;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::TraceContextExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::build::metrics::Metrics;
use crate::build::state::State;
use crate::config::{Config, ConfigError};
use crate::core::executor::ConnectionTask;
use crate::core::http1::{ServerConnection, ServerLimits};
use crate::discovery::Instance;
use crate::serve::proxy::{Entry, ProxyService};
use crate::serve::shared::Shared;
use crate::trace::{Propagation, Tracing, TracingConfig, TracingMetrics};

pub use crate::policy::retry::ServerDelay;

/// The variables `${VAR}` finds in [`config`]; any other is unset.
pub const CONFIG_ENV: [(&str, &str); 2] = [("HOST", "127.0.0.1"), ("PORT", "8080")];

/// Loads configuration text as `remora validate` does (substitution from
/// [`CONFIG_ENV`], decoding, the document's checks, the build checks), named
/// `fuzz.yaml` in errors.
pub fn config(text: &str) -> Result<Config, ConfigError> {
    let env = |name: &str| {
        CONFIG_ENV
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    };
    crate::build::validate::parse_with_env("fuzz.yaml", text, &env)
}

/// The configuration the HTTP entry point serves: a fixed answer on `/reply` of the
/// service `orders` (its own port, or the shared outbound listener for host `orders`);
/// every other request is forwarded to an endpoint that refuses connections (port 1 of
/// the loopback), and so is every request of the inbound listener.
pub const HTTP_CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:1 }
outbound: { listen: 127.0.0.1:0 }
limits: { header_read_timeout: 1s, max_header_bytes: 8192 }
services:
  orders:
    listen: 127.0.0.1:0
    endpoints: [127.0.0.1:1]
    routes:
      - match: { path_prefix: /reply }
        respond: { status: 200, body: ok }
";

/// Which listener an HTTP connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The inbound listener (toward the local app).
    Inbound,
    /// The shared outbound listener (routed by Host and path).
    Outbound,
    /// The dedicated port of the service `orders`.
    Service,
}

/// A sidecar's state built from [`HTTP_CONFIG`], and the runtime its connections run on.
struct HttpHarness {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

fn http_harness() -> &'static HttpHarness {
    static HARNESS: OnceLock<HttpHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = config(HTTP_CONFIG).expect("the harness config is valid");
        let tracing = TracingConfig {
            access_log: false,
            ..TracingConfig::default()
        };
        let shared = runtime.block_on(async {
            let metrics = Arc::new(Metrics::new());
            let state = State::build(config, &metrics, None)
                .await
                .expect("the harness state builds");
            Arc::new(Shared {
                state: ArcSwap::from_pointee(state),
                metrics,
                draining: AtomicBool::new(false),
                tracing: Tracing::new(&tracing, TracingMetrics::default())
                    .expect("tracing without export"),
                tunnels: Default::default(),
            })
        });
        HttpHarness { runtime, shared }
    })
}

/// Serves `input` as the bytes a client sent on one connection to `listener` (then
/// closed its side), through the server settings and the proxy service every listener
/// uses; returns what the sidecar wrote back. Panics when the exchange does not end
/// within 5 seconds.
pub fn http_exchange(listener: Listener, input: &[u8]) -> Vec<u8> {
    let harness = http_harness();
    let entry = match listener {
        Listener::Inbound => Entry::Inbound,
        Listener::Outbound => Entry::SharedOutbound,
        Listener::Service => Entry::Service(Arc::from("orders")),
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let service = ProxyService::new(harness.shared.clone(), entry, peer, None);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let state = harness.shared.state.load_full();
    // As the listeners choose: HTTP/2 (its preface) through hyper, HTTP/1.1 through
    // remora's own server. A client's end of input does not abort the answers to what
    // it sent: a fuzz input is the whole of what a client writes before it waits for
    // answers, and a closed side is how the harness says so.
    let http2 = input.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let builder = state.server.clone();
    let limits = ServerLimits {
        header_read_timeout: state.config.limits.header_read_timeout,
        max_head_bytes: state.config.limits.max_header_bytes.max(8192),
        half_close: true,
    };
    let exchange = async move {
        let connection = async move {
            if http2 {
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(server), service);
                // As the listeners run it: HTTP/2 streams in the connection's own task.
                let _ = ConnectionTask::new(connection).await;
            } else {
                let _ = ServerConnection::new(server, service, limits).await;
            }
        };
        let (mut reader, mut writer) = tokio::io::split(client);
        let talk = async {
            // The server may stop reading (an error, a close): what it left unread is
            // of no interest.
            let _ = writer.write_all(input).await;
            let _ = writer.shutdown().await;
            let mut output = Vec::new();
            let _ = reader.read_to_end(&mut output).await;
            output
        };
        let (_, output) = tokio::join!(connection, talk);
        output
    };
    harness
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), exchange).await })
        .expect("the sidecar ends a closed connection within 5 s")
}

/// Feeds `input` to remora's HTTP/1.1 answer parser as an upstream connection's reads
/// would bring it, then, when the head says the body is chunked, the rest to the chunked
/// decoder the same way. The first byte picks the reads' size (its low 7 bits: 1 to 127
/// bytes, or all at once for 127) and whether the request was a `HEAD` (its high bit).
///
/// Panics, besides on a panic of the parser, when: the outcome depends on where the
/// reads split the input; a head's framing is not what its status and its
/// `Content-Length` and `Transfer-Encoding` headers say (RFC 9112 6.3); a connection is
/// kept after a body delimited by the close or an answer saying `close`; the decoded
/// chunk data is longer than the body it came from.
pub fn http1_answer(input: &[u8]) {
    use crate::core::http1::{decode_chunked_for_fuzzing, parse_response};

    let Some((&pick, input)) = input.split_first() else {
        return;
    };
    let head_request = pick & 0x80 != 0;
    let step = match pick & 0x7f {
        0x7f => input.len().max(1),
        size => usize::from(size) + 1,
    };
    let mut whole = BytesMut::from(input);
    let at_once = parse_response(&mut whole, head_request);
    // As a connection reads: the parser runs after every read, on all that is unparsed.
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let in_reads = loop {
        if fed == input.len() {
            break Ok(None);
        }
        let end = input.len().min(fed + step);
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        match parse_response(&mut buf, head_request) {
            Ok(None) => {}
            parsed => break parsed,
        }
    };
    buf.extend_from_slice(&input[fed..]);
    let parsed = match (at_once, in_reads) {
        (Err(once), Err(read)) => {
            assert_eq!(
                once.to_string(),
                read.to_string(),
                "the error depends on reads"
            );
            return;
        }
        (Ok(None), Ok(None)) => {
            assert_eq!(whole, buf, "what is left depends on reads");
            return;
        }
        (Ok(Some(once)), Ok(Some(read))) => {
            assert_eq!(once.response.status(), read.response.status());
            assert_eq!(once.response.version(), read.response.version());
            assert_eq!(once.response.headers(), read.response.headers());
            assert_eq!(once.framing, read.framing);
            assert_eq!(once.keep_alive, read.keep_alive);
            assert_eq!(whole, buf, "the body's first bytes depend on reads");
            read
        }
        (once, read) => panic!("parsed at once: {once:?}; in reads of {step}: {read:?}"),
    };
    check_answer_framing(&parsed, head_request);
    if parsed.framing != crate::core::http1::Framing::Chunked {
        return;
    }
    let in_reads = decode_chunked_for_fuzzing(&buf, step);
    let at_once = decode_chunked_for_fuzzing(&buf, buf.len());
    match (at_once, in_reads) {
        (Ok(once), Ok(read)) => {
            assert_eq!(once, read, "the chunked body depends on reads");
            assert!(read.0.len() <= buf.len(), "more data than body bytes");
        }
        (Err(once), Err(read)) => {
            assert_eq!(
                once.to_string(),
                read.to_string(),
                "the error depends on reads"
            );
        }
        (once, read) => panic!("decoded at once: {once:?}; in reads of {step}: {read:?}"),
    }
}

/// Asserts that an answer's framing and keep-alive follow its status and headers, read
/// here apart from the parser's own reading.
fn check_answer_framing(parsed: &crate::core::http1::ParsedHead, head_request: bool) {
    use crate::core::http1::Framing;
    use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};

    let status = parsed.response.status();
    let headers = parsed.response.headers();
    let bodiless = head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let last_coding = headers.get_all(TRANSFER_ENCODING).iter().next_back();
    let chunked_last = last_coding.is_some_and(|value| {
        let last = value.as_bytes().rsplit(|&byte| byte == b',').next();
        last.is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    let lengths: Vec<Option<u64>> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(|element| {
            let digits = element.trim_ascii();
            let decimal = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
            decimal
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
        })
        .collect();
    let expected = if bodiless {
        Framing::Empty
    } else if last_coding.is_some() {
        if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(&Some(length)) = lengths.first() {
        assert!(
            lengths.iter().all(|other| *other == Some(length)),
            "conflicting or bad lengths {lengths:?} parsed as {:?}",
            parsed.framing
        );
        Framing::Length(length)
    } else {
        assert!(lengths.is_empty(), "a bad length {lengths:?} was accepted");
        Framing::UntilClose
    };
    assert_eq!(parsed.framing, expected, "{headers:?}");
    if parsed.keep_alive {
        assert!(
            parsed.framing != Framing::UntilClose,
            "kept after a close-delimited body"
        );
        let close = headers.get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&byte| byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
        assert!(!close, "kept after `connection: close`");
    }
}

/// What the propagators read from request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// Trace id and span id (hex), whether sampled, and the `tracestate` as written
    /// back; `None` when no valid span context was found.
    pub span: Option<(String, String, bool, String)>,
    /// The baggage entries (name, value and its properties as written back).
    pub baggage: BTreeMap<String, String>,
}

fn propagators() -> &'static crate::trace::Propagators {
    static PROPAGATORS: OnceLock<crate::trace::Propagators> = OnceLock::new();
    PROPAGATORS.get_or_init(|| {
        crate::trace::Propagators::new(&[Propagation::W3c, Propagation::B3, Propagation::Jaeger])
    })
}

/// Reads every trace format from `headers`, as the request path does.
pub fn trace_extract(headers: &HeaderMap) -> TraceContext {
    let cx = propagators().extract(headers);
    let span = cx.span();
    let context = span.span_context();
    let span = context.is_valid().then(|| {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
            context.is_sampled(),
            context.trace_state().header(),
        )
    });
    let baggage = cx
        .baggage()
        .iter()
        .map(|(name, (value, metadata))| {
            (name.to_string(), format!("{value};{}", metadata.as_str()))
        })
        .collect();
    TraceContext { span, baggage }
}

/// Reads every trace format from `headers`, then writes that context back as the
/// upstream request gets it (W3C, baggage, B3 multi and Jaeger), replacing the trace
/// headers of `headers`.
pub fn trace_reinject(headers: &HeaderMap) -> HeaderMap {
    let cx = propagators().extract(headers);
    let mut written = headers.clone();
    propagators().inject(&cx, &mut written);
    written
}

/// What a failed attempt's answer asks of a retry (`grpc-retry-pushback-ms`,
/// `Retry-After`), read as the retry layer reads it.
pub fn server_delay(headers: &HeaderMap) -> ServerDelay {
    crate::policy::retry::asked(headers)
}

/// An etcd value (also a discovery file's record) as an instance.
pub fn etcd_value(value: &[u8]) -> Result<Instance, String> {
    Instance::from_json(value).map_err(|e| e.to_string())
}

/// A ZooKeeper znode's value in Curator's ServiceInstance JSON: `Ok(None)` for an
/// instance that takes no traffic.
pub fn curator_instance(data: &[u8]) -> Result<Option<Instance>, String> {
    crate::discovery::curator_from_json("fuzzed", data)
}

/// `instance` as remora registers it in Curator's layout (Spring Cloud's payload).
pub fn curator_registration(instance: &Instance) -> String {
    crate::discovery::curator_to_json(
        "orders",
        instance,
        crate::discovery::ZookeeperPayload::default(),
        std::time::SystemTime::UNIX_EPOCH,
    )
}

/// A Consul health answer's passing instances.
pub fn consul_health(body: &[u8]) -> Result<Vec<Instance>, String> {
    crate::discovery::consul_health(body)
}

/// A Nacos instance list: the instances that take traffic, and the malformed ones.
pub fn nacos_list(body: &[u8]) -> Result<(Vec<Instance>, BTreeMap<String, String>), String> {
    crate::discovery::nacos_list(body)
}

/// A discovery file's instances of `service` (JSON when `is_json`, else YAML).
pub fn discovery_file(text: &str, is_json: bool, service: &str) -> Result<Vec<Instance>, String> {
    crate::discovery::file_instances(text, is_json, service)
}

/// What a Eureka watch of `app` sees after a full fetch answered `full`, then a delta
/// fetch answered `delta`.
#[derive(Debug)]
pub struct EurekaRefresh {
    /// The instances of `app` after the full fetch, and its malformed entries.
    pub full: (Vec<Instance>, BTreeMap<String, String>),
    /// The same after the delta, when the delta was readable.
    pub delta: Option<(Vec<Instance>, BTreeMap<String, String>)>,
    /// Whether the copy's hash code matched the delta's after applying it.
    pub in_sync: bool,
}

/// A Eureka full fetch and a delta applied to it, as the watch does.
pub fn eureka_refresh(full: &[u8], delta: &[u8], app: &str) -> Result<EurekaRefresh, String> {
    use crate::discovery::eureka_apps::{parse, Apps};
    let mut apps = Apps::full(parse(full)?);
    let app = app.to_ascii_uppercase();
    let first = apps.snapshot(&app);
    let _ = apps.unreadable(&app);
    let Ok(delta) = parse(delta) else {
        return Ok(EurekaRefresh {
            full: first,
            delta: None,
            in_sync: false,
        });
    };
    let expected = delta.hashcode.clone();
    apps.apply(delta);
    Ok(EurekaRefresh {
        full: first,
        delta: Some(apps.snapshot(&app)),
        in_sync: apps.hashcode() == expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(output: &[u8]) -> &str {
        std::str::from_utf8(&output[..12.min(output.len())]).unwrap_or("")
    }

    #[test]
    fn the_http_harness_answers_replies_and_refuses_both_framings() {
        let ok = http_exchange(
            Listener::Outbound,
            b"GET /reply HTTP/1.1\r\nHost: orders\r\n\r\n",
        );
        assert_eq!(
            status(&ok),
            "HTTP/1.1 200",
            "{}",
            String::from_utf8_lossy(&ok)
        );
        let refused = http_exchange(
            Listener::Service,
            b"POST /reply HTTP/1.1\r\nHost: orders\r\nContent-Length: 3\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(status(&refused), "HTTP/1.1 400");
        let forwarded = http_exchange(Listener::Inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status(&forwarded), "HTTP/1.1 502");
    }

    #[test]
    fn the_http1_answer_entry_point_reads_answers_in_any_reads() {
        let answers: [&[u8]; 4] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            b"HTTP/1.0 200 OK\r\ncontent-length: 5, 5\r\n\r\nhel",
        ];
        for answer in answers {
            // Reads of 1, 2 and 8 bytes, all at once; as the answer to GET and to HEAD.
            for pick in [0x00, 0x01, 0x07, 0x7f, 0x80, 0xff] {
                http1_answer(&[&[pick][..], answer].concat());
            }
        }
    }

    #[test]
    fn the_config_entry_point_substitutes_its_variables() {
        let text = "admin: { listen: \"${HOST}:${PORT}\" }\n\
                    inbound: { listen: 127.0.0.1:0, app: 127.0.0.1:1 }\n";
        let config = config(text).unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8080");
    }
}
