//! Re-reading the certificate material when its files change.
//!
//! The files' directories are watched, not the files: tools replace a certificate by
//! writing a new file and renaming it into place, and Kubernetes swaps a `..data`
//! symlink beside the files; a watch on the file itself sees neither. Any change in a
//! watched directory (debounced) reads the three files, and bytes that differ from the
//! last read are applied through [`Credentials::apply`]: valid material is swapped in,
//! invalid material is logged with its file and reason and the old material keeps
//! serving. A re-read every minute catches events the OS dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::credentials::{Contents, Credentials};
use super::error::{CredentialsError, Problem};

/// Events closer together than this are one change (a rename and a chmod, three files).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// How often the files are read without an event.
const RECHECK: Duration = Duration::from_secs(60);

/// Keeps [`Credentials`] current with their files until dropped.
#[derive(Debug)]
pub struct CredentialsWatcher {
    task: JoinHandle<()>,
}

impl Drop for CredentialsWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `credentials`' files (call from within a tokio runtime).
pub fn watch(credentials: Arc<Credentials>) -> Result<CredentialsWatcher, CredentialsError> {
    let files = credentials.files().clone();
    let paths = [&files.certificate, &files.private_key, &files.trust_bundle];
    // What was last read: the files the current material came from, to begin with (they
    // may have changed between the load and this watch).
    let mut last = Some(credentials.current().fingerprint());
    let task = follow_files(&paths, move || {
        apply_if_changed(&credentials, &mut last);
        true
    })?;
    Ok(CredentialsWatcher { task })
}

/// Calls `on_change` (from a task) after each change in the directories of `paths`
/// (debounced) and every [`RECHECK`] without one, until it returns `false`. Call from
/// within a tokio runtime.
pub(super) fn follow_files<F>(
    paths: &[&PathBuf],
    mut on_change: F,
) -> Result<JoinHandle<()>, CredentialsError>
where
    F: FnMut() -> bool + Send + 'static,
{
    // One pending signal is enough: every signal means "read the files".
    let (tx, mut changes) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => !event.kind.is_access(),
            // A lost event (queue overflow) may have been ours.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| {
        let first = paths.first().map(|p| p.to_path_buf()).unwrap_or_default();
        CredentialsError::new(first, Problem::Unwatchable(e.to_string()))
    })?;
    for directory in directories(paths) {
        watcher
            .watch(&directory, RecursiveMode::NonRecursive)
            .map_err(|e| CredentialsError::new(&directory, Problem::Unwatchable(e.to_string())))?;
    }
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                changed = changes.recv() => {
                    if changed.is_none() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(RECHECK) => {}
            }
            if !on_change() {
                return;
            }
        }
    }))
}

/// Reads the files and applies them if they differ from `last`; logs the outcome.
fn apply_if_changed(credentials: &Credentials, last: &mut Option<u64>) {
    let contents = match Contents::read(credentials.files()) {
        Ok(contents) => contents,
        Err(error) => {
            // Logged once per outage, not at every event in the directory.
            if last.take().is_some() {
                tracing::error!(
                    "TLS credentials reload refused, the previous certificate keeps serving: {error}"
                );
            }
            return;
        }
    };
    let fingerprint = contents.fingerprint();
    if *last == Some(fingerprint) {
        return;
    }
    *last = Some(fingerprint);
    match credentials.apply(&contents) {
        Ok(material) => tracing::info!(
            identity = material.identity().map(tracing::field::display),
            serial = %material.certificate().serial_hex(),
            not_after = %humantime::format_rfc3339_seconds(material.certificate().not_after()),
            "TLS credentials reloaded"
        ),
        Err(error) => tracing::error!(
            "TLS credentials reload refused, the previous certificate keeps serving: {error}"
        ),
    }
}

/// The directories holding the files and, for symlinks, their targets.
fn directories(paths: &[&PathBuf]) -> Vec<PathBuf> {
    let mut directories: Vec<PathBuf> = Vec::new();
    for path in paths {
        let linked = std::path::absolute(path).ok();
        let target = std::fs::canonicalize(path).ok();
        for file in [linked, target].into_iter().flatten() {
            if let Some(directory) = file.parent().map(Path::to_path_buf) {
                if !directories.contains(&directory) {
                    directories.push(directory);
                }
            }
        }
    }
    directories
}
