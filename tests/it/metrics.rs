//! `/metrics` is valid exposition text, and its counters move as requests pass.

use crate::support::*;

/// Checks every line of an OpenMetrics text exposition; returns the sample count.
fn check_exposition(text: &str) -> usize {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let mut samples = 0;
    for line in text.lines() {
        if line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
        {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "bad value in {line}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line}"
            );
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (key, value) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line}"));
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line}"
                );
                assert!(!value.trim_end_matches('"').contains('\n'));
            }
        }
        samples += 1;
    }
    samples
}

#[tokio::test]
async fn metrics_are_valid_text_and_move_with_traffic() {
    let (upstream, _log) = scripted(|n| if n % 2 == 0 { 200 } else { 503 }).await;
    let proxy = with_policies(
        "  retries:\n    r: { attempts: 2, retry_on: [503], backoff: { base: 1ms, max: 1ms } }",
        "    retry: r",
        &[upstream],
    )
    .await;
    let admin = proxy.addrs().admin.unwrap();
    let (status, headers, before) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    check_exposition(&before);

    let url = format!("http://{}/", proxy.addrs().service("svc").unwrap());
    for _ in 0..5 {
        assert_eq!(get(&url).await.0, 200);
    }
    let (_, _, after) = get(&format!("http://{admin}/metrics")).await;
    assert!(check_exposition(&after) > 20);
    let requests = metric(
        admin,
        "remora_requests_total{direction=\"outbound\",service=\"svc\",route=\"default\",status=\"200\",grpc_code=\"\",classification=\"success\"}",
    )
    .await;
    assert_eq!(requests, 5.0);
    // Attempts alternate 200 / 503: the first call passes, each later one retries once.
    assert_eq!(
        metric(admin, "remora_retries_total{service=\"svc\"}").await,
        4.0
    );
    let latency = metric(
        admin,
        "remora_request_duration_seconds_count{direction=\"outbound\",service=\"svc\"}",
    )
    .await;
    assert_eq!(latency, 5.0);
}

/// `remora_requests_total` of one label combination (outbound); its classification is
/// the one the combination must have (a gRPC status other than OK fails whatever the
/// HTTP status; otherwise 5xx fails).
fn requests(service: &str, route: &str, status: u16, grpc_code: &str) -> String {
    let failed = match grpc_code {
        "" => status >= 500,
        code => code != "0" || status >= 500,
    };
    let class = if failed { "failure" } else { "success" };
    format!(
        "remora_requests_total{{direction=\"outbound\",service=\"{service}\",route=\"{route}\",status=\"{status}\",grpc_code=\"{grpc_code}\",classification=\"{class}\"}}"
    )
}

