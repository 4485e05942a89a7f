//! The access log line says what a user asks of a call: who called (client address,
//! Host), what went up and came back (body bytes as they streamed), how many tries it took and the
//! answering endpoint's time, and, when remora answered itself, why (a rate limit, a
//! fallback and its trigger).

use crate::support::log_lines::LogLines;
use crate::support::*;

/// The one access log line of a call to `path`.
fn line_of(log: &LogLines, path: &str) -> String {
    let lines = log.access(path);
    assert_eq!(lines.len(), 1, "{}", log.text());
    lines[0].clone()
}

fn assert_has(line: &str, fields: &[&str]) {
    for field in fields {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[tokio::test]
async fn a_retried_call_logs_client_host_bytes_attempts_and_upstream_time() {
    let log = LogLines::default();
    let _capture = log.capture();
    let (upstream, _) = scripted(|n| if n == 0 { 503 } else { 200 }).await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  retries:\n    twice: {{ attempts: 2, retry_on: [5xx], retry_non_idempotent: true, backoff: {{ base: 1ms, max: 1ms }} }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    retry: twice\n"
    ))
    .await;
    let addr = proxy.addrs().service("svc").unwrap();
    let request = http::Request::post(format!("http://{addr}/orders"))
        .header("host", "shop.example")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"hello",
        )))
        .unwrap();
    let response = http1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let line = line_of(&log, "/orders");
    assert_has(
        &line,
        &[
            "host=\"shop.example\"",
            "client=127.0.0.1:",
            "attempts=2",
            "request_bytes=5",
            "response_bytes=",
            "upstream_ms=",
            &format!("upstream={upstream}"),
            "status=200",
        ],
    );
    assert!(!line.contains("reason="), "{line}");
}

#[tokio::test]
async fn a_rate_limited_call_logs_the_reason_and_no_try() {
    let log = LogLines::default();
    let _capture = log.capture();
    let (upstream, _) = recording("up").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  rate_limits:\n    one: {{ rate: 1/m, burst: 1 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    rate_limit: one\n"
    ))
    .await;
    let url = format!("http://{}/limited", proxy.addrs().service("svc").unwrap());
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(get(&url).await.0, 429);
    let lines = log.access("/limited");
    assert_eq!(lines.len(), 2, "{}", log.text());
    assert_has(
        &lines[1],
        &["status=429", "reason=\"rate-limited\"", "attempts=0"],
    );
    assert!(!lines[1].contains("upstream="), "{}", lines[1]);
}

#[tokio::test]
async fn a_fallback_answer_logs_its_trigger() {
    let log = LogLines::default();
    let _capture = log.capture();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         policies:\n  fallbacks:\n    soft:\n      on: [connect_failure]\n      respond: {{ status: 200, body: degraded }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{closed}]\n    fallback: soft\n"
    ))
    .await;
    let url = format!("http://{}/soft", proxy.addrs().service("svc").unwrap());
    let (status, _, body) = get(&url).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "degraded"));
    let line = line_of(&log, "/soft");
    assert_has(
        &line,
        &["status=200", "fallback=\"connect_failure\"", "attempts=1"],
    );
}

/// The log filter leaves the access log out when it says so (read once, when the
/// process installs its subscriber, not at every line): the call is served, logged
/// nowhere.
#[tokio::test]
async fn a_filter_that_turns_the_access_target_off_leaves_no_line() {
    let (upstream, _) = scripted(|_| 200).await;
    let filter = "info,remora::access=off";
    let (process, _, port, _dir) = sidecar_process_logging(upstream, "auto", "", filter).await;
    for _ in 0..3 {
        assert_eq!(get(&format!("http://127.0.0.1:{port}/quiet")).await.0, 200);
    }
    // Lines reach the log within milliseconds (the test below waits for one).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log = process.log();
    assert!(
        log.contains(" INFO remora::serve"),
        "the process logs: {log}"
    );
    assert!(!log.contains("remora::access"), "{log}");
}

/// The access line of the binary's own subscriber and writer (the tests above capture
/// lines in-process): remora writes the plain format's fields itself, and in the JSON
/// format each field is a key of the line's object.
#[tokio::test]
async fn the_binary_writes_the_line_in_the_plain_format_and_as_a_json_object() {
    let (upstream, _) = scripted(|_| 200).await;
    for format in ["plain", "json"] {
        let settings = format!("log: {{ format: {format} }}");
        let (process, _, port, _dir) = sidecar_process_with(upstream, "auto", &settings).await;
        assert_eq!(get(&format!("http://127.0.0.1:{port}/logged")).await.0, 200);
        let mut line = None;
        for _ in 0..100 {
            line = process
                .log()
                .lines()
                .find(|line| line.contains("remora::access"))
                .map(str::to_owned);
            if line.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let line = line.unwrap_or_else(|| panic!("no access line: {}", process.log()));
        if format == "plain" {
            // Written by remora, not by the subscriber's formatter: laid out as the
            // formatter lays out the process's other lines (time, level, target).
            let log = process.log();
            let other = log
                .lines()
                .find(|l| l.contains(" INFO remora::serve"))
                .unwrap();
            let digits =
                |l: &str| -> Vec<bool> { l.bytes().take(27).map(|b| b.is_ascii_digit()).collect() };
            assert_eq!(digits(&line), digits(other), "{line}\n{other}");
            assert!(
                line[26..].starts_with("Z  INFO remora::access: access trace_id="),
                "{line}"
            );
            assert_has(
                &line,
                &[
                    " direction=\"outbound\" service=\"svc\" method=GET ",
                    &format!(" host=\"127.0.0.1:{port}\" path=\"/logged\" client=127.0.0.1:"),
                    " status=200 duration_ms=",
                    &format!(" upstream={upstream} upstream_ms="),
                    " attempts=1 request_bytes=0 response_bytes=",
                ],
            );
            // Milliseconds to the microsecond.
            let duration = line.split(" duration_ms=").nth(1).unwrap();
            let duration = duration.split(' ').next().unwrap();
            let (whole, fraction) = duration.split_once('.').unwrap();
            assert!(
                whole.parse::<u64>().is_ok() && fraction.len() == 3,
                "{line}"
            );
        } else {
            // Laid out as the formatter lays out the process's other lines.
            let log = process.log();
            let other = log.lines().find(|l| l.contains("remora::serve")).unwrap();
            assert_eq!(line[..14], other[..14], "{line}\n{other}");
            assert!(line.ends_with(r#","target":"remora::access"}"#), "{line}");
            let object: serde_json::Value = serde_json::from_str(&line).unwrap();
            let other: serde_json::Value = serde_json::from_str(other).unwrap();
            let shape = |v: &serde_json::Value| -> Vec<bool> {
                v["timestamp"]
                    .as_str()
                    .unwrap()
                    .bytes()
                    .map(|b| b.is_ascii_digit())
                    .collect()
            };
            assert_eq!(shape(&object), shape(&other), "{line}");
            assert_eq!(object["level"], "INFO", "{line}");
            assert_eq!(object["target"], "remora::access", "{line}");
            assert_eq!(object["message"], "access", "{line}");
            assert_eq!(object["status"], 200, "{line}");
            assert_eq!(object["path"], "/logged", "{line}");
            assert_eq!(object["upstream"], upstream.to_string(), "{line}");
            assert_eq!(object["attempts"], 1, "{line}");
            assert_eq!(object["trace_id"].as_str().unwrap().len(), 32, "{line}");
            assert!(object["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        }
    }
}
