//! Hot reload: a changed file applies to new requests (written in place, renamed into
//! place, or swapped through symlinks), SIGHUP reloads, a broken file is refused with its
//! location while the old config keeps serving, a moved listener is logged and left for
//! a restart (all with the real binary), and a request in flight across a reload
//! finishes on the old config (a `remora::Sidecar`, reloaded through its handle).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::support::*;

fn config(admin: u16, port: u16, endpoint: SocketAddr) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:{admin} }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:{port}\n    endpoints: [{endpoint}]\n"
    )
}

async fn served_by(port: u16) -> String {
    let (_, headers, _) = get(&format!("http://127.0.0.1:{port}/")).await;
    headers
        .get("x-upstream")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Reloads with `result` so far. The series appears with the first reload of that result,
/// so absent is zero here; each test also waits for it to reach 1, which proves the
/// spelling.
async fn reloads(admin: u16, result: &str) -> f64 {
    let series = format!("remora_config_reloads_total{{result=\"{result}\"}}");
    metric_or_zero(SocketAddr::from(([127, 0, 0, 1], admin)), &series).await
}

#[tokio::test]
async fn file_changes_apply_and_broken_files_are_refused() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    std::fs::write(&path, config(admin, port, b)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(port).await == "b"
        })
        .await,
        "the edited endpoint was not applied: {}",
        process.log()
    );

    // A typo: refused, located, and the previous config keeps serving.
    std::fs::write(
        &path,
        config(admin, port, a).replace("endpoints:", "endpoint:"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(admin, "failed").await == 1.0
        })
        .await,
        "the broken config was not noticed: {}",
        process.log()
    );
    let log = process.log();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("remora.yaml:5:"),
        "the error names file and line: {log}"
    );
    for _ in 0..5 {
        assert_eq!(served_by(port).await, "b");
    }
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (a, _) = recording("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(reloads(admin, "ok").await, 0.0);
    process.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(admin, "ok").await == 1.0
        })
        .await,
        "SIGHUP did not reload: {}",
        process.log()
    );
    assert_eq!(served_by(port).await, "a");
}

/// An upstream named `name` that holds its first request until `release` fires, then
/// answers it 503; later requests get 200 at once. It counts the requests it received,
/// and announces the first one's arrival on `arrived`.
async fn held_then_503(
    name: &'static str,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::Receiver<()>,
    oneshot::Sender<()>,
) {
    let (arrived_tx, arrived) = mpsc::channel(1);
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let addr = serve(move |_request: Request<Incoming>| {
        let (arrived_tx, released) = (arrived_tx.clone(), released.clone());
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let answer = Response::builder().header("x-upstream", name);
            if n > 0 {
                return answer.body(full("second try")).unwrap();
            }
            arrived_tx.send(()).await.unwrap();
            let released = released.lock().await.take().unwrap();
            released.await.unwrap();
            answer.status(503).body(full("first try")).unwrap()
        }
    })
    .await;
    (addr, calls, arrived, release)
}

#[tokio::test]
async fn a_request_in_flight_across_a_reload_finishes_on_the_old_config() {
    // The old config sends svc to `old` and retries a 503 once; the new one sends it to
    // `new` without retries. A request whose first try is in flight at `old` during the
    // reload must finish on the old config: its retry goes to `old` again, not to `new`,
    // and it is retried at all.
    let (old, old_calls, mut arrived, release) = held_then_503("old").await;
    let (new, new_log) = recording("new").await;
    let config = |endpoint: SocketAddr, retry: &str| {
        remora::build::parse(
            "test.yaml",
            &format!(
                "admin: {{ listen: 127.0.0.1:0 }}\n\
                 policies:\n  retries:\n    once:\n      attempts: 2\n      retry_on: [503]\n\
                 \x20     backoff: {{ base: 1ms, max: 1ms, jitter: 0% }}\n\
                 services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n\
                 \x20   retry: {retry}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let proxy = remora::Sidecar::start(config(old, "once")).await.unwrap();
    let url = format!("http://{}/", proxy.addrs().service("svc").unwrap());

    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the first try reached the old upstream")
        .unwrap();

    proxy.handle().reload(config(new, "none")).await.unwrap();
    let (status, headers, _) = get(&url).await;
    assert_eq!(
        (status.as_u16(), headers["x-upstream"].to_str().unwrap()),
        (200, "new"),
        "new requests see the new config"
    );

    release.send(()).unwrap();
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request completes")
        .unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "second try"),
        "retried, as the old config says"
    );
    assert_eq!(headers["x-upstream"], "old");
    assert_eq!(
        old_calls.load(Ordering::SeqCst),
        2,
        "both tries on the old endpoint"
    );
    assert_eq!(new_log.len(), 1, "only the request sent after the reload");
}

#[tokio::test]
async fn a_config_renamed_into_place_is_picked_up() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    // Written aside and renamed over the config, as editors and config managers do.
    let aside = dir.path().join("remora.yaml.tmp");
    std::fs::write(&aside, config(admin, port, b)).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(port).await == "b"
        })
        .await,
        "the renamed config was not applied: {}",
        process.log()
    );
    assert_eq!(reloads(admin, "ok").await, 1.0);
}

