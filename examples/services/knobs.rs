//! Fault knobs every example service takes: injected latency and error rate.

use std::time::Duration;

/// What a service does to each request before answering it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Knobs {
    /// Added to every request.
    pub latency: Duration,
    /// Share of requests (0.0..=1.0) answered with an error (HTTP 500 / gRPC UNAVAILABLE).
    pub error_rate: f64,
}

/// A knob that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KnobError {
    /// `LATENCY` is not a duration.
    #[error("LATENCY={0:?}: expected a duration such as 20ms")]
    Latency(String),
    /// `ERROR_RATE` is not a share.
    #[error("ERROR_RATE={0:?}: expected a number from 0 to 1")]
    ErrorRate(String),
}

impl Knobs {
    /// Reads `LATENCY` (e.g. `20ms`, default 0) and `ERROR_RATE` (0..=1, default 0).
    pub fn from_env() -> Result<Knobs, KnobError> {
        let latency = match std::env::var("LATENCY").ok().filter(|v| !v.is_empty()) {
            None => Duration::ZERO,
            Some(text) => humantime::parse_duration(&text).map_err(|_| KnobError::Latency(text))?,
        };
        let error_rate = match std::env::var("ERROR_RATE").ok().filter(|v| !v.is_empty()) {
            None => 0.0,
            Some(text) => match text.parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => rate,
                _ => return Err(KnobError::ErrorRate(text)),
            },
        };
        Ok(Knobs {
            latency,
            error_rate,
        })
    }

    /// Sleeps the injected latency, then says whether this request should fail.
    pub async fn apply(&self) -> bool {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.error_rate > 0.0 && fastrand::f64() < self.error_rate
    }
}
