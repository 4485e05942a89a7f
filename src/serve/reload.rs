//! Hot reload: on a change to the config file or on SIGHUP, load it again and swap it in.
//!
//! A config that fails to load or validate is refused with its location in the log and
//! the old config keeps serving. The file's directory is watched (not the file), and
//! the directory its symlinks lead to, so editors that write a new file and rename it,
//! and symlink swaps (a Kubernetes ConfigMap's `..data`), are seen too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::serve::sidecar::SidecarHandle;

/// Events closer together than this are one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Reloads `path` into `sidecar` on every change and SIGHUP, until the task is dropped.
pub async fn watch(path: PathBuf, sidecar: SidecarHandle, hangups: Hangups) {
    // The message says whether the reload is forced (SIGHUP) or a file event.
    let (tx, mut rx) = mpsc::channel::<bool>(4);
    let watcher = file_watcher(&path, tx.clone());
    if let Err(error) = &watcher {
        tracing::warn!(path = %path.display(), %error, "cannot watch the config file; reload with SIGHUP");
    }
    spawn_sighup(hangups, tx);
    let mut last = std::fs::read(&path).ok();
    while let Some(mut forced) = rx.recv().await {
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(more) = rx.try_recv() {
            forced |= more;
        }
        let text = std::fs::read(&path).ok();
        // File events also fire for writes that change nothing, and twice per save.
        if !forced && text.is_some() && text == last {
            continue;
        }
        last = text;
        reload_once(&path, &sidecar).await;
    }
    drop(watcher);
}

/// Loads `path` and applies it, or logs why not and keeps the old config.
pub async fn reload_once(path: &Path, sidecar: &SidecarHandle) -> bool {
    match crate::build::load(path) {
        Ok(config) => match sidecar.reload(config).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(
                    "config reload refused, the previous config keeps serving:\n{}: {error}",
                    path.display()
                );
                false
            }
        },
        Err(error) => {
            sidecar.reload_refused();
            tracing::error!("config reload refused, the previous config keeps serving:\n{error}");
            false
        }
    }
}

/// Watches the directory of `path`, and the directory its symlinks resolve to.
///
/// Every change there counts, whatever file it names: a config reached through
/// symlinks changes when a link is swapped (a Kubernetes ConfigMap swaps its `..data`
/// link, never touching the file name the sidecar was given), and an editor may write
/// a temporary file and rename it. The reload loop re-reads the file and skips
/// changes that leave its content as it was.
fn file_watcher(path: &Path, tx: mpsc::Sender<bool>) -> notify::Result<notify::RecommendedWatcher> {
    let parent = |path: &Path| match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(resolved) = std::fs::canonicalize(path) {
        let target = parent(&resolved);
        if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&target) {
            dirs.push(target);
        }
    }
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(false);
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// SIGHUP, listened for: from then on the signal reloads instead of ending the process.
#[cfg(unix)]
pub struct Hangups(Option<tokio::signal::unix::Signal>);

/// SIGHUP (not listened for on this platform).
#[cfg(not(unix))]
pub struct Hangups;

/// Starts listening for SIGHUP. Call it before the sidecar takes traffic: a SIGHUP that
/// arrives before it would end the process (the signal's default action).
#[cfg(unix)]
pub fn listen_for_sighup() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Hangups(Some(hangups)),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            Hangups(None)
        }
    }
}

/// Starts listening for SIGHUP (nothing to do on this platform).
#[cfg(not(unix))]
pub fn listen_for_sighup() -> Hangups {
    Hangups
}

#[cfg(unix)]
fn spawn_sighup(hangups: Hangups, tx: mpsc::Sender<bool>) {
    let Some(mut hangups) = hangups.0 else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            // SIGHUP always reloads, even if the file looks unchanged.
            if tx.send(true).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_sighup(_hangups: Hangups, _tx: mpsc::Sender<bool>) {}
