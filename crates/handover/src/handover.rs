//! `Handover`: what a process inherits at start-up, and how it declares itself ready.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt as _;

use crate::env::{
    LIFELINE_FDS, LIFELINE_PARENT_PID, LIFELINE_READY_FD, LIFELINE_STATE_FD, LISTEN_FDNAMES, LISTEN_FDS,
    LISTEN_PID, check_disjoint, parse_listen_fds, parse_pid, parse_successor_fds,
};
use crate::fds::{Inherited, Kind, Origin, Registry, adopt_raw, check_kind, claim_adoption};
use crate::state::StateReader;
use crate::upgrader::Upgrader;
use crate::{Config, Error, LifecycleHandler, notify};

/// The readiness message: this byte, then the ready process's pid (`u32` little-endian).
pub(crate) const READY_BYTE: u8 = b'R';
pub(crate) const READY_LEN: usize = 5;

pub(crate) fn ready_message(pid: u32) -> [u8; READY_LEN] {
    let p = pid.to_le_bytes();
    [READY_BYTE, p[0], p[1], p[2], p[3]]
}

/// How this process was started, as far as the handover is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// Started on its own: no predecessor (it may still have adopted systemd sockets).
    Fresh,
    /// Spawned by a running process's [`Upgrader::upgrade`]; fds and state came through the
    /// environment and pipes.
    Spawned {
        /// The old process's pid.
        predecessor: u32,
    },
    /// Started independently; fetched fds and state from a running process over its handover
    /// socket ([`Handover::from_socket`]).
    Connected {
        /// The old process's pid.
        predecessor: u32,
    },
}

/// Where `ready()` goes: the predecessor's readiness pipe or its handover socket.
pub(crate) enum ReadySink {
    Pipe(OwnedFd),
    Socket(tokio::net::unix::OwnedWriteHalf),
}

/// Where the state comes from, before it is wrapped in a [`StateReader`] (which needs a runtime).
pub(crate) enum StateSource {
    Pipe(OwnedFd),
    Socket(tokio::net::unix::OwnedReadHalf),
}

/// A process's handover at start-up: the file descriptors and state it inherited, and the
/// file descriptors it will pass on.
///
/// Create it once, early in `main` ([`Handover::from_env`] or [`Handover::from_socket`]); take
/// the inherited sockets by name (or create them when there are none), read the state, register
/// what the successor should get, then call [`Handover::ready`], which returns the
/// [`Upgrader`] that starts successors.
pub struct Handover {
    pub(crate) config: Config,
    pub(crate) executable: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) start: Start,
    pub(crate) inherited: Inherited,
    pub(crate) registry: Registry,
    pub(crate) state: Option<StateSource>,
    pub(crate) ready: Option<ReadySink>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("start", &self.start)
            .field("executable", &self.executable)
            .field("inherited", &self.inherited)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

fn env_var(var: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(var) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(Error::Env { var, value: v.to_string_lossy().into_owned(), reason: "not UTF-8".to_owned() })
        }
    }
}

impl Handover {
    pub(crate) fn bare(config: Config, start: Start) -> Result<Self, Error> {
        // Resolved now, as a path: `/proc/self/exe` keeps pointing at the old inode after an
        // upgrade replaced the file, and reads "... (deleted)" once it was removed.
        let executable = match &config.executable {
            Some(path) => path.clone(),
            None => std::env::current_exe().map_err(|source| Error::Executable { source })?,
        };
        let args = config.args.clone().unwrap_or_else(|| std::env::args_os().skip(1).collect());
        Ok(Handover {
            config,
            executable,
            args,
            start,
            inherited: Inherited::default(),
            registry: Registry::default(),
            state: None,
            ready: None,
        })
    }

