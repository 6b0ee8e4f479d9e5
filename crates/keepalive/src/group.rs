//! Stopping a service's processes: signal them (its process groups, its sessions, the descendants
//! of its main processes), wait on pidfds with a deadline, then `SIGKILL`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, timeout_at};

use crate::signal::Signal;
use crate::sys::{self, ProcStat};

/// How long to wait for processes to disappear after `SIGKILL` before giving up on them (a process
/// in uninterruptible sleep can take a while; one stuck forever must not hang the supervisor).
const AFTER_KILL: Duration = Duration::from_secs(10);

/// A process to stop, held by a pidfd, with the process group it was in.
pub(crate) struct Target<'a> {
    pub(crate) pid: i32,
    pub(crate) pidfd: &'a AsyncFd<OwnedFd>,
    pub(crate) pgid: i32,
}

/// Which processes, besides the [`Target`]s, belong to the service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// Process groups, signalled as a whole (`kill(-pgid)`).
    pub(crate) groups: BTreeSet<i32>,
    /// Sessions: every process in one of them is the service's.
    pub(crate) sessions: BTreeSet<i32>,
    /// Every descendant of the targets that are still running is the service's.
    pub(crate) target_descendants: bool,
    /// Every descendant of this process is the service's (a process that exists only to
    /// supervise it: [`Config::dedicated`](crate::Config::dedicated)).
    pub(crate) our_descendants: bool,
}

impl Scope {
    /// Just these process groups (what is left of a crashed group; a hung main process's group).
    pub(crate) fn groups(groups: BTreeSet<i32>) -> Scope {
        Scope { groups, ..Scope::default() }
    }
}

/// This process: never signalled, nor its process group or session.
#[derive(Debug, Clone, Copy)]
struct Us {
    pid: i32,
    pgid: i32,
    session: i32,
}

impl Us {
    fn now() -> Us {
        Us {
            pid: std::process::id() as i32,
            pgid: nix::unistd::getpgrp().as_raw(),
            session: nix::unistd::getsid(None).map_or(-1, nix::unistd::Pid::as_raw),
        }
    }

    fn excludes(&self, stat: &ProcStat) -> bool {
        stat.pid <= 1 || stat.pid == self.pid || stat.pgrp == self.pgid || stat.session == self.session
    }
}

/// The live (non-zombie) processes in `scope` besides the targets themselves, from one `/proc`
/// scan. Never this process, its process group or its session, nor init.
pub(crate) fn members(targets: &[Target<'_>], scope: &Scope) -> Vec<ProcStat> {
    let us = Us::now();
    let table = sys::process_table();
    // Roots whose descendants count: a target counts only if it is still running *after* the scan
    // (its pid named it during the scan, not a process that reused the pid since).
    let mut roots: Vec<i32> = Vec::new();
    if scope.target_descendants {
        roots.extend(targets.iter().filter(|t| !sys::pidfd_exited(t.pidfd.as_fd())).map(|t| t.pid));
    }
    if scope.our_descendants {
        roots.push(us.pid);
    }
    let descendants = descendants_of(&table, &roots);
    let target_pids: BTreeSet<i32> = targets.iter().map(|t| t.pid).collect();
    table
        .into_iter()
        .filter(|s| !s.is_zombie() && !us.excludes(s) && !target_pids.contains(&s.pid))
        .filter(|s| {
            scope.groups.contains(&s.pgrp)
                || scope.sessions.contains(&s.session)
                || descendants.contains(&s.pid)
        })
        .collect()
}

/// The pids in `table` that descend from one of `roots` (the roots themselves excluded).
fn descendants_of(table: &[ProcStat], roots: &[i32]) -> HashSet<i32> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for stat in table {
        children.entry(stat.ppid).or_default().push(stat.pid);
    }
    let mut found = HashSet::new();
    let mut queue: Vec<i32> = roots.to_vec();
    while let Some(parent) = queue.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if found.insert(child) {
                queue.push(child);
            }
        }
    }
    found
}

