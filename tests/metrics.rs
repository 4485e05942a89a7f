//! `/metrics` is valid exposition text, and its counters move as requests pass.

mod support;

use support::*;

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
        "remora_requests_total{direction=\"outbound\",service=\"svc\",status=\"200\"}",
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