#[tokio::test]
async fn a_config_symlink_swapped_for_another_is_picked_up() {
    // The config path is a symlink, replaced by renaming a new symlink over it.
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = (free_port(), free_port());
    std::fs::write(dir.path().join("a.yaml"), config(admin, port, a)).unwrap();
    std::fs::write(dir.path().join("b.yaml"), config(admin, port, b)).unwrap();
    let path = dir.path().join("remora.yaml");
    std::os::unix::fs::symlink("a.yaml", &path).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    std::os::unix::fs::symlink("b.yaml", dir.path().join("remora.yaml.tmp")).unwrap();
    std::fs::rename(dir.path().join("remora.yaml.tmp"), &path).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(port).await == "b"
        })
        .await,
        "the swapped symlink was not followed: {}",
        process.log()
    );
    assert_eq!(reloads(admin, "ok").await, 1.0);
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    // The layout of a Kubernetes ConfigMap volume: the config is a symlink through
    // `..data`, itself a symlink to a timestamped directory; an update writes a new
    // directory and swaps `..data` to it by renaming a new symlink over it.
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = (free_port(), free_port());
    let first = dir.path().join("..2024_01_01_00_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("remora.yaml"), config(admin, port, a)).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("remora.yaml");
    std::os::unix::fs::symlink("..data/remora.yaml", &path).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    let second = dir.path().join("..2024_01_01_00_01_00.2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("remora.yaml"), config(admin, port, b)).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_01_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        config(admin, port, b),
        "the swap is done: the config path now reads the new file"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(port).await == "b"
        })
        .await,
        "the swapped config was not applied: {}",
        process.log()
    );
    assert_eq!(reloads(admin, "ok").await, 1.0);
}

/// A listener moved by a reload of the file is bound at its new address, and the old
/// address stops accepting once its connections drained.
#[tokio::test]
async fn a_moved_listener_is_bound_and_the_old_address_released() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remora.yaml");
    let (admin, port) = (free_port(), free_port());
    std::fs::write(&path, config(admin, port, a)).unwrap();
    let process = Process::run(&path, SocketAddr::from(([127, 0, 0, 1], admin))).await;
    assert_eq!(served_by(port).await, "a");

    let moved = free_port();
    let changed = config(admin, port, b).replace(
        &format!("listen: 127.0.0.1:{port}"),
        &format!("listen: 127.0.0.1:{moved}"),
    );
    std::fs::write(&path, changed).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(admin, "ok").await == 1.0
        })
        .await,
        "the config with a moved listener was not reloaded: {}",
        process.log()
    );
    assert_eq!(served_by(moved).await, "b", "the new address serves");
    let old = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(old).await.is_err()
        })
        .await,
        "the old address still accepts: {}",
        process.log()
    );
}

/// A reload adds a service with a port of its own: bound and serving without a
/// restart; a reload that removes it releases the port.
#[tokio::test]
async fn an_added_listener_is_bound_and_a_removed_one_released() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let base = format!(
        "admin: {{ listen: 127.0.0.1:0 }}\n\
         services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{a}]\n"
    );
    let parse = |text: &str| remora::build::parse("test.yaml", text).unwrap();
    let proxy = remora::Sidecar::start(parse(&base)).await.unwrap();
    assert!(proxy.addrs().service("extra").is_none());
    let svc = proxy.addrs().service("svc").unwrap();

    let extra = free_port();
    let added = format!("{base}  extra:\n    listen: 127.0.0.1:{extra}\n    endpoints: [{b}]\n");
    proxy.handle().reload(parse(&added)).await.unwrap();
    assert_eq!(
        proxy.addrs().service("extra"),
        Some(SocketAddr::from(([127, 0, 0, 1], extra)))
    );
    assert_eq!(served_by(extra).await, "b");
    assert_eq!(
        proxy.addrs().service("svc"),
        Some(svc),
        "the kept listener kept its port"
    );
    assert_eq!(served_by(svc.port()).await, "a");

    proxy.handle().reload(parse(&base)).await.unwrap();
    assert!(proxy.addrs().service("extra").is_none());
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", extra))
                .await
                .is_err()
        })
        .await,
        "the removed listener's port still accepts"
    );
    assert_eq!(served_by(svc.port()).await, "a");
}

