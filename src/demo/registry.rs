//! The demo's service registry: a `file` registry the frontend discovers services from,
//! and the check that the frontend serves what the file lists.
//!
//! The file lives in a directory of its own under the system's temp dir, removed when
//! the [`DemoRegistry`] is dropped. Scenes rewrite it (to a temporary file, then renamed
//! over it, as a config manager would) to make instances join and leave; the frontend's
//! watch picks the change up after its debounce. [`DemoRegistry::publish`] then waits
//! until the frontend's admin `/endpoints` shows the new listing, so a scene starts with
//! its membership in effect rather than a debounce later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// The name of the registry in the frontend's `registries`.
pub const REGISTRY_NAME: &str = "demo";

/// How long [`DemoRegistry::publish`] waits for the frontend to serve a new listing: the
/// registry's debounce and a re-read, with room for a busy machine.
const PUBLISH_WAIT: Duration = Duration::from_secs(3);

/// How often the frontend's `/endpoints` is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// How long one read of `/endpoints` may take.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Tells apart the registries of several demos in one process (tests).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Which instances (their inbound sidecars' addresses) each service has, by name.
pub type Listing = BTreeMap<String, Vec<SocketAddr>>;

/// The registry file, and where to check that the frontend follows it.
#[derive(Debug)]
pub struct DemoRegistry {
    /// A directory only this registry uses; removed on drop.
    directory: PathBuf,
    /// The file the frontend watches, inside `directory`.
    path: PathBuf,
    /// The frontend's `/endpoints`, once it runs.
    frontend: Option<EndpointsReader>,
}

impl DemoRegistry {
    /// Creates the directory and writes `listing` to the file, so that the frontend finds
    /// its instances when it starts.
    pub async fn create(listing: &Listing) -> std::io::Result<Self> {
        let directory = std::env::temp_dir().join(format!(
            "remora-demo-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::fs::create_dir_all(&directory).await?;
        let registry = Self {
            path: directory.join("instances.yaml"),
            directory,
            frontend: None,
        };
        registry.write(listing).await?;
        Ok(registry)
    }

    /// The file the frontend's `file` registry reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks later listings against the frontend whose admin listener is `admin`.
    pub fn follow_frontend(&mut self, admin: SocketAddr) {
        self.frontend = EndpointsReader::new(admin).ok();
    }

    /// Rewrites the file with `listing`, then waits (a few seconds at most) until the
    /// frontend serves exactly the listed addresses for every service in it. Says whether
    /// it does; the file is rewritten either way.
    pub async fn publish(&self, listing: &Listing) -> std::io::Result<bool> {
        self.write(listing).await?;
        let Some(frontend) = &self.frontend else {
            return Ok(false);
        };
        let served = async {
            loop {
                if frontend.serves(listing).await {
                    return;
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
        };
        Ok(tokio::time::timeout(PUBLISH_WAIT, served).await.is_ok())
    }

    /// Writes a temporary file and renames it over the registry file, so the watch never
    /// reads half a listing.
    async fn write(&self, listing: &Listing) -> std::io::Result<()> {
        let staging = self.directory.join("instances.yaml.next");
        tokio::fs::write(&staging, render(listing)).await?;
        tokio::fs::rename(&staging, &self.path).await
    }
}

impl Drop for DemoRegistry {
    fn drop(&mut self) {
        // NOTE: blocking, once, when the demo ends: a directory of one small file.
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The file's text: one line per service, `name: ["127.0.0.1:PORT", ...]`.
fn render(listing: &Listing) -> String {
    let mut text = String::from("# remora demo: rewritten as instances join and leave\n");
    for (service, addresses) in listing {
        // JSON strings are YAML double-quoted scalars: any name stays one key.
        let quoted: Vec<String> = addresses
            .iter()
            .map(|address| format!("\"{address}\""))
            .collect();
        let name = serde_json::to_string(service).unwrap_or_default();
        text.push_str(&format!("{name}: [{}]\n", quoted.join(", ")));
    }
    text
}

/// Reads a sidecar's admin `/endpoints`.
#[derive(Debug, Clone)]
struct EndpointsReader {
    client: Client<HttpConnector, Empty<Bytes>>,
    uri: Uri,
}

/// The part of one `/endpoints` entry the demo reads.
#[derive(Debug, Deserialize)]
struct ServedService {
    service: String,
    endpoints: Vec<ServedEndpoint>,
}

#[derive(Debug, Deserialize)]
struct ServedEndpoint {
    address: SocketAddr,
}

impl EndpointsReader {
    fn new(admin: SocketAddr) -> Result<Self, http::uri::InvalidUri> {
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            uri: format!("http://{admin}/endpoints").parse()?,
        })
    }

    /// Whether the sidecar's endpoint set of every service in `listing` holds exactly
    /// the listed addresses; false when `/endpoints` cannot be read.
    async fn serves(&self, listing: &Listing) -> bool {
        let Some(served) = self.read().await else {
            return false;
        };
        listing.iter().all(|(service, addresses)| {
            let Some(entry) = served.iter().find(|entry| &entry.service == service) else {
                return false;
            };
            let mut have: Vec<SocketAddr> = entry.endpoints.iter().map(|e| e.address).collect();
            let mut want = addresses.clone();
            have.sort();
            want.sort();
            have == want
        })
    }

    async fn read(&self) -> Option<Vec<ServedService>> {
        let read = async {
            let mut request = Request::new(Empty::new());
            *request.uri_mut() = self.uri.clone();
            let response = self.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&body).ok()
        };
        tokio::time::timeout(READ_TIMEOUT, read).await.ok()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_a_listing_the_file_registry_reads() {
        let listing: Listing = [(
            "inventory".to_string(),
            vec![
                SocketAddr::from(([127, 0, 0, 1], 7001)),
                SocketAddr::from(([127, 0, 0, 1], 7002)),
            ],
        )]
        .into();
        let registry = DemoRegistry::create(&listing).await.expect("created");
        let text = std::fs::read_to_string(registry.path()).expect("written");
        assert!(
            text.contains(r#""inventory": ["127.0.0.1:7001", "127.0.0.1:7002"]"#),
            "{text}"
        );
        let parsed: BTreeMap<String, Vec<String>> =
            serde_saphyr::from_str(&text).expect("valid YAML");
        assert_eq!(parsed["inventory"].len(), 2);
        assert!(
            !registry.publish(&listing).await.expect("rewritten"),
            "no frontend to follow"
        );
        let directory = registry.directory.clone();
        drop(registry);
        assert!(!directory.exists(), "the directory goes with the registry");
    }
}
