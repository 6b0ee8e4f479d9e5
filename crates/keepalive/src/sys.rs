//! Linux process plumbing: pidfds, `/proc/<pid>/stat`, reaping, group membership, signals.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::exit::ExitStatus;
use crate::signal::Signal;

/// `pidfd_open(2)`: a file descriptor that refers to exactly this process, readable once it has
/// exited. Unlike a pid it can never come to mean another process.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Registers an owned fd with the tokio reactor for readability.
///
/// `AsyncFd::with_interest` is deprecated since tokio 1.5x in favour of the `unsafe`
/// `register_with_interest` (a type whose `as_raw_fd` changes would break it); the workspace
/// supports tokio 1.47, and every `T` here (`OwnedFd`, `UnixDatagram`) owns one fd for its whole
/// life, which is exactly that contract.
#[allow(deprecated)]
pub(crate) fn async_fd<T: AsRawFd>(fd: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// `pidfd_send_signal(2)`: signals the process the pidfd refers to (never a reused pid).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; a null siginfo is allowed (the kernel fills in a
    // kill()-like one); flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal.as_raw(),
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `kill(-pgid, signal)`: signals every process in the group.
pub(crate) fn kill_group(pgid: i32, signal: Signal) -> io::Result<()> {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix_signal(signal)?).map_err(io::Error::from)
}

fn nix_signal(signal: Signal) -> io::Result<nix::sys::signal::Signal> {
    nix::sys::signal::Signal::try_from(signal.as_raw()).map_err(io::Error::from)
}

/// Whether the process a pidfd refers to has exited (now, without waiting).
pub(crate) fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd that lives across the call; a zero timeout never blocks.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, 0) };
    // An error (EINTR, ENOMEM) says nothing about the process: count it as running, which is the
    // cautious answer for every caller (it re-checks, or does not trust what it read).
    rc > 0
}

/// Whether `pid` is our child that has exited and not been reaped yet: its pid (and the process
/// group and session it leads) cannot be reused until we reap it.
pub(crate) fn is_unreaped_child(pid: i32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into the siginfo we own; WNOWAIT leaves the child reapable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (or left it zeroed, where si_pid reads 0).
    rc == 0 && unsafe { info.si_pid() } == pid
}

/// What `waitpid(pid, WNOHANG)` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// Our child had exited; this is its status (it is now reaped).
    Exited(ExitStatus),
    /// Our child, still running.
    Running,
    /// Not our child (or already reaped): its status is unknowable to us.
    NotOurChild,
}

/// Reaps `pid` if it is our exited child.
pub(crate) fn try_reap(pid: i32) -> Reaped {
    let mut status = 0;
    // SAFETY: waitpid writes the status word into a local we own.
    let rc = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
    match rc {
        0 => Reaped::Running,
        r if r == pid => Reaped::Exited(ExitStatus::from_wait_status(status)),
        _ => Reaped::NotOurChild,
    }
}

/// Reaps every exited child in process group `pgid` (`waitpid(-pgid, WNOHANG)` until none).
pub(crate) fn reap_group(pgid: i32, mut found: impl FnMut(i32, ExitStatus)) {
    loop {
        let mut status = 0;
        // SAFETY: as in `try_reap`.
        let rc = unsafe { libc::waitpid(-pgid, &raw mut status, libc::WNOHANG) };
        if rc <= 0 {
            return;
        }
        found(rc, ExitStatus::from_wait_status(status));
    }
}

/// Reaps every exited child of ours (`waitpid(-1, WNOHANG)` until none): for a process whose
/// every child is the service's ([`Config::dedicated`](crate::Config::dedicated)).
pub(crate) fn reap_any(mut found: impl FnMut(i32, ExitStatus)) {
    loop {
        let mut status = 0;
        // SAFETY: as in `try_reap`.
        let rc = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if rc <= 0 {
            return;
        }
        found(rc, ExitStatus::from_wait_status(status));
    }
}

