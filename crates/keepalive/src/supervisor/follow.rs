//! Following the service's main process: notifications (`NOTIFY_SOCKET`), `MAINPID=`
//! handovers, rollbacks (a retired process naming itself), and the retired processes' drain
//! deadline and cap.

use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use crate::event::{EventKind, RetiredStop};
use crate::exit::ExitStatus;
use crate::notify::{Message, Notification, Watchdog};
use crate::policy::humanize;
use crate::signal::Signal;
use crate::sys;

use super::handle::State;
use super::task::{DRAIN_LIMIT, Ending, Proc, Task, any_exited, next_signal, recv_notify, sleep_until};

impl Task {
    pub(super) fn drain_notify(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            let Some(socket) = &self.notify else { return };
            match socket.try_recv() {
                Ok(Some(message)) => self.on_message(&message),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = &err as &dyn std::error::Error, "notify socket receive failed");
                    return;
                }
            }
        }
    }

    pub(super) fn on_message(&mut self, message: &Message) {
        if message.truncated {
            tracing::warn!(pid = ?message.pid, "ignoring an oversized notification");
            return;
        }
        let Some(main_pid) = self.main.as_ref().map(|m| m.pid) else {
            // Backing off after a crash: a retired process may still take the service back.
            if let Some(index) = self.retired.iter().position(|p| Some(p.pid) == message.pid) {
                self.message_from_retired(index, message);
                return;
            }
            tracing::debug!(sender = ?message.pid, "ignoring a notification: no main process");
            return;
        };
        if message.pid != Some(main_pid) {
            if let Some(index) = self.retired.iter().position(|p| Some(p.pid) == message.pid) {
                self.message_from_retired(index, message);
                return;
            }
            // systemd's NotifyAccess=main: only the main process speaks for the service.
            tracing::debug!(sender = ?message.pid, main_pid, "ignoring a notification from a process that is not the main pid");
            return;
        }
        let note = Notification::parse(&message.text);
        tracing::debug!(pid = main_pid, fds = message.fds, text = %message.text.trim_end(), "notification");
        // systemd applies MAINPID= before READY=1 of the same message.
        match note.main_pid {
            Some(Ok(new)) => self.follow(new as i32),
            Some(Err(ref text)) => tracing::warn!(%text, "ignoring an invalid MAINPID="),
            None => {}
        }
        let now = Instant::now();
        if let Some(pending) = &mut self.pending_restart
            && pending.from == Some(main_pid)
            && self.main.as_ref().is_some_and(|m| m.pid == main_pid)
        {
            if note.reloading {
                pending.reloading = true;
            } else if note.ready && pending.reloading && note.main_pid.is_none() {
                // RELOADING=1 … READY=1 from the same process: it is serving on, without a
                // successor (lifeline::service says so after a failed handover).
                pending.failed = Some(format!(
                    "pid {main_pid} is ready again without naming a successor (its handover failed)"
                ));
            }
        }
        if note.ready
            && let Some(main) = self.main.as_mut()
            && main.ready_at.is_none()
        {
            main.ready_at = Some(now);
            self.start_deadline = None;
            let pid = main.pid as u32;
            tracing::info!(pid, "service is ready");
            // The file first: whoever sees the event finds it up to date.
            if self.config.state_file.is_some()
                && let Err(err) = self.write_files(false)
            {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "cannot update the state file; keeping the previous one"
                );
            }
            self.emit(EventKind::Ready { pid });
        }
        if let Some(text) = note.status {
            self.status_text = Some(text.clone());
            self.emit(EventKind::Status { pid: main_pid as u32, text });
        }
        if let Some(usec) = note.watchdog_usec {
            // From the service: an interval too long to add to the clock never expires.
            self.watchdog_interval = Some(Duration::from_micros(usec));
            self.watchdog_deadline = now.checked_add(Duration::from_micros(usec));
        }
        match note.watchdog {
            Some(Watchdog::Ping) => {
                if let Some(interval) = self.watchdog_interval {
                    self.watchdog_deadline = now.checked_add(interval);
                }
            }
            Some(Watchdog::Trigger) => self.watchdog_deadline = Some(now),
            None => {}
        }
        if note.stopping {
            tracing::info!(pid = main_pid, "service is stopping");
        }
        if note.reloading {
            tracing::info!(pid = main_pid, "service is reloading");
        }
        self.publish(State::Running);
    }

    /// `MAINPID=new` from the current main process: supervision moves to `new`. No restart, no
    /// backoff; the previous main process may keep running a while to drain.
    pub(super) fn follow(&mut self, new: i32) {
        let Some(old) = self.main.as_ref() else { return };
        if new == old.pid {
            return;
        }
        let old_ready = old.ready_at.is_some();
        // The pidfd first: from here on `new` cannot come to mean another process unnoticed.
        let (mut proc, stat) = match Proc::open_stat(new, Instant::now(), false) {
            Ok(opened) => opened,
            Err(err) => {
                tracing::warn!(
                    new,
                    error = &err as &dyn std::error::Error,
                    "ignoring MAINPID=: not a running process"
                );
                return;
            }
        };
        // Like systemd's cgroup check, the new main pid must belong to the service *now*.
        let belongs = self.is_successor(old, &stat);
        // What /proc said was about the process the pidfd holds only if it is still running.
        if !belongs || proc.exited() {
            tracing::warn!(new, "ignoring MAINPID=: that process does not belong to the service");
            return;
        }
        if old_ready || self.ready_at_start() {
            proc.ready_at = Some(proc.since);
        }
        let old_pid = old.pid;
        if let Some(mut previous) = self.main.take() {
            previous.retired_at = Some(Instant::now());
            self.retired.push(previous);
        }
        self.main_pid_changes += 1;
        tracing::info!(old = old_pid, new, "following the new main pid");
        if let Err(err) = self.install_main(proc) {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "cannot update the file; keeping the previous one"
            );
        }
        self.emit(EventKind::MainPidChanged { old: old_pid as u32, new: new as u32 });
        self.enforce_max_retired();
    }

    /// A notification from a retired process. Only one thing is accepted from it: `MAINPID=`
    /// naming itself once the main process has exited (or nothing is the main process) — a
    /// predecessor in its rollback window taking the service back after its successor died.
    /// Anything else from it is ignored, as systemd ignores what is not the main pid's.
    pub(super) fn message_from_retired(&mut self, index: usize, message: &Message) {
        let Some(sender) = message.pid else { return };
        let note = Notification::parse(&message.text);
        let names_itself = matches!(note.main_pid, Some(Ok(pid)) if pid as i32 == sender);
        let main_gone = self.main.as_ref().is_none_or(Proc::exited);
        if !names_itself || !main_gone || self.retired[index].ending.is_some() || self.retired[index].exited()
        {
            tracing::debug!(sender, main_gone, "ignoring a notification from a retired process");
            return;
        }
        let mut proc = self.retired.remove(index);
        proc.retired_at = None;
        let now = Instant::now();
        proc.since = now;
        proc.since_wall = SystemTime::now();
        proc.ready_at = (note.ready || self.ready_at_start()).then_some(now);
        let (from, status) = match self.main.take() {
            Some(crashed) => {
                let status = self.collect_status(crashed.pid);
                (Some(crashed.pid as u32), status)
            }
            None => (None, ExitStatus::Unknown),
        };
        if from.is_some() {
            self.last_exit = Some(status);
        }
        self.rollbacks += 1;
        self.main_pid_changes += 1;
        tracing::warn!(from = ?from, to = sender, %status, "rolled back: a previous main process took the service back");
        if let Err(err) = self.install_main(proc) {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "cannot update the file; keeping the previous one"
            );
        }
        if let Some(text) = note.status {
            self.status_text = Some(text);
        }
        self.emit(EventKind::RolledBack { from, status, to: sender as u32 });
        if note.ready {
            self.emit(EventKind::Ready { pid: sender as u32 });
        }
        self.publish(State::Running);
    }

    /// Whether the process `stat` describes may become the main process after `old`: it descends
    /// from `old` (while `old`'s pid is still `old`'s), or it is in `old`'s session (a session id
    /// held by a running or unreaped process cannot be reused), or — a dedicated subreaper — it
    /// is our child, which every child of a dedicated supervisor is the service's. Sessions of
    /// earlier main processes do not count: they may be empty and their ids reused by anyone.
    pub(super) fn is_successor(&self, old: &Proc, stat: &sys::ProcStat) -> bool {
        if stat.pid <= 1
            || stat.pid == self.own_pid
            || stat.pgrp == self.own_pgid
            || stat.session == self.own_session
        {
            return false;
        }
        let old_holds_its_pid = !old.exited() || sys::is_unreaped_child(old.pid);
        if old_holds_its_pid && sys::descends_from(stat.pid, &[old.pid]) {
            return true;
        }
        if stat.session == old.session {
            return true;
        }
        self.config.subreaper && self.config.dedicated && stat.ppid == self.own_pid
    }

    /// After the main process exited: while a retired process still runs, wait up to
    /// [`Config::rollback_grace`] for it to take the service back (`MAINPID=` naming itself).
    /// `true` if one did.
    pub(super) async fn await_rollback(&mut self) -> bool {
        if self.retired.iter().all(|p| p.ending.is_some() || p.exited())
            || self.config.rollback_grace.is_zero()
        {
            return false;
        }
        let Some(main_pid) = self.main.as_ref().map(|m| m.pid) else { return false };
        let until = Instant::now().checked_add(self.config.rollback_grace);
        tracing::debug!(pid = main_pid, grace = %humanize(self.config.rollback_grace), "main process exited; waiting for a rollback");
        loop {
            tokio::select! {
                () = sleep_until(until) => return false,
                message = recv_notify(self.notify.as_ref()) => match message {
                    Ok(message) => {
                        self.on_message(&message);
                        if self.main.as_ref().map(|m| m.pid) != Some(main_pid) {
                            return true;
                        }
                    }
                    Err(err) => tracing::warn!(error = &err as &dyn std::error::Error, "notify socket receive failed"),
                },
                index = any_exited(&self.retired) => {
                    self.retired_exited(index);
                    if self.retired.iter().all(|p| p.ending.is_some()) {
                        return false;
                    }
                }
                () = next_signal(self.sigchld.as_mut()) => self.reap_orphans(),
            }
        }
    }

    /// A retired process exited: forget it.
    pub(super) fn retired_exited(&mut self, index: usize) {
        // `remove`, not `swap_remove`: the list stays oldest first, for the cap.
        let old = self.retired.remove(index);
        let status = self.collect_status(old.pid);
        tracing::info!(pid = old.pid, %status, "previous main process exited");
        self.publish(if self.main.is_some() { State::Running } else { State::BackingOff });
    }

    /// More retired processes than [`Config::max_retired`] run: stop the oldest ones.
    pub(super) fn enforce_max_retired(&mut self) {
        let Some(max) = self.config.max_retired else { return };
        loop {
            let running: Vec<usize> = (0..self.retired.len())
                .filter(|&i| self.retired[i].ending.is_none() && !self.retired[i].exited())
                .collect();
            if running.len() <= max {
                return;
            }
            self.end_retired(running[0], RetiredStop::MaxRetired);
        }
    }

    /// Stops retired process `index`: the stop signal now, `SIGKILL` after the grace period.
    /// Its process group is signalled too unless another process the supervisor watches (the
    /// main process, a retired one not being stopped) is in it: a successor started in its
    /// predecessor's group must not be caught.
    pub(super) fn end_retired(&mut self, index: usize, reason: RetiredStop) {
        let pgid = self.retired[index].pgid;
        let shared = self.main.iter().any(|m| m.pgid == pgid)
            || self
                .retired
                .iter()
                .enumerate()
                .any(|(i, p)| i != index && p.pgid == pgid && p.ending.is_none());
        let whole_group = !shared && pgid != self.own_pgid && pgid > 1;
        let signal = self.config.stop_signal;
        let proc = &mut self.retired[index];
        let retired_pid = proc.pid as u32;
        tracing::warn!(pid = retired_pid, %reason, %signal, "stopping a retired main process");
        let _ = sys::pidfd_send_signal(proc.fd.as_fd(), signal);
        if whole_group {
            let _ = sys::kill_group(pgid, signal);
        }
        proc.ending = Some(Ending { kill_at: Instant::now().checked_add(self.config.grace), whole_group });
        self.emit(EventKind::RetiredStopped { pid: retired_pid, reason });
    }

    /// The next drain deadline or `SIGKILL` due among the retired processes.
    pub(super) fn next_retired_deadline(&self) -> Option<Instant> {
        self.retired
            .iter()
            .filter_map(|p| match p.ending {
                Some(ending) => ending.kill_at,
                None => self.config.drain_deadline.and_then(|d| p.retired_at?.checked_add(d)),
            })
            .min()
    }

    /// Acts on every drain deadline and `SIGKILL` that is due.
    pub(super) fn retired_deadlines(&mut self) {
        let now = Instant::now();
        for index in 0..self.retired.len() {
            let proc = &self.retired[index];
            match proc.ending {
                Some(Ending { kill_at: Some(at), whole_group }) if at <= now => {
                    let pid = proc.pid as u32;
                    tracing::warn!(pid, "a retired main process outlived its grace period: SIGKILL");
                    let _ = sys::pidfd_send_signal(proc.fd.as_fd(), Signal::KILL);
                    if whole_group {
                        let _ = sys::kill_group(proc.pgid, Signal::KILL);
                    }
                    self.retired[index].ending = Some(Ending { kill_at: None, whole_group });
                    self.emit(EventKind::RetiredKilled { pid });
                }
                None if self
                    .config
                    .drain_deadline
                    .and_then(|d| proc.retired_at?.checked_add(d))
                    .is_some_and(|at| at <= now) =>
                {
                    self.end_retired(index, RetiredStop::DrainDeadline);
                }
                _ => {}
            }
        }
    }
}
