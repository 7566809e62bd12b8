//! Hot reload of the local config directory.
//!
//! Polling, not inotify: it is robust to editors that save by rename, to
//! bind-mounted and network filesystems, and to the directory itself being
//! replaced; its cost is one `stat` per file per interval. A new [`Loaded`]
//! is published only when the content's meaning changed.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{Loaded, load_dir};

/// Name, modification time and size of every file: what "changed" means.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.modified().ok(), meta.len()))
        })
        .collect();
    files.sort();
    files
}

/// Loads `dir` now, then re-loads it whenever its files change. The receiver
/// always holds the latest load; the task ends when every receiver is gone.
pub fn watch(dir: PathBuf, interval: Duration) -> (watch::Receiver<Arc<Loaded>>, JoinHandle<()>) {
    let first = load_dir(&dir);
    report(&first);
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        let mut seen = fingerprint(&dir);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            let reloaded = load_dir(&dir);
            if **tx.borrow() != reloaded {
                report(&reloaded);
                let _ = tx.send(Arc::new(reloaded));
            }
        }
    });
    (rx, task)
}

pub(super) fn report(loaded: &Loaded) {
    for error in &loaded.errors {
        tracing::warn!("config: {error}");
    }
    tracing::info!(
        namespaces = loaded.snapshot.namespaces.len(),
        pods = loaded.snapshot.pods.len(),
        services = loaded.snapshot.services.len(),
        errors = loaded.errors.len(),
        "config loaded"
    );
}
