//! Restart when the executable changes (overseer's most requested feature): the directory of the
//! executable is watched, and a new file installed at its path (rename into place, as package
//! managers do) triggers a handover once it is a complete, executable regular file.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::Running;

/// Events closer together than this are one installation.
const SETTLE: Duration = Duration::from_millis(300);

/// Device and inode of `path` if it is an executable regular file with content.
fn installed(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.len() > 0 && meta.permissions().mode() & 0o111 != 0)
        .then(|| (meta.dev(), meta.ino()))
}

/// Watches `exe` until the service stops; restarts when another file is installed at its path.
pub(crate) async fn watch(running: Running, exe: PathBuf) {
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name().map(ToOwned::to_owned)) else {
        tracing::warn!(exe = %exe.display(), "cannot watch the executable: no directory");
        return;
    };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(err) => {
            return tracing::warn!(error = &err as &dyn std::error::Error, "cannot watch the executable");
        }
    };
    if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        return tracing::warn!(error = &err as &dyn std::error::Error, dir = %dir.display(), "cannot watch the executable's directory");
    }
    tracing::info!(exe = %exe.display(), "restarting when the executable changes");
    // The file this process runs (the kernel keeps it even once replaced), or the last one tried:
    // only another one triggers a restart — also one installed before the watch began.
    let mut current = std::fs::metadata("/proc/self/exe").ok().map(|meta| (meta.dev(), meta.ino()));
    let stopped = running.stopped();
    tokio::pin!(stopped);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = &mut stopped => return,
                event = events.recv() => if event.is_none() { return },
            }
        }
        // Let the installation finish: no event for a moment.
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                event = events.recv() => if event.is_none() { return },
                () = tokio::time::sleep(SETTLE) => break,
            }
        }
        let now = installed(&exe);
        if now.is_none() || now == current {
            continue;
        }
        current = now;
        tracing::info!(exe = %exe.display(), "a new executable was installed; restarting");
        match running.restart().await {
            Ok(pid) => tracing::info!(pid, "handed over to the new executable"),
            // A broken binary is refused like any failed restart; the next installation retries.
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "the new executable did not take over"
                );
            }
        }
    }
}
