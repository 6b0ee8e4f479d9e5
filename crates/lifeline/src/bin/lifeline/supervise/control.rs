//! `lifeline supervise --control SOCKET`: the supervisor's own control socket, on the
//! restart-socket protocol, so that `lifeline status`, `lifeline restart` and `lifeline stop
//! --socket` work for any supervised program (supervisorctl's role).
//!
//! - status: the plain `Status` for old clients (the main pid, the generation, …); the detailed
//!   `SupervisorStatus` for `Request::Details` (state, readiness, restarts, last exit, backoff,
//!   uptime, retired processes, rollbacks).
//! - restart: with `--handover-signal SIG`, SIG to the main process and the new main process its
//!   `MAINPID=` names, once ready (a zero-downtime handover, for services that restart themselves
//!   on a signal, as `lifeline::service` does on SIGHUP); otherwise a stop and a start (what
//!   `systemctl restart` does). Answered with the new pid once it is ready.
//! - stop: the same as SIGTERM to the supervisor; answered once the service has stopped, then
//!   the supervisor exits.
//!
//! The socket is mode 0600 and served to our own uid only (restart-socket checks `SO_PEERCRED`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use keepalive::{Controller, RestartMethod, State};
use restart_socket::{
    BoxFuture, CancellationToken, Server, ServerConfig, Status, SupervisorHandler, SupervisorState,
    SupervisorStatus, unix_millis,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A stop asked for over the socket: answered with the main pid once the service has stopped.
pub(crate) type StopReply = oneshot::Sender<Result<Option<u32>, String>>;

/// The running control server.
pub(crate) struct ControlServer {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` and serves it on this runtime. Stop requests come out of `stops`.
    pub(crate) fn start(
        path: &Path,
        controller: &Controller,
        method: RestartMethod,
        restart_timeout: Duration,
        stops: mpsc::Sender<StopReply>,
    ) -> anyhow::Result<ControlServer> {
        let server = Server::bind(path, ServerConfig::default())
            .with_context(|| format!("cannot serve the control socket {}", path.display()))?;
        let started_at = unix_millis(SystemTime::now());
        let supervisor = Supervisor { controller: controller.clone(), started_at, stops };
        let restart = {
            let controller = controller.clone();
            move || {
                let controller = controller.clone();
                async move { controller.restart(method, restart_timeout).await.map_err(crate::chain) }
            }
        };
        let status = {
            let controller = controller.clone();
            move || {
                let details = details(&controller, started_at);
                async move { plain(&details) }
            }
        };
        let shutdown = CancellationToken::new();
        let serving = server.serve_supervisor(restart, status, supervisor, shutdown.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = serving.await {
                crate::say!("lifeline: the control socket failed: {}", crate::chain(err));
            }
        });
        Ok(ControlServer { shutdown, task })
    }

    /// Stops accepting, lets the answers already under way go out (a stop's answer among them),
    /// removes the socket file.
    pub(crate) async fn close(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

struct Supervisor {
    controller: Controller,
    started_at: u64,
    stops: mpsc::Sender<StopReply>,
}

impl SupervisorHandler for Supervisor {
    fn details(&self) -> BoxFuture<'_, SupervisorStatus> {
        let details = details(&self.controller, self.started_at);
        Box::pin(async move { details })
    }

    fn stop(&self) -> BoxFuture<'_, Result<Option<u32>, String>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.stops.send(tx).await.map_err(|_| "the supervisor is already stopping".to_owned())?;
            rx.await.map_err(|_| "the supervisor ended before the stop finished".to_owned())?
        })
    }
}

/// The supervisor's detailed status, from keepalive's.
fn details(controller: &Controller, started_at: u64) -> SupervisorStatus {
    let status = controller.status();
    let generation = u64::from(status.starts) + u64::from(status.main_pid_changes);
    let since = status.since.map(unix_millis);
    SupervisorStatus {
        pid: status.pid,
        generation,
        since,
        last_restart: if generation > 1 { since } else { None },
        supervisor_pid: std::process::id(),
        supervisor_started_at: started_at,
        state: match status.state {
            State::Running => SupervisorState::Running,
            State::BackingOff => SupervisorState::BackingOff,
            State::Stopping => SupervisorState::Stopping,
            _ => SupervisorState::Finished,
        },
        ready: status.ready,
        restarts: status.starts.saturating_sub(1),
        last_exit: status.last_exit.map(|exit| exit.to_string()),
        backoff_until: status.backoff_until.map(unix_millis),
        retired: status.retired.clone(),
        rollbacks: status.rollbacks,
        text: status.text.clone(),
    }
}

fn plain(details: &SupervisorStatus) -> Status {
    details.plain()
}