#[tokio::test]
async fn requests_are_counted_by_route_and_grpc_code() {
    let grpc = echo::serve().await;
    let (web, _log) = recording("web").await;
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         outbound: {{ listen: 127.0.0.1:0 }}\n\
         services:\n\
         \x20 rpc:\n    listen: 127.0.0.1:0\n    protocol: http2\n    endpoints: [{grpc}]\n\
         \x20   routes:\n\
         \x20     - match: {{ grpc_method: remora.echo.v1.Echo/Unary }}\n\
         \x20     - name: streams\n        match: {{ grpc_service: remora.echo.v1.Echo }}\n\
         \x20 web:\n    listen: 127.0.0.1:0\n    endpoints: [{web}]\n\
         \x20   routes:\n\
         \x20     - match: {{ path_prefix: /reports }}\n"
    ))
    .await;
    let admin = proxy.addrs().admin.unwrap();

    // gRPC: OK in trailers (twice), NOT_FOUND trailers-only, NOT_FOUND in trailers after
    // two messages, OK in trailers after three.
    let mut client = echo::client(proxy.addrs().service("rpc").unwrap()).await;
    for _ in 0..2 {
        client.unary(echo::request("hi")).await.unwrap();
    }
    let refused = client.unary(echo::request("fail")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert_eq!(
        echo::stream_to_end(&mut client, "fail:2").await,
        (2, tonic::Code::NotFound)
    );
    assert_eq!(
        echo::stream_to_end(&mut client, "3").await,
        (3, tonic::Code::Ok)
    );
    let unary = "remora.echo.v1.Echo/Unary";
    assert_eq!(metric(admin, &requests("rpc", unary, 200, "0")).await, 2.0);
    assert_eq!(metric(admin, &requests("rpc", unary, 200, "5")).await, 1.0);
    // A gRPC failure is an HTTP 200: the classification says it failed.
    assert_eq!(
        metric(
            admin,
            "remora_requests_total{direction=\"outbound\",service=\"rpc\",\
             route=\"remora.echo.v1.Echo/Unary\",status=\"200\",grpc_code=\"5\",\
             classification=\"failure\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(admin, &requests("rpc", "streams", 200, "5")).await,
        1.0
    );
    assert_eq!(
        metric(admin, &requests("rpc", "streams", 200, "0")).await,
        1.0
    );
    // Every call matched a route of its own, so nothing is counted under `default`: the
    // series is absent (a labelled counter appears with its first count), which is zero.
    // `requests` spells it as for the web calls below, which must be present.
    assert_eq!(
        metric_or_zero(admin, &requests("rpc", "default", 200, "0")).await,
        0.0
    );

    // Plain HTTP: a route by its path prefix, the default route, an unknown service.
    let web_port = proxy.addrs().service("web").unwrap();
    assert_eq!(get(&format!("http://{web_port}/reports/7")).await.0, 200);
    assert_eq!(get(&format!("http://{web_port}/other")).await.0, 200);
    assert_eq!(get(&format!("http://{web_port}/other")).await.0, 200);
    let outbound = proxy.addrs().outbound.unwrap();
    let refused = raw(
        outbound,
        b"GET / HTTP/1.1\r\nhost: nowhere\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&refused), 404, "{refused}");
    assert_eq!(
        metric(admin, &requests("web", "/reports", 200, "")).await,
        1.0
    );
    assert_eq!(
        metric(admin, &requests("web", "default", 200, "")).await,
        2.0
    );
    assert_eq!(
        metric(admin, &requests("unknown", "default", 404, "")).await,
        1.0
    );
    // Latency stays per service, to response headers: one sample per call.
    assert_eq!(
        metric(
            admin,
            "remora_request_duration_seconds_count{direction=\"outbound\",service=\"rpc\"}"
        )
        .await,
        5.0
    );
}

#[tokio::test]
async fn an_abandoned_grpc_stream_counts_as_unknown() {
    let grpc = echo::serve().await;
    let proxy = outbound_to(&[grpc], "http2").await;
    let admin = proxy.addrs().admin.unwrap();
    let _open = echo::abandon_bidi(proxy.addrs().service("svc").unwrap()).await;
    let series = requests("svc", "default", 200, "unknown");
    // Absent until the abandoned call is counted (reaching 1 proves the spelling).
    let counted = eventually(std::time::Duration::from_secs(5), || async {
        metric_or_zero(admin, &series).await == 1.0
    })
    .await;
    assert!(counted, "{series} never reached 1");
}

/// Log lines go through a bounded queue to a writer thread; what it had no room for is
/// counted (none here: nothing logged floods it).
#[tokio::test]
async fn dropped_log_lines_are_counted() {
    let proxy = outbound_to(&[dead_endpoint()], "http1").await;
    let admin = proxy.addrs().admin.unwrap();
    assert_eq!(metric(admin, "remora_log_lines_dropped_total").await, 0.0);
}

/// `remora_build_info` names the version answering, as Prometheus's other exporters do.
#[tokio::test]
async fn build_info_names_the_version() {
    let proxy = outbound_to(&[dead_endpoint()], "http1").await;
    let admin = proxy.addrs().admin.unwrap();
    let series = format!(
        "remora_build_info{{version=\"{}\",target_arch=\"{}\",target_os=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    assert_eq!(metric(admin, &series).await, 1.0);
}

/// `remora_runtime_tasks` counts a task per open connection: it rises with idle
/// keep-alive connections and falls back when they close.
#[tokio::test]
async fn runtime_tasks_follow_open_connections() {
    let (upstream, _) = recording("up").await;
    let proxy = outbound_to(&[upstream], "http1").await;
    let admin = proxy.addrs().admin.unwrap();
    let addr = proxy.addrs().service("svc").unwrap();
    // A first call opens the upstream connection the pool keeps (a task of its own).
    let mut warm = tokio::net::TcpStream::connect(addr).await.unwrap();
    read_answer(&mut warm).await;
    drop(warm);
    let before = metric(admin, "remora_runtime_tasks").await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let open = metric(admin, "remora_runtime_tasks").await;
    assert!(
        open >= before + 20.0,
        "{before} tasks before, {open} with 20 connections"
    );
    drop(held);
    let closed = eventually(std::time::Duration::from_secs(5), || async {
        metric(admin, "remora_runtime_tasks").await <= before
    })
    .await;
    assert!(
        closed,
        "tasks stayed above {before} after the connections closed"
    );
}

/// One keep-alive GET on `stream` and its answer, read up to its (short) body.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /t HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("echo:/t") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The process's resources, read at the scrape: memory, CPU, threads, descriptors.
#[tokio::test]
async fn process_resources_are_exported() {
    let proxy = outbound_to(&[dead_endpoint()], "http1").await;
    let admin = proxy.addrs().admin.unwrap();
    let rss = metric(admin, "remora_process_resident_memory_bytes").await;
    assert!(rss > 1_000_000.0, "RSS {rss}");
    // The test process holds at least the sidecar's listeners and the scrape's socket.
    let fds = metric(admin, "remora_process_open_fds").await;
    assert!(fds >= 3.0, "fds {fds}");
    assert!(metric(admin, "remora_process_max_fds").await >= fds);
    assert!(metric(admin, "remora_process_threads").await >= 1.0);
    // CPU time counts in clock ticks (10 ms): spend some (on a loaded machine the
    // wall time that takes varies), until the counter shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut cpu = 0.0;
    while cpu < 0.02 && std::time::Instant::now() < deadline {
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::black_box(busy.elapsed());
        }
        cpu = metric(admin, "remora_process_cpu_seconds_total").await;
    }
    assert!(cpu >= 0.02, "CPU time {cpu}");
    let started = metric(admin, "remora_process_start_time_seconds").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 2.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
}

/// Each endpoint's tries are counted by outcome, with its own latency histogram: which
/// replica answers what, and which one refuses connections.
#[tokio::test]
async fn tries_are_counted_per_endpoint() {
    let (one, _) = recording("one").await;
    let (two, _) = scripted(|_| 503).await;
    let dead = dead_endpoint();
    let proxy = sidecar(&format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{one}, {two}, {dead}]\n    balancer: {{ algorithm: round_robin }}\n"
    ))
    .await;
    let url = format!("http://{}/", proxy.addrs().service("svc").unwrap());
    for _ in 0..6 {
        get(&url).await;
    }
    let admin = proxy.addrs().admin.unwrap();
    let tries = |endpoint: std::net::SocketAddr, outcome: &str| {
        format!(
            "remora_endpoint_requests_total{{service=\"svc\",endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"
        )
    };
    assert_eq!(metric(admin, &tries(one, "2xx")).await, 2.0);
    assert_eq!(metric(admin, &tries(two, "5xx")).await, 2.0);
    assert_eq!(metric(admin, &tries(dead, "connect-failure")).await, 2.0);
    let answered = format!(
        "remora_endpoint_request_duration_seconds_count{{service=\"svc\",endpoint=\"{one}\"}}"
    );
    assert_eq!(metric(admin, &answered).await, 2.0);
}