/// A reload whose new listener cannot be bound (its port is taken) is refused whole:
/// the old config keeps serving.
#[tokio::test]
async fn a_reload_whose_listener_cannot_be_bound_is_refused() {
    let (a, _) = recording("a").await;
    let (b, _) = recording("b").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let text = |endpoint: SocketAddr, extra: &str| {
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n{extra}"
        )
    };
    let parse = |text: &str| remora::build::parse("test.yaml", text).unwrap();
    let proxy = remora::Sidecar::start(parse(&text(a, ""))).await.unwrap();
    let svc = proxy.addrs().service("svc").unwrap();
    let extra = format!("  extra:\n    listen: 127.0.0.1:{taken_port}\n    endpoints: [{b}]\n");
    let error = proxy
        .handle()
        .reload(parse(&text(b, &extra)))
        .await
        .expect_err("the taken port refuses the reload");
    assert!(error.contains(&taken_port.to_string()), "{error}");
    assert_eq!(
        served_by(svc.port()).await,
        "a",
        "the old config still serves"
    );
    drop(taken);
}

/// A config whose service `svc` (at `upstream`) has a breaker that opens after one
/// failure and stays open a minute, a limit of one call a minute on `/limited`, and
/// `extra` appended (an unrelated service, or another breaker threshold).
fn stateful(upstream: SocketAddr, failures: u32, extra: &str) -> remora::config::Config {
    remora::build::parse(
        "test.yaml",
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\n\
             policies:\n\
             \x20 breakers:\n    once: {{ consecutive_failures: {failures}, open_for: 1m, max_open_for: 1m, failure_on: [5xx] }}\n\
             \x20 rate_limits:\n    one: {{ rate: 1/m, burst: 1 }}\n\
             services:\n  svc:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    breaker: once\n\
             \x20 limited:\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    rate_limit: one\n{extra}"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Policy state outlives a reload that leaves the policy alone: an open breaker stays
/// open and a spent limit stays spent when another service is added. A reload that
/// changes the breaker's policy starts that breaker afresh, and leaves the limit spent.
#[tokio::test]
async fn policy_state_survives_reloads_that_leave_the_policy_alone() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let switch = failing.clone();
    let (upstream, log) = scripted(move |_| {
        if switch.load(Ordering::SeqCst) {
            500
        } else {
            200
        }
    })
    .await;
    let proxy = remora::Sidecar::start(stateful(upstream, 1, ""))
        .await
        .unwrap();
    let svc = format!("http://{}/", proxy.addrs().service("svc").unwrap());
    let limited = format!("http://{}/", proxy.addrs().service("limited").unwrap());
    assert_eq!(get(&svc).await.0, 500);
    let (status, headers, _) = get(&svc).await;
    assert_eq!(
        (status.as_u16(), headers["x-remora-error"].to_str().unwrap()),
        (503, "breaker-open")
    );
    assert_eq!(get(&limited).await.0, 500, "the one call the limit admits");
    assert_eq!(get(&limited).await.0, 429);
    failing.store(false, Ordering::SeqCst);

    // An unrelated edit: another service.
    let (other, _) = recording("other").await;
    let extra = format!("  other:\n    listen: 127.0.0.1:0\n    endpoints: [{other}]\n");
    proxy
        .handle()
        .reload(stateful(upstream, 1, &extra))
        .await
        .unwrap();
    let calls = log.len();
    let (status, headers, _) = get(&svc).await;
    assert_eq!(
        (status.as_u16(), headers["x-remora-error"].to_str().unwrap()),
        (503, "breaker-open"),
        "the open breaker stayed open"
    );
    assert_eq!(log.len(), calls, "and the upstream was not called");
    assert_eq!(get(&limited).await.0, 429, "the spent limit stayed spent");

    // The breaker's own policy changes: that breaker starts closed.
    proxy
        .handle()
        .reload(stateful(upstream, 2, &extra))
        .await
        .unwrap();
    assert_eq!(get(&svc).await.0, 200, "a changed policy starts afresh");
    assert_eq!(
        get(&limited).await.0,
        429,
        "the untouched limit is still spent"
    );
}
