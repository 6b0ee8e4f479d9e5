//! The environment protocol: `LIFELINE_*` and systemd's `LISTEN_*` variables, parsed without I/O.

use std::os::fd::RawFd;

use crate::Error;

/// `name=fd,name=fd,...`: the named file descriptors a successor inherits.
pub(crate) const LIFELINE_FDS: &str = "LIFELINE_FDS";
/// The fd number of the read end of the state pipe in the successor.
pub(crate) const LIFELINE_STATE_FD: &str = "LIFELINE_STATE_FD";
/// The fd number of the write end of the readiness pipe in the successor.
pub(crate) const LIFELINE_READY_FD: &str = "LIFELINE_READY_FD";
/// The pid of the process that started the successor: the variables above are meant for a
/// process whose parent has this pid, like systemd's `LISTEN_PID` (an unrelated descendant that
/// inherited the environment ignores them).
pub(crate) const LIFELINE_PARENT_PID: &str = "LIFELINE_PARENT_PID";

pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// systemd passes socket-activated fds from this number on (`SD_LISTEN_FDS_START`).
pub(crate) const SD_LISTEN_FDS_START: RawFd = 3;
/// More fds than this in one environment is not a real configuration (systemd's own limit on
/// `LISTEN_FDS` is far lower in practice); refusing it keeps a malformed value from costing memory.
pub(crate) const MAX_FDS: usize = 4096;