/// The fields of `/proc/<pid>/stat` the supervisor relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    /// `R`, `S`, `D`, `Z`, ...
    pub(crate) state: u8,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    pub(crate) session: i32,
    /// Field 22: start time in clock ticks after boot. With the pid, it names one process forever.
    pub(crate) start_time: u64,
}

impl ProcStat {
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == b'Z' || self.state == b'X'
    }
}

/// Reads `/proc/<pid>/stat`.
pub(crate) fn read_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/<pid>/stat"))
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may contain
/// spaces and parentheses itself, so fields are counted from the *last* `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let pid = std::str::from_utf8(&text[..open]).ok()?.trim().parse().ok()?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // rest = " S ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    //          cutime cstime priority nice num_threads itrealvalue starttime ..."
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let state = *fields.first()?.as_bytes().first()?;
    Some(ProcStat {
        pid,
        state,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        // Field 22 overall; field 3 (state) is index 0 here.
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every process (zombies included), by scanning `/proc` once. A process that exits during the
/// scan may be missing; one that starts during it may be missing too.
pub(crate) fn process_table() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| read_stat(pid).ok())
        .collect()
}

/// The real uid of `pid`, from the `Uid:` line of `/proc/<pid>/status`.
pub(crate) fn read_uid(pid: i32) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Uid:")?.split_ascii_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid: line in /proc/<pid>/status"))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): start times count from the boot, so a
/// pid and start time name one process only together with it.
pub(crate) fn boot_id() -> io::Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let id = text.trim();
    if id.is_empty() || id.len() > 64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected boot_id"));
    }
    Ok(id.to_owned())
}

/// Every live (non-zombie) process whose process group is in `pgids`, by scanning `/proc`.
pub(crate) fn group_members(pgids: &BTreeSet<i32>) -> Vec<ProcStat> {
    if pgids.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| read_stat(pid).ok())
        .filter(|s| pgids.contains(&s.pgrp))
        .collect()
}

/// Our children, from `/proc/self/task/*/children` (each thread has its own list).
/// `None` when the kernel does not provide those files.
pub(crate) fn own_children() -> Option<Vec<i32>> {
    let mut out = Vec::new();
    let mut seen_any = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            seen_any = true;
            out.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    seen_any.then_some(out)
}

/// Whether `pid` descends from one of `ancestors` (following parent pids up to init).
pub(crate) fn descends_from(pid: i32, ancestors: &[i32]) -> bool {
    let mut current = pid;
    // Bounded: a parent chain is short, and a race (a process exiting mid-walk) must not loop.
    for _ in 0..256 {
        let Ok(stat) = read_stat(current) else { return false };
        if ancestors.contains(&stat.ppid) {
            return true;
        }
        if stat.ppid <= 1 {
            return false;
        }
        current = stat.ppid;
    }
    false
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are re-parented to this process, not to init.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_command_has_spaces_and_parentheses() {
        let line =
            b"4242 (my (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            ProcStat { pid: 4242, state: b'S', ppid: 1, pgrp: 4242, session: 4242, start_time: 987_654 }
        );
    }

    #[test]
    fn refuses_truncated_stat_lines() {
        assert_eq!(parse_stat(b"12 (x) S 1 2"), None);
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 x) S"), None);
    }

    proptest::proptest! {
        #[test]
        fn parses_any_command_name_and_never_panics(
            comm in "[^\u{0}]{0,16}",
            pid in 1i32..i32::MAX,
            ppid in 0i32..i32::MAX,
            pgrp in 0i32..i32::MAX,
            session in 0i32..i32::MAX,
            start in proptest::prelude::any::<u64>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let line = format!(
                "{pid} ({comm}) S {ppid} {pgrp} {session} 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 {start} 1000 10\n"
            );
            let stat = parse_stat(line.as_bytes());
            proptest::prop_assert_eq!(stat, Some(ProcStat { pid, state: b'S', ppid, pgrp, session, start_time: start }));
            let _ = parse_stat(&junk);
        }
    }

    #[test]
    fn reads_our_own_stat() {
        let me = read_stat(std::process::id() as i32).expect("own stat");
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_time > 0);
    }
}
