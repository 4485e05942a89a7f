//! `grpc-timeout`, `grpc-retry-pushback-ms` and `Retry-After`, read as the timeout and
//! retry layers read them. Never panics; a `grpc-timeout` read encodes back to itself,
//! any duration encodes to one that reads back no later and at most 0.001% sooner;
//! a pushback present is always obeyed (a wait or a refusal); the `Retry-After` remora
//! writes when it rate-limits reads back as at least the real wait.
#![no_main]

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use remora::core::error::ProxyError;
use remora::core::grpc::{encode_grpc_timeout, parse_grpc_timeout};
use remora::fuzzing::{self, ServerDelay};

/// 99999999H, the longest `grpc-timeout`.
const LONGEST: Duration = Duration::from_secs(99_999_999 * 3600);

fn duration(bytes: &[u8]) -> Duration {
    let mut secs = [0u8; 8];
    let mut nanos = [0u8; 4];
    for (i, b) in bytes.iter().take(12).enumerate() {
        if i < 8 {
            secs[i] = *b;
        } else {
            nanos[i - 8] = *b;
        }
    }
    Duration::new(
        u64::from_le_bytes(secs),
        u32::from_le_bytes(nanos) % 1_000_000_000,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else {
                return;
            };
            if let Some(timeout) = parse_grpc_timeout(&value) {
                assert!(rest.len() <= 9, "{value:?} read as {timeout:?}");
                let encoded = encode_grpc_timeout(timeout);
                assert_eq!(
                    parse_grpc_timeout(&encoded),
                    Some(timeout),
                    "{value:?} as {encoded:?}"
                );
            }
        }
        1 => {
            let wanted = duration(rest);
            let encoded = encode_grpc_timeout(wanted);
            let read = parse_grpc_timeout(&encoded)
                .unwrap_or_else(|| panic!("{wanted:?} encoded unreadably as {encoded:?}"));
            if wanted >= LONGEST {
                assert_eq!(read, LONGEST, "{wanted:?} as {encoded:?}");
            } else {
                assert!(read <= wanted, "{wanted:?} as {encoded:?}, later");
                let slack = wanted / 100_000 + Duration::from_nanos(1);
                assert!(wanted - read < slack, "{wanted:?} as {encoded:?}, too soon");
            }
        }
        2 => {
            let (pushback, retry_after) = rest.split_at(rest.len() / 2);
            let mut headers = HeaderMap::new();
            let pushback = HeaderValue::from_bytes(pushback).ok();
            if let Some(value) = &pushback {
                headers.insert("grpc-retry-pushback-ms", value.clone());
            }
            if let Ok(value) = HeaderValue::from_bytes(retry_after) {
                headers.insert(RETRY_AFTER, value);
            }
            let delay = fuzzing::server_delay(&headers);
            if let Some(value) = pushback {
                match delay {
                    ServerDelay::After(wait) => {
                        let millis = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
                        assert_eq!(Some(wait), millis.map(Duration::from_millis), "{value:?}");
                    }
                    ServerDelay::Refused => {}
                    ServerDelay::Unspecified => panic!("pushback {value:?} ignored"),
                }
            }
        }
        _ => {
            let wait = duration(rest);
            let response = ProxyError::RateLimited { retry_after: wait }.to_response(false);
            match fuzzing::server_delay(response.headers()) {
                ServerDelay::After(read) => {
                    // Whole seconds, up to u64::MAX of them: no more can be written.
                    assert!(
                        read >= wait || read == Duration::from_secs(u64::MAX),
                        "{wait:?} written as {:?}",
                        response.headers()[RETRY_AFTER]
                    );
                    let bound = wait.saturating_add(Duration::from_secs(1));
                    assert!(
                        read <= bound.max(Duration::from_secs(1)),
                        "{wait:?} read as {read:?}"
                    );
                }
                other => panic!(
                    "{wait:?} written as {:?}, read as {other:?}",
                    response.headers()[RETRY_AFTER]
                ),
            }
        }
    }
});
