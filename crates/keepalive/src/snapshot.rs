//! A detached service, serialised: enough to adopt it later without ever signalling a reused pid.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::Command;
use crate::pidfile;
use crate::sys;

/// The snapshot format this version writes and reads (2: with the boot id and the uid).
pub const SNAPSHOT_VERSION: u32 = 2;

/// A snapshot file larger than this is refused without being read whole.
const MAX_FILE: u64 = 1 << 20;

/// A running service that nobody supervises right now, as [`Supervised::detach`](crate::Supervised::detach)
/// leaves it. Pass it to [`Supervisor::adopt`](crate::Supervisor::adopt) (in this or another
/// process) to resume.
///
/// The pid alone is not an identity (pids are reused); the pid together with the process start
/// time (`/proc/<pid>/stat` field 22, clock ticks after boot) and the boot it counts from is.
/// Adoption compares all three, and the process's uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] when written.
    pub version: u32,
    /// The main pid.
    pub pid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its start time: `/proc/<pid>/stat` field 22, in clock ticks after boot.
    pub start_time: u64,
    /// The boot the start time counts from (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Its real uid when the snapshot was taken.
    pub uid: u32,
    /// When supervision of it began (started, adopted, or became main), in ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// The command it was started from (what a restart runs).
    pub command: Command,
    /// Whether it had sent `READY=1` (or readiness notification was off).
    pub ready: bool,
    /// Its last `STATUS=` text.
    pub status_text: Option<String>,
    /// The `NOTIFY_SOCKET` it was given, left in place so an adopter can serve it again. An
    /// adopter binds it again only if it is verifiably a socket lifeline created (see
    /// [`Supervisor::adopt`](crate::Supervisor::adopt)); it never removes anything else.
    pub notify_socket: Option<String>,
    /// The pid file the supervisor kept, if any (for information: an adopter keeps the pid file
    /// its own configuration names, and never removes this one).
    pub pid_file: Option<PathBuf>,
}

impl Snapshot {
    /// Describes a running process that was started from `command` (for adopting a process some
    /// other tool started). Reads its start time and process group now.
    pub fn of_process(pid: u32, command: Command) -> Result<Snapshot, Error> {
        let not_running = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotRunning { pid },
            _ => Error::ProcStat { pid, source },
        };
        let stat = sys::read_stat(pid as i32).map_err(not_running)?;
        let uid = sys::read_uid(pid as i32).map_err(not_running)?;
        let boot_id = sys::boot_id().map_err(|source| Error::BootId { source })?;
        Ok(Snapshot {
            version: SNAPSHOT_VERSION,
            pid,
            pgid: stat.pgrp as u32,
            start_time: stat.start_time,
            boot_id,
            uid,
            since_unix_ms: unix_ms(std::time::SystemTime::now()),
            command,
            ready: true,
            status_text: None,
            notify_socket: None,
            pid_file: None,
        })
    }

    /// As one line of JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a snapshot written by [`Snapshot::to_json`], checking its version.
    pub fn from_json(text: &str) -> Result<Snapshot, Error> {
        let snapshot: Snapshot =
            serde_json::from_str(text).map_err(|e| Error::Snapshot { reason: e.to_string() })?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(Error::Snapshot {
                reason: format!("version {} (this build reads version {SNAPSHOT_VERSION})", snapshot.version),
            });
        }
        Ok(snapshot)
    }

    /// Reads a snapshot from a file (as [`Snapshot::write`] and
    /// [`Config::state_file`](crate::Config::state_file) keep it), checking its version.
    ///
    /// The file must be one only we could have written: a regular file (not a symbolic link, a
    /// FIFO or a device) owned by this process's effective uid or by root, not writable by its
    /// group or others, and at most 1 MiB; otherwise it is refused with
    /// [`Error::UntrustedFile`] (checked on the open file, so a file swapped in after the check is
    /// never read).
    pub fn read(path: &Path) -> Result<Snapshot, Error> {
        let text = read_trusted(path)?;
        Snapshot::from_json(&text).map_err(|err| match err {
            Error::Snapshot { reason } => Error::Snapshot { reason: format!("{}: {reason}", path.display()) },
            other => other,
        })
    }

    /// Writes it to `path` as one line of JSON, atomically (a temporary file in the same directory
    /// renamed over the path: a reader sees the previous snapshot or this one, never a mix), mode
    /// 0600 (the command's environment may hold secrets). On failure the previous file stays.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let mut line = self.to_json();
        line.push('\n');
        pidfile::replace(path, line.as_bytes(), 0o600)
            .map_err(|source| Error::StateFile { path: path.to_path_buf(), source })
    }
}

/// Reads `path` if it is a file only we (or root) could have written.
fn read_trusted(path: &Path) -> Result<String, Error> {
    let untrusted = |reason: String| Error::UntrustedFile { path: path.to_path_buf(), reason };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Never follow a symlink; never block opening a FIFO swapped in (its type is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => untrusted("it is a symbolic link".to_owned()),
            _ => Error::ReadSnapshot { path: path.to_path_buf(), source },
        })?;
    let meta = file.metadata().map_err(|source| Error::ReadSnapshot { path: path.to_path_buf(), source })?;
    trusted(&meta, nix::unistd::geteuid().as_raw()).map_err(untrusted)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::ReadSnapshot { path: path.to_path_buf(), source })?;
    if text.len() as u64 > MAX_FILE {
        return Err(Error::Snapshot { reason: format!("{}: larger than {MAX_FILE} bytes", path.display()) });
    }
    Ok(text)
}

/// Why a state file with metadata `meta` is not to be trusted by a process with effective uid
/// `euid`, if it is not.
fn trusted(meta: &std::fs::Metadata, euid: u32) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!("owned by uid {} (not by uid {euid} or root)", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!("writable by group or others (mode {mode:04o})"));
    }
    Ok(())
}

pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
