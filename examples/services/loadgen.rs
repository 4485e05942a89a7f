//! A small load generator: `GET /checkout/<item>` against frontend (through frontend's
//! sidecar) at a steady rate, one summary line per interval.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::INVENTORY_INSTANCE;

const ITEMS: [&str; 5] = ["apple", "pear", "plum", "fig", "kiwi"];

/// What the calls of one interval came back with.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Count by HTTP status (0: no response at all).
    pub statuses: BTreeMap<u16, u64>,
    /// Count by the inventory instance that answered (`fallback` when degraded).
    pub instances: BTreeMap<String, u64>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status")?;
        for (status, count) in &self.statuses {
            write!(f, " {status}:{count}")?;
        }
        write!(f, "  inventory")?;
        for (instance, count) in &self.instances {
            write!(f, " {instance}:{count}")?;
        }
        Ok(())
    }
}

/// Sends `rate` calls per second to `target` (`http://host:port`) until the task is
/// dropped, printing a [`Tally`] every `every`.
pub async fn run(target: &str, rate: u32, every: Duration) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u16, Option<String>)>(1024);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut report = tokio::time::interval(every);
    report.tick().await;
    let mut tally = Tally::default();
    let mut sent = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let uri = format!("{}/checkout/{}", target.trim_end_matches('/'), ITEMS[sent % ITEMS.len()]);
                sent += 1;
                let client = client.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let outcome = match client.get(uri.parse().unwrap_or_default()).await {
                        Ok(response) => (
                            response.status().as_u16(),
                            response
                                .headers()
                                .get(INVENTORY_INSTANCE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                        ),
                        Err(_) => (0, None),
                    };
                    let _ = tx.try_send(outcome);
                });
            }
            Some((status, instance)) = rx.recv() => {
                *tally.statuses.entry(status).or_default() += 1;
                if let Some(instance) = instance {
                    *tally.instances.entry(instance).or_default() += 1;
                }
            }
            _ = report.tick() => {
                println!("{}", std::mem::take(&mut tally));
            }
        }
    }
}