    /// Sets up the handover of a process started by a predecessor's [`Upgrader::upgrade`], by
    /// systemd socket activation, or from scratch: adopts the named file descriptors of
    /// `LIFELINE_FDS` (when `LIFELINE_PARENT_PID` is this process's parent) and of `LISTEN_FDS`
    /// (when `LISTEN_PID` is this process), with `FD_CLOEXEC` set, and resolves the path of the
    /// executable for later upgrades.
    ///
    /// Call it once, early in `main`. The environment is left as it is (changing it is unsafe
    /// once threads run); the variables name this process, so a descendant ignores them, and
    /// successors are started without them.
    pub fn from_env(config: Config) -> Result<Self, Error> {
        let my_pid = std::process::id();
        let parent = env_var(LIFELINE_PARENT_PID)?.as_deref().and_then(parse_pid);
        let ppid = nix::unistd::getppid().as_raw() as u32;
        let spawned = parent.filter(|p| *p == ppid);
        let start = match spawned {
            Some(predecessor) => Start::Spawned { predecessor },
            None => Start::Fresh,
        };
        let mut handover = Handover::bare(config, start)?;
        claim_adoption()?;

        // Everything is parsed and cross-checked before any number is owned: one fd named by
        // two variables would get two owners.
        let successor = match spawned {
            Some(_) => Some(parse_successor_fds(
                env_var(LIFELINE_FDS)?.as_deref(),
                env_var(LIFELINE_STATE_FD)?.as_deref(),
                env_var(LIFELINE_READY_FD)?.as_deref(),
            )?),
            None => None,
        };
        let listen_pid = env_var(LISTEN_PID)?;
        let listen_fds = env_var(LISTEN_FDS)?;
        let listen_names = env_var(LISTEN_FDNAMES)?;
        let systemd =
            parse_listen_fds(listen_pid.as_deref(), listen_fds.as_deref(), listen_names.as_deref(), my_pid)?;
        if let Some(successor) = &successor {
            check_disjoint(successor, &systemd, listen_fds.as_deref().unwrap_or_default())?;
        }

        if let (Some(predecessor), Some(successor)) = (spawned, successor) {
            for (name, fd) in successor.fds {
                let owned = adopt_raw(&name, fd)?;
                handover.inherited.push(name, owned, Origin::Predecessor);
            }
            handover.state = Some(StateSource::Pipe(adopt_raw("state pipe", successor.state)?));
            handover.ready = Some(ReadySink::Pipe(adopt_raw("readiness pipe", successor.ready)?));
            tracing::info!(predecessor, fds = handover.inherited.len(), "started by a handover");
        } else if parent.is_some() {
            tracing::debug!(
                ?parent,
                ppid,
                "LIFELINE_PARENT_PID names another process; ignoring LIFELINE_FDS"
            );
        }

        if !systemd.is_empty() {
            tracing::info!(fds = systemd.len(), "adopting socket-activated file descriptors");
        }
        for (name, fd) in systemd {
            let owned = adopt_raw(&name, fd)?;
            handover.inherited.push(name, owned, Origin::Systemd);
        }
        Ok(handover)
    }

    /// How this process was started.
    pub fn start(&self) -> Start {
        self.start
    }

    /// The old process's pid, when this process is a successor.
    pub fn predecessor(&self) -> Option<u32> {
        match self.start {
            Start::Fresh => None,
            Start::Spawned { predecessor } | Start::Connected { predecessor } => Some(predecessor),
        }
    }

    /// The executable an upgrade will start.
    pub fn executable(&self) -> &std::path::Path {
        &self.executable
    }

    /// Names (and origins) of the inherited file descriptors nobody has taken yet.
    pub fn inherited(&self) -> Vec<(String, Origin)> {
        self.inherited.names().map(|(n, o)| (n.to_owned(), o)).collect()
    }

    /// Takes the inherited file descriptor named `name`, whatever it is.
    pub fn take_fd(&mut self, name: &str) -> Option<OwnedFd> {
        self.inherited.take_checked(name, |_| Ok(())).ok().flatten()
    }

    /// Takes the inherited TCP listener named `name`. `Ok(None)` when there is none by that name;
    /// [`Error::WrongType`] (and the fd stays) when it is not a listening TCP socket.
    ///
    /// The socket's blocking mode is shared with the old process: call `set_nonblocking(true)`
    /// before handing it to tokio.
    pub fn take_tcp_listener(&mut self, name: &str) -> Result<Option<std::net::TcpListener>, Error> {
        Ok(self.inherited.take_checked(name, |fd| check_kind(name, fd, Kind::TcpListener))?.map(Into::into))
    }

    /// Takes the inherited unix stream listener named `name` (see [`Handover::take_tcp_listener`]).
    pub fn take_unix_listener(&mut self, name: &str) -> Result<Option<UnixListener>, Error> {
        Ok(self.inherited.take_checked(name, |fd| check_kind(name, fd, Kind::UnixListener))?.map(Into::into))
    }

    /// Takes the inherited UDP socket named `name` (see [`Handover::take_tcp_listener`]).
    pub fn take_udp_socket(&mut self, name: &str) -> Result<Option<std::net::UdpSocket>, Error> {
        Ok(self.inherited.take_checked(name, |fd| check_kind(name, fd, Kind::UdpSocket))?.map(Into::into))
    }

    /// Closes every inherited file descriptor nobody took; returns their names. [`Handover::ready`]
    /// does this too.
    pub fn finish_adoption(&mut self) -> Vec<String> {
        let closed = self.inherited.close_all();
        if !closed.is_empty() {
            tracing::info!(?closed, "closed inherited file descriptors nobody claimed");
        }
        closed
    }