/// Longest name accepted (systemd's `FDNAME=` limit).
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` can travel in `LIFELINE_FDS`, `LISTEN_FDNAMES` and `FDNAME=`: 1 to 255
/// printable ASCII characters other than `=`, `,` and `:`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed"
    } else if name.contains(['=', ',', ':']) {
        "`=`, `,` and `:` are separators"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_owned(), reason })
}

/// Formats `LIFELINE_FDS`: `name=fd` pairs joined by `,`. Names must be valid
/// ([`validate_name`]); the registry checks them on registration.
pub(crate) fn format_fds<'a>(fds: impl IntoIterator<Item = (&'a str, RawFd)>) -> String {
    let mut out = String::new();
    for (name, fd) in fds {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&fd.to_string());
    }
    out
}

/// Parses `LIFELINE_FDS`. The empty string is an empty list. Rejects invalid names, fd numbers
/// below 3 (the standard streams are never handed over), and an fd or a name that appears twice.
pub(crate) fn parse_fds(value: &str) -> Result<Vec<(String, RawFd)>, Error> {
    let bad = |reason: String| Error::Env { var: LIFELINE_FDS, value: value.to_owned(), reason };
    let mut out: Vec<(String, RawFd)> = Vec::new();
    if value.is_empty() {
        return Ok(out);
    }
    for pair in value.split(',') {
        if out.len() == MAX_FDS {
            return Err(bad(format!("more than {MAX_FDS} file descriptors")));
        }
        let Some((name, fd)) = pair.split_once('=') else {
            return Err(bad(format!("{pair:?} is not name=fd")));
        };
        validate_name(name).map_err(|e| bad(e.to_string()))?;
        let fd = parse_fd(fd).ok_or_else(|| bad(format!("{fd:?} is not a file descriptor number")))?;
        if fd < SD_LISTEN_FDS_START {
            return Err(bad(format!("fd {fd} is a standard stream")));
        }
        if out.iter().any(|(n, f)| n == name || *f == fd) {
            return Err(bad(format!("{name}={fd} repeats a name or a file descriptor")));
        }
        out.push((name.to_owned(), fd));
    }
    Ok(out)
}

/// What a spawned successor inherits, as its environment names it: the named fds, the read end
/// of the state pipe and the write end of the readiness pipe. Every number appears once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SuccessorFds {
    pub(crate) fds: Vec<(String, RawFd)>,
    pub(crate) state: RawFd,
    pub(crate) ready: RawFd,
}

/// Parses `LIFELINE_FDS`, `LIFELINE_STATE_FD` and `LIFELINE_READY_FD` together (a missing
/// `LIFELINE_FDS` is an empty list; the two pipes are required). Each fd number may be named only
/// once across the three: a number named twice would get two owners (two `OwnedFd`s, two closes).
pub(crate) fn parse_successor_fds(
    fds: Option<&str>,
    state: Option<&str>,
    ready: Option<&str>,
) -> Result<SuccessorFds, Error> {
    let fds = parse_fds(fds.unwrap_or_default())?;
    let pipe = |var: &'static str, value: Option<&str>| {
        let value = value.unwrap_or_default();
        match parse_fd(value) {
            Some(fd) if fd >= SD_LISTEN_FDS_START => Ok(fd),
            _ => Err(Error::Env {
                var,
                value: value.to_owned(),
                reason: "not a file descriptor number ≥ 3".to_owned(),
            }),
        }
    };
    let state = pipe(LIFELINE_STATE_FD, state)?;
    let ready = pipe(LIFELINE_READY_FD, ready)?;
    let named = |fd: RawFd| fds.iter().find(|(_, f)| *f == fd).map(|(name, _)| name.as_str());
    let twice = |var: &'static str, fd: RawFd, other: String| Error::Env {
        var,
        value: fd.to_string(),
        reason: format!("fd {fd} is also {other}"),
    };
    if let Some(name) = named(state) {
        return Err(twice(LIFELINE_STATE_FD, state, format!("{name:?} in {LIFELINE_FDS}")));
    }
    if let Some(name) = named(ready) {
        return Err(twice(LIFELINE_READY_FD, ready, format!("{name:?} in {LIFELINE_FDS}")));
    }
    if ready == state {
        return Err(twice(LIFELINE_READY_FD, ready, LIFELINE_STATE_FD.to_owned()));
    }
    Ok(SuccessorFds { fds, state, ready })
}

/// Refuses socket-activated fds (`listen`, parsed from `LISTEN_FDS` = `listen_fds`) that the
/// predecessor's variables name too: both apply only when systemd started a process that is
/// also a spawned successor, and then one number must not get two owners either.
pub(crate) fn check_disjoint(
    successor: &SuccessorFds,
    listen: &[(String, RawFd)],
    listen_fds: &str,
) -> Result<(), Error> {
    for (listen_name, fd) in listen {
        let other = if *fd == successor.state {
            Some(LIFELINE_STATE_FD.to_owned())
        } else if *fd == successor.ready {
            Some(LIFELINE_READY_FD.to_owned())
        } else {
            successor.fds.iter().find(|(_, f)| f == fd).map(|(name, _)| format!("{name:?} in {LIFELINE_FDS}"))
        };
        if let Some(other) = other {
            return Err(Error::Env {
                var: LISTEN_FDS,
                value: listen_fds.to_owned(),
                reason: format!("fd {fd} ({listen_name:?}) is also {other}"),
            });
        }
    }
    Ok(())
}

/// A decimal fd number without sign or leading `+`.
pub(crate) fn parse_fd(text: &str) -> Option<RawFd> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses a decimal pid (`LISTEN_PID`, `LIFELINE_PARENT_PID`).
pub(crate) fn parse_pid(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|pid| *pid > 0)
}

/// Interprets systemd's socket-activation variables for the process `my_pid` (`sd_listen_fds(3)`).
///
/// Returns no fds when `LISTEN_PID` is unset or names another process (the variables were
/// inherited from an ancestor and are not for us), or when `LISTEN_FDS=0` (with an empty or
/// missing `LISTEN_FDNAMES`, as libsystemd accepts it). Names come from `LISTEN_FDNAMES` when set
/// (an empty element stays empty, as in libsystemd), else every fd is named `unknown`.
pub(crate) fn parse_listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(String, RawFd)>, Error> {
    let Some(pid_text) = listen_pid else { return Ok(Vec::new()) };
    let pid = parse_pid(pid_text).ok_or_else(|| Error::Env {
        var: LISTEN_PID,
        value: pid_text.to_owned(),
        reason: "not a pid".to_owned(),
    })?;
    if pid != my_pid {
        return Ok(Vec::new());
    }
    let Some(count_text) = listen_fds else { return Ok(Vec::new()) };
    let bad_count = |reason: &str| Error::Env {
        var: LISTEN_FDS,
        value: count_text.to_owned(),
        reason: reason.to_owned(),
    };
    let count = parse_fd(count_text).ok_or_else(|| bad_count("not a count"))? as usize;
    if count > MAX_FDS {
        return Err(bad_count("too many file descriptors"));
    }
    let names: Vec<String> = match listen_fdnames {
        // No fds, no names: libsystemd accepts `LISTEN_FDS=0` with an empty `LISTEN_FDNAMES`.
        // (With one fd, the empty string is that fd's empty name.)
        Some("") if count == 0 => Vec::new(),
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); count],
    };
    if names.len() != count {
        return Err(Error::Env {
            var: LISTEN_FDNAMES,
            value: listen_fdnames.unwrap_or_default().to_owned(),
            reason: format!("{} names for {count} file descriptors", names.len()),
        });
    }
    Ok(names.into_iter().zip(SD_LISTEN_FDS_START..).collect())
}

#[cfg(test)]
mod tests;
