//! The codec on its own: answer heads, body framing, chunked bodies, request heads.

use bytes::BytesMut;
use http::{Request, StatusCode, Version};

use super::head::{encode_request, parse_response, BodyFraming, Framing};
use super::Http1Error;
use http_body_util::{Empty, Full};

fn parse(text: &[u8]) -> Result<Option<super::ParsedHead>, Http1Error> {
    parse_response(&mut BytesMut::from(text), false)
}

fn framing(text: &[u8]) -> (Framing, bool) {
    let parsed = parse(text).unwrap().expect("a whole head");
    (parsed.framing, parsed.keep_alive)
}

#[test]
fn a_head_is_parsed_and_taken_off_the_buffer() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 201 Created\r\nx-a: 1\r\nX-A: 2\r\ncontent-length: 3\r\n\r\nabc"[..],
    );
    let parsed = parse_response(&mut buf, false).unwrap().unwrap();
    assert_eq!(parsed.response.status(), StatusCode::CREATED);
    assert_eq!(parsed.response.version(), Version::HTTP_11);
    let values: Vec<_> = parsed.response.headers().get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(parsed.framing, Framing::Length(3));
    assert!(parsed.keep_alive);
    assert_eq!(&buf[..], b"abc");
}

#[test]
fn an_incomplete_head_waits_for_more() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(parse_response(&mut buf, false).unwrap().is_none());
    assert_eq!(buf.len(), 27, "nothing taken");
}

#[test]
fn interim_answers_are_skipped() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
    );
    let parsed = parse_response(&mut buf, false).unwrap().unwrap();
    assert_eq!(parsed.response.status(), StatusCode::OK);
    assert!(buf.is_empty());
}

#[test]
fn an_unasked_upgrade_is_an_error() {
    let error = parse(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n").unwrap_err();
    assert!(matches!(error, Http1Error::UnaskedUpgrade), "{error}");
}

#[test]
fn bodiless_answers_have_no_body_whatever_they_say() {
    for status in ["204 No Content", "304 Not Modified"] {
        let head = format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(framing(head.as_bytes()), (Framing::Empty, true), "{status}");
    }
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..]);
    let parsed = parse_response(&mut buf, true).unwrap().unwrap();
    assert_eq!(parsed.framing, Framing::Empty, "the answer to HEAD");
}

#[test]
fn framing_follows_rfc_9112() {
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        (Framing::Chunked, true)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
        (Framing::Chunked, true)
    );
    // A coding other than chunked last: the body runs to the close.
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
        (Framing::UntilClose, false)
    );
    // Both framings: the coding wins, and the connection is not used again.
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"),
        (Framing::Chunked, false)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n"),
        (Framing::Length(5), true)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\n\r\n"),
        (Framing::UntilClose, false)
    );
}

#[test]
fn bad_or_conflicting_lengths_are_errors() {
    for head in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
    ] {
        let error = parse(head).unwrap_err();
        assert!(
            matches!(error, Http1Error::BadContentLength),
            "{:?}: {error}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    let cases: [(&[u8], bool); 5] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: foo, Close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
    ];
    for (head, keep_alive) in cases {
        assert_eq!(
            framing(head).1,
            keep_alive,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn malformed_heads_and_oversized_heads_are_errors() {
    assert!(matches!(
        parse(b"HTTP/1.1 2000 OK\r\n\r\n"),
        Err(Http1Error::Parse(_))
    ));
    assert!(matches!(
        parse(b"SSH-2.0-OpenSSH\r\n\r\n"),
        Err(Http1Error::Parse(_))
    ));
    assert!(matches!(
        parse(b"HTTP/1.1 200 OK\r\nfolded: a\r\n b\r\n\r\n"),
        Err(Http1Error::Parse(_))
    ));
    let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
    big.resize(super::MAX_HEAD_BYTES + 10, b'a');
    assert!(matches!(parse(&big), Err(Http1Error::HeadTooLarge)));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for index in 0..=super::MAX_HEADERS {
        many.extend_from_slice(format!("x-{index}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(parse(&many), Err(Http1Error::Parse(_))));
}

/// Decodes `input` given in pieces of `step` bytes; the data, the trailers and whether
/// it ended.
fn decode_chunked(
    input: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Option<http::HeaderMap>, bool), Http1Error> {
    super::decode_chunked_for_fuzzing(input, step)
}

#[test]
fn chunked_bodies_decode_whatever_the_read_boundaries() {
    let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n";
    for step in [1, 2, 3, 7, input.len()] {
        let (data, trailers, ended) = decode_chunked(input, step).unwrap();
        assert_eq!(data, b"hello world0123456789", "step {step}");
        assert!(trailers.is_none());
        assert!(ended);
    }
}

#[test]
fn chunked_trailers_are_read() {
    let input = b"4\r\ndata\r\n0\r\nx-checksum: abc123\r\n\r\n";
    for step in [1, 5, input.len()] {
        let (data, trailers, ended) = decode_chunked(input, step).unwrap();
        assert_eq!(data, b"data");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc123");
        assert!(ended);
    }
}

#[test]
fn a_chunked_body_without_its_last_chunk_has_not_ended() {
    let (data, _, ended) = decode_chunked(b"4\r\ndata\r\n", 1).unwrap();
    assert_eq!(data, b"data");
    assert!(!ended);
}

#[test]
fn broken_chunk_framing_is_an_error() {
    for input in [
        &b"x\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"11111111111111111\r\n",
        b"5 junk\r\nhello\r\n",
        b"-5\r\n",
    ] {
        let result = decode_chunked(input, input.len());
        assert!(
            matches!(result, Err(Http1Error::Chunked(_))),
            "{:?}: {result:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long = vec![b'1'; 5000];
    assert!(matches!(
        decode_chunked(&long, 5000),
        Err(Http1Error::Chunked(_))
    ));
    // The largest size that fits is taken (and then waits for its data).
    assert!(decode_chunked(b"ffffffffffffffff\r\n", 100).is_ok());
}

fn encoded<B: http_body::Body>(request: Request<B>) -> (String, BodyFraming) {
    let (mut parts, body) = request.into_parts();
    let mut out = BytesMut::new();
    let framing = encode_request(&mut parts, &body, &mut out).unwrap();
    (String::from_utf8(out.to_vec()).unwrap(), framing)
}

#[test]
fn a_request_head_is_written_in_origin_form_with_its_headers() {
    let request = Request::get("/a/b?c=d")
        .header("host", "svc")
        .header("x-many", "1")
        .header("x-many", "2")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let (head, framing) = encoded(request);
    assert_eq!(
        head,
        "GET /a/b?c=d HTTP/1.1\r\nhost: svc\r\nx-many: 1\r\nx-many: 2\r\n\r\n"
    );
    assert_eq!(framing, BodyFraming::Empty);
}

#[test]
fn a_request_body_is_framed_by_its_length_or_in_chunks() {
    let known = Request::post("/")
        .body(Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    let (head, framing) = encoded(known);
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    assert_eq!(framing, BodyFraming::Length(5));

    let declared = Request::post("/")
        .header("content-length", "5")
        .body(Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    assert_eq!(encoded(declared).1, BodyFraming::Length(5));

    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> =
        vec![Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x")))];
    let unknown = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let (head, framing) = encoded(Request::get("/").body(unknown).unwrap());
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(framing, BodyFraming::Chunked { trailers: true });
}