    /// The state sent by the old process, as a stream; `None` for a fresh process or once taken.
    /// Must be called within a tokio runtime.
    pub fn state_reader(&mut self) -> Result<Option<StateReader>, Error> {
        let limit = self.config.state_limit;
        Ok(match self.state.take() {
            None => None,
            Some(StateSource::Pipe(fd)) => {
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                    .map_err(Error::io("open the state pipe"))?;
                Some(StateReader::new(rx, limit))
            }
            Some(StateSource::Socket(half)) => Some(StateReader::new(half, limit)),
        })
    }

    /// Reads the state frame the old process sent with [`StateWriter::send`](crate::StateWriter::send)
    /// and decodes it as `T`, which must carry `version`.
    ///
    /// `Ok(None)` for a fresh process or when the old one sent nothing. An error (wrong version,
    /// corrupt or oversized frame) means this process cannot take over: return it from `main`
    /// without calling `ready()`; the old process sees the exit and keeps serving.
    pub async fn read_state<T: serde::de::DeserializeOwned>(
        &mut self,
        version: u32,
    ) -> Result<Option<T>, Error> {
        match self.state_reader()? {
            Some(mut reader) => reader.recv(version).await,
            None => Ok(None),
        }
    }

    /// Registers `fd` to be handed to successors under `name` (the handover owns it from now
    /// on; registering a duplicate of a socket the application keeps using is what
    /// [`Handover::register_dup`] does). Names are unique: a second registration under the same
    /// name fails with [`Error::DuplicateName`].
    pub fn register(&mut self, name: &str, fd: impl Into<OwnedFd>) -> Result<(), Error> {
        self.registry.insert(name, fd.into())
    }

    /// Registers a duplicate of `fd` (`F_DUPFD_CLOEXEC`) under `name`; the caller keeps its own.
    pub fn register_dup(&mut self, name: &str, fd: &impl AsFd) -> Result<(), Error> {
        if self.registry.contains(name) {
            return Err(Error::DuplicateName { name: name.to_owned() });
        }
        let dup = fd.as_fd().try_clone_to_owned().map_err(Error::io("duplicate a file descriptor"))?;
        self.registry.insert(name, dup)
    }

    /// Declares this process ready to serve and returns its [`Upgrader`]: the commit point of a
    /// handover.
    ///
    /// Closes the inherited file descriptors nobody took. Everything that can fail happens
    /// before the predecessor is told: the pid file is written under a temporary name and synced,
    /// and a process that is not a spawned successor sends `READY=1` to the service manager (and
    /// stores the registered fds in its fd store when configured). Then a spawned or connected
    /// successor tells its predecessor (which answers its restart request with this pid and
    /// drains) and only after that moves the pid file into place; a fresh process moves it into
    /// place before `READY=1`, so a manager that reads it on `READY=1` finds it.
    ///
    /// [`Error::Ready`] means the predecessor gave up on this process (it timed out, and will
    /// kill it): exit. Any error leaves the pid file as it was.
    pub async fn ready<L: LifecycleHandler>(mut self, lifecycle: L) -> Result<Upgrader, Error> {
        self.finish_adoption();
        // The state may not have been read (a successor that does not want it): close it so
        // the old process's writer sees a broken pipe instead of a reader that never comes.
        self.state = None;
        let pid = std::process::id();
        let pid_file = match &self.config.pid_file {
            Some(path) => Some(crate::pidfile::Prepared::new(path, pid)?),
            None => None,
        };
        let spawned = matches!(self.start, Start::Spawned { .. });
        let pid_file = match (pid_file, self.start) {
            // Nobody else serves: the file goes into place now, before READY=1.
            (Some(prepared), Start::Fresh) => {
                prepared.persist()?;
                None
            }
            (other, _) => other,
        };
        if !spawned && self.config.notify {
            notify::ready(&self.registry, self.config.fd_store)?;
        }
        // The commit: from here on the predecessor drains, and nothing may fail.
        match self.ready.take() {
            Some(ReadySink::Pipe(fd)) => {
                let mut pipe = std::fs::File::from(fd);
                pipe.write_all(&ready_message(pid)).map_err(|source| Error::Ready { source })?;
            }
            Some(ReadySink::Socket(mut half)) => {
                half.write_all(&ready_message(pid)).await.map_err(|source| Error::Ready { source })?;
                half.shutdown().await.map_err(|source| Error::Ready { source })?;
            }
            None => {}
        }
        if let Some(prepared) = pid_file
            && let Err(err) = prepared.persist()
        {
            tracing::warn!(error = &err as &dyn std::error::Error, "cannot move the pid file into place");
        }
        tracing::info!(pid, start = ?self.start, "ready");
        Ok(Upgrader::new(self, lifecycle))
    }
}
