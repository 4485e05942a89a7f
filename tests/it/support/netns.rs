//! Several hosts on one machine: the Linux network namespaces that
//! `scripts/netns-topology.sh` makes, one per host of the compose example, bridged on a
//! private subnet, each naming the others in its own `/etc/hosts`.
//!
//! A test reaches into a host two ways: a process started there ([`Network::command`],
//! `ip netns exec`, which also mounts that host's `/etc/hosts`), or a [`Host`], a thread
//! of the test moved into the host's namespace (setns(2)) that runs a tokio runtime:
//! every socket its tasks open is the host's. Nothing is left behind: [`Network`]'s drop
//! removes every namespace (and kills what still runs in them), even when the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use tokio::sync::oneshot;

/// What to install when `ip` is missing.
const INSTALL: &str = "apt-get install -y iproute2";

/// The hosts of one run of the topology script, removed on drop.
pub struct Network {
    /// `REMORA_NETNS_ID`: the namespaces are `remora-<id>-<host>`.
    id: String,
    addresses: BTreeMap<String, IpAddr>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-topology.sh")
}

/// Panics (never skips) unless this process can make namespaces.
fn require_root_and_ip() {
    let uid = std::fs::metadata("/proc/self")
        .expect("/proc is mounted")
        .uid();
    assert_eq!(
        uid, 0,
        "the network namespace tests need root (ip netns add, setns); run them as root"
    );
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("the ip command is missing ({error}): {INSTALL}"),
    }
}

/// The ids (`t<pid>`) of namespaces made by test processes that are gone.
fn dead_runs() -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let id = name.strip_prefix("remora-")?.split('-').next()?;
            let pid = id.strip_prefix('t')?.parse::<u32>().ok()?;
            let gone = !PathBuf::from(format!("/proc/{pid}")).exists();
            gone.then(|| id.to_string())
        })
        .collect()
}

impl Network {
    /// Runs `scripts/netns-topology.sh up` under an id of this process, after removing
    /// what runs of processes that no longer exist left (killed before their drop ran).
    pub fn up() -> Network {
        require_root_and_ip();
        for id in dead_runs() {
            drop(Network {
                id,
                addresses: BTreeMap::new(),
            });
        }
        let mut network = Network {
            id: format!("t{}", std::process::id()),
            addresses: BTreeMap::new(),
        };
        network.script(&["up"]);
        let hosts = network.script(&["hosts"]);
        for line in String::from_utf8_lossy(&hosts.stdout).lines() {
            let (address, name) = line.split_once(' ').expect("`address name` lines");
            let address = address.parse().expect("an IP address");
            network.addresses.insert(name.to_string(), address);
        }
        network
    }

    fn script(&self, args: &[&str]) -> Output {
        let output = Command::new(script())
            .env("REMORA_NETNS_ID", &self.id)
            .args(args)
            .output()
            .expect("run scripts/netns-topology.sh");
        assert!(
            output.status.success(),
            "netns-topology.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `host`'s address on the bridge.
    pub fn address(&self, host: &str) -> IpAddr {
        *self
            .addresses
            .get(host)
            .unwrap_or_else(|| panic!("no host {host} in {:?}", self.addresses))
    }

    /// `program` to be run on `host` (through `netns-topology.sh exec`, which execs, so
    /// the child is the program itself), with an empty environment but `PATH`.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(script());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REMORA_NETNS_ID", &self.id)
            .args(["exec", host])
            .arg(program);
        command
    }

    /// Unplugs (`false`) or plugs back (`true`) `host`'s cable: its port on the bridge.
    pub fn link(&self, host: &str, up: bool) {
        self.script(&["link", host, if up { "up" } else { "down" }]);
    }

    /// A thread of this process in `host`'s namespace.
    pub fn host(&self, host: &str) -> Host {
        assert!(self.addresses.contains_key(host), "no host {host}");
        Host::enter(format!("remora-{}-{host}", self.id))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let down = Command::new(script())
            .env("REMORA_NETNS_ID", &self.id)
            .arg("down")
            .output();
        match down {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "netns-topology.sh down: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("netns-topology.sh down: {error}"),
        }
    }
}

/// A current-thread tokio runtime on a thread that lives in one host's namespace;
/// stopped (its tasks dropped) on drop.
pub struct Host {
    namespace: String,
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Host {
    fn enter(namespace: String) -> Host {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let path = format!("/run/netns/{namespace}");
        let thread = std::thread::Builder::new()
            .name(namespace.clone())
            .spawn(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // Only this thread moves: a network namespace is per thread.
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                ready.send(runtime.handle().clone()).unwrap();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("a thread");
        let runtime = handle
            .recv()
            .unwrap_or_else(|_| panic!("the thread of {namespace} died before it ran"));
        Host {
            namespace,
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` on the host, in the background.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// Runs `future` on the host and returns its output (its panic, if it panics).
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.spawn(future).await {
            Ok(output) => output,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a task on {}: {error}", self.namespace),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
