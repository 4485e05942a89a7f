//! The `file` registry: a YAML or JSON file mapping service names to instances,
//! re-read whenever it changes.
//!
//! ```yaml
//! orders:
//!   - 10.0.0.7:8080
//!   - { id: orders-2, address: 10.0.0.8, port: 8080, weight: 2, metadata: { zone: b } }
//! ```
//!
//! The directory is watched (editors and config managers replace files by renaming, which
//! a watch on the file itself would miss); bursts of events are debounced into one
//! re-read. A file that cannot be read or parsed is an outage: the last snapshot stays.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::stream::BoxStream;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::feed::{self, Closed, Feed};
use super::{Backoff, DiscoveryError, Instance, InstanceRecord, Registry};

const NAME: &str = "file";

/// Settings of the `file` registry.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The file; `.json` is read as JSON, anything else as YAML.
    pub path: PathBuf,
    /// How long to wait after a change for more changes before re-reading.
    pub debounce: Duration,
}

impl FileConfig {
    /// `path` with a 100 ms debounce.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            debounce: Duration::from_millis(100),
        }
    }
}

/// Instances listed in a file on disk.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
    directory: PathBuf,
    debounce: Duration,
}

impl FileRegistry {
    /// Checks `config`; the file itself may not exist yet (that is an outage, not an error).
    pub fn new(config: FileConfig) -> Result<Self, DiscoveryError> {
        if config.debounce.is_zero() || config.debounce > Duration::from_secs(10) {
            return Err(DiscoveryError::new(
                NAME,
                format!("debounce {:?} must be between 1ms and 10s", config.debounce),
            ));
        }
        let path = std::path::absolute(&config.path)
            .map_err(|e| DiscoveryError::new(NAME, format!("{}: {e}", config.path.display())))?;
        let Some(directory) = path.parent().map(Path::to_path_buf) else {
            return Err(DiscoveryError::new(
                NAME,
                format!("{} is not a file path", path.display()),
            ));
        };
        Ok(Self {
            path,
            directory,
            debounce: config.debounce,
        })
    }
}

impl Registry for FileRegistry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn watch(&self, service: &str) -> BoxStream<'static, Result<Vec<Instance>, DiscoveryError>> {
        let this = self.clone();
        let service = service.to_string();
        feed::spawn(move |feed| async move { this.run(&service, feed).await })
    }
}

impl FileRegistry {
    async fn run(self, service: &str, feed: Feed) -> Result<(), Closed> {
        let mut backoff = Backoff::try_new(Duration::from_secs(1), Duration::from_secs(30))
            .expect("constant bounds are valid");
        loop {
            // The watch is set up before the first read so that no change slips between.
            let (changes, _watcher) = match self.watch_directory() {
                Ok(watch) => watch,
                Err(error) => {
                    feed.outage(error).await?;
                    backoff.wait().await;
                    continue;
                }
            };
            return self.follow(service, changes, &feed).await;
        }
    }

    /// Reads the file now and after every (debounced) change.
    async fn follow(
        &self,
        service: &str,
        mut changes: mpsc::Receiver<()>,
        feed: &Feed,
    ) -> Result<(), Closed> {
        let mut last: Option<Vec<Instance>> = None;
        loop {
            match self.read(service).await {
                Ok(instances) if last.as_ref() != Some(&instances) => {
                    last = Some(instances.clone());
                    feed.snapshot(instances).await?;
                }
                Ok(_) => {}
                Err(error) => {
                    // The next good read is sent even if it equals the last one.
                    last = None;
                    feed.outage(error).await?;
                }
            }
            if changes.recv().await.is_none() {
                return Ok(());
            }
            tokio::time::sleep(self.debounce).await;
            while changes.try_recv().is_ok() {}
        }
    }

    /// A watcher on the file's directory that signals changes to the file.
    fn watch_directory(
        &self,
    ) -> Result<(mpsc::Receiver<()>, notify::RecommendedWatcher), DiscoveryError> {
        // One pending signal is enough: every signal means "re-read".
        let (tx, rx) = mpsc::channel(1);
        let file_name = self.path.file_name().map(ToOwned::to_owned);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    Ok(event) => {
                        is_change(&event.kind)
                            && event
                                .paths
                                .iter()
                                .any(|p| p.file_name().map(ToOwned::to_owned) == file_name)
                    }
                    // A lost event (queue overflow) may have been ours.
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| DiscoveryError::new(NAME, format!("cannot watch files: {e}")))?;
        watcher
            .watch(&self.directory, RecursiveMode::NonRecursive)
            .map_err(|e| {
                DiscoveryError::new(
                    NAME,
                    format!("cannot watch {}: {e}", self.directory.display()),
                )
            })?;
        Ok((rx, watcher))
    }

    async fn read(&self, service: &str) -> Result<Vec<Instance>, DiscoveryError> {
        let error = |message: String| {
            DiscoveryError::new(NAME, format!("{}: {message}", self.path.display()))
        };
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| error(e.to_string()))?;
        let is_json = self.path.extension().is_some_and(|e| e == "json");
        instances(&text, is_json, service).map_err(error)
    }
}

/// Whether an event may have changed the file's content (reads and opens do not).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// One listed instance: `"address:port"` or a full record.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Entry {
    Address(String),
    Record(InstanceRecord),
}

impl Entry {
    fn into_instance(self) -> Result<Instance, String> {
        match self {
            Entry::Address(text) => text
                .parse::<SocketAddr>()
                .map(Instance::new)
                .map_err(|_| format!("{text:?} is not an IP address with a port")),
            Entry::Record(record) => Ok(record.into()),
        }
    }
}

/// The instances of `service` in a discovery file's `text` (JSON when `is_json`, else YAML).
pub(crate) fn instances(text: &str, is_json: bool, service: &str) -> Result<Vec<Instance>, String> {
    let mut services = parse(text, is_json)?;
    let entries = services.remove(service).unwrap_or_default();
    entries
        .into_iter()
        .map(|entry| entry.into_instance().map_err(|e| format!("{service}: {e}")))
        .collect()
}

fn parse(text: &str, is_json: bool) -> Result<HashMap<String, Vec<Entry>>, String> {
    if is_json {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_records_in_yaml_and_json() {
        let yaml =
            "orders:\n  - 10.0.0.7:8080\n  - { id: o2, address: 10.0.0.8, port: 81, weight: 2 }\n";
        let json = r#"{"orders": ["10.0.0.7:8080", {"id": "o2", "address": "10.0.0.8", "port": 81, "weight": 2}]}"#;
        for (text, is_json) in [(yaml, false), (json, true)] {
            let mut services = parse(text, is_json).unwrap();
            let instances: Vec<Instance> = services
                .remove("orders")
                .unwrap()
                .into_iter()
                .map(|e| e.into_instance().unwrap())
                .collect();
            assert_eq!(
                instances[0],
                Instance::new("10.0.0.7:8080".parse().unwrap())
            );
            assert_eq!(instances[1].id, "o2");
            assert_eq!(instances[1].weight, 2);
        }
        let bad = parse("orders:\n  - db:80\n", false).unwrap();
        let entry = bad.into_values().next().unwrap().pop().unwrap();
        assert!(entry.into_instance().unwrap_err().contains("db:80"));
    }

    #[test]
    fn rejects_a_zero_debounce() {
        let mut config = FileConfig::new("/tmp/x.yaml");
        config.debounce = Duration::ZERO;
        assert!(FileRegistry::new(config).is_err());
    }
}