/// How a [`terminate`] ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// `SIGKILL` was needed.
    pub(crate) killed: bool,
    /// Processes still there after `SIGKILL` (uninterruptible sleep): pids.
    pub(crate) survivors: Vec<u32>,
}

/// Delivers one signal to a service's processes, each exactly once, also to processes that join
/// while it waits (forks, orphans re-parented to us).
struct Sweep {
    signal: Signal,
    /// Processes that got it: (pid, start time), which together name one process.
    done: HashSet<(i32, u64)>,
    /// Whether the groups and targets were signalled.
    started: bool,
    /// Whether members were looked at since.
    delivered: bool,
}

impl Sweep {
    fn new(signal: Signal) -> Sweep {
        Sweep { signal, done: HashSet::new(), started: false, delivered: false }
    }

    /// Signals the groups and the targets outside them, once.
    fn start(&mut self, targets: &[Target<'_>], scope: &Scope) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let us = Us::now();
        for &pgid in scope.groups.iter().filter(|g| **g > 1 && **g != us.pgid) {
            if let Err(err) = sys::kill_group(pgid, self.signal) {
                tracing::debug!(pgid, signal = %self.signal, %err, "cannot signal process group");
            }
        }
        // A target outside those groups (a successor that made its own group) gets it directly.
        for target in targets.iter().filter(|t| !scope.groups.contains(&t.pgid)) {
            if let Err(err) = sys::pidfd_send_signal(target.pidfd.as_fd(), self.signal) {
                tracing::debug!(pid = target.pid, signal = %self.signal, %err, "cannot signal process");
            }
        }
    }

    /// Signals every member that has not had the signal. `members` must be scanned after
    /// [`start`](Sweep::start): the first time, members of the signalled groups had it through
    /// their group (or were forked after it: they are waited for, not signalled twice at a risk).
    fn deliver(&mut self, scope: &Scope, members: &[ProcStat]) {
        if !std::mem::replace(&mut self.delivered, true) {
            for member in members.iter().filter(|m| scope.groups.contains(&m.pgrp)) {
                self.done.insert((member.pid, member.start_time));
            }
        }
        for member in members {
            if self.done.insert((member.pid, member.start_time)) {
                signal_member(member, self.signal);
            }
        }
    }
}

/// Signals a process found in `/proc` through a pidfd, only if the pidfd is provably the process
/// that was found (same start time, still running after the check): never a reused pid.
fn signal_member(member: &ProcStat, signal: Signal) {
    let Ok(pidfd) = sys::pidfd_open(member.pid) else { return };
    let same = sys::read_stat(member.pid).is_ok_and(|now| now.start_time == member.start_time);
    if !same || sys::pidfd_exited(pidfd.as_fd()) {
        return;
    }
    tracing::debug!(pid = member.pid, %signal, "signalling a process of the service");
    if let Err(err) = sys::pidfd_send_signal(pidfd.as_fd(), signal) {
        tracing::debug!(pid = member.pid, %signal, %err, "cannot signal process");
    }
}

/// Signals `targets` and every process in `scope`, waits up to `grace` (`None`: without a limit)
/// for all of them to be gone — processes that join meanwhile (forks, orphans re-parented to us)
/// get the signal too — then `SIGKILL`s whatever is left.
///
/// Each process gets each signal once: a process in one of the scope's groups gets it through its
/// group only (a second SIGTERM means "stop *now*" to many servers). The caller's own process,
/// process group and session are never signalled.
pub(crate) async fn terminate(
    targets: &[Target<'_>],
    scope: &Scope,
    signal: Signal,
    grace: Option<Duration>,
) -> Ended {
    let mut sweeps = vec![Sweep::new(signal)];
    if signal != Signal::KILL && signal.as_raw() != libc::SIGCONT {
        // A stopped process cannot act on the stop signal until it is continued (systemd does this too).
        sweeps.push(Sweep::new(Signal::from_raw(libc::SIGCONT)));
    }
    let deadline = grace.and_then(|grace| Instant::now().checked_add(grace));
    if wait_gone(targets, scope, deadline, &mut sweeps).await {
        return Ended::default();
    }
    tracing::warn!(groups = ?scope.groups, sessions = ?scope.sessions, grace = ?grace, "still running after the grace period; sending SIGKILL");
    let mut kill = vec![Sweep::new(Signal::KILL)];
    if wait_gone(targets, scope, Instant::now().checked_add(AFTER_KILL), &mut kill).await {
        return Ended { killed: true, survivors: Vec::new() };
    }
    let mut survivors: Vec<u32> = targets
        .iter()
        .filter(|t| !sys::pidfd_exited(t.pidfd.as_fd()))
        .map(|t| t.pid as u32)
        .chain(members(targets, scope).iter().map(|m| m.pid as u32))
        .collect();
    survivors.sort_unstable();
    tracing::error!(?survivors, "processes survived SIGKILL for {AFTER_KILL:?}; giving up on them");
    Ended { killed: true, survivors }
}

/// Delivers `sweeps` and waits until every target has exited and no live process is left in
/// `scope`, or until `deadline`. Event-driven: it sleeps on pidfds, and scans `/proc` only to
/// find out which processes to signal and sleep on (again after they fired, to catch forks and
/// orphans re-parented to us).
async fn wait_gone(
    targets: &[Target<'_>],
    scope: &Scope,
    deadline: Option<Instant>,
    sweeps: &mut [Sweep],
) -> bool {
    loop {
        for sweep in sweeps.iter_mut() {
            sweep.start(targets, scope);
        }
        let members = members(targets, scope);
        for sweep in sweeps.iter_mut() {
            sweep.deliver(scope, &members);
        }
        for target in targets {
            if !within(deadline, target.pidfd.readable()).await {
                return false;
            }
        }
        if members.is_empty() {
            // The targets are gone; one more look catches what joined meanwhile.
            if self::members(targets, scope).is_empty() {
                return true;
            }
            continue;
        }
        let fds: Vec<AsyncFd<OwnedFd>> = members
            .iter()
            .filter_map(|m| sys::pidfd_open(m.pid).ok())
            .filter_map(|fd| sys::async_fd(fd).ok())
            .collect();
        for fd in &fds {
            if !within(deadline, fd.readable()).await {
                return false;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if fds.len() < members.len() {
            // No pidfd for some (out of file descriptors): nothing to sleep on, so look again a
            // little later rather than spin.
            let later = Instant::now() + Duration::from_millis(50);
            tokio::time::sleep_until(deadline.map_or(later, |d| d.min(later))).await;
        }
        // Everything we saw has exited; let its parent (or us) reap it before looking again.
        tokio::task::yield_now().await;
    }
}

/// Awaits `future` until `deadline` (`None`: for ever); whether it finished in time.
async fn within<F: std::future::Future>(deadline: Option<Instant>, future: F) -> bool {
    if let Some(deadline) = deadline {
        timeout_at(deadline, future).await.is_ok()
    } else {
        future.await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, parent: i32) -> ProcStat {
        ProcStat { pid, state: b'S', ppid: parent, pgrp: pid, session: pid, start_time: 1 }
    }

    #[test]
    fn descendants_follow_the_parent_links_from_every_root() {
        let table = [stat(10, 1), stat(11, 10), stat(12, 11), stat(20, 1), stat(21, 20), stat(30, 12)];
        let found = descendants_of(&table, &[10]);
        assert_eq!(found, HashSet::from([11, 12, 30]));
        assert_eq!(descendants_of(&table, &[10, 20]), HashSet::from([11, 12, 30, 21]));
        assert!(descendants_of(&table, &[]).is_empty());
    }

    #[test]
    fn a_parent_loop_in_a_racy_table_does_not_hang() {
        // Pids are reused while /proc is read: a table can hold a cycle.
        let table = [stat(10, 11), stat(11, 10)];
        assert_eq!(descendants_of(&table, &[10]), HashSet::from([10, 11]));
    }
}
