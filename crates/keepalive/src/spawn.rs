//! Starting the command: its own session and process group, optional parent-death signal, and the
//! systemd-style environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::Command;
use crate::signal::Signal;

/// Environment variables that belong to *our* service manager, not to the service.
const MANAGER_VARS: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
const WATCHDOG_PID_PREFIX: &[u8] = b"WATCHDOG_PID=";

/// How to start one instance.
#[derive(Debug, Default)]
pub(crate) struct SpawnOptions<'a> {
    /// `NOTIFY_SOCKET` for the service.
    pub(crate) notify_socket: Option<&'a str>,
    /// `WATCHDOG_USEC` for the service (and `WATCHDOG_PID` = its own pid).
    pub(crate) watchdog: Option<Duration>,
    /// `PR_SET_PDEATHSIG`.
    pub(crate) death_signal: Option<Signal>,
}

/// Starts `command` in a new session (so it leads its own process group) and returns its pid.
///
/// The child's stdin is `/dev/null`; stdout and stderr are inherited.
pub(crate) fn spawn(command: &Command, options: &SpawnOptions<'_>) -> io::Result<u32> {
    let mut cmd = std::process::Command::new(&command.program);
    cmd.args(&command.args).stdin(Stdio::null());
    if command.env_clear {
        cmd.env_clear();
    }
    for key in command.env_remove.iter().map(String::as_str).chain(MANAGER_VARS.iter().copied()) {
        cmd.env_remove(key);
    }
    for (key, value) in &command.env {
        cmd.env(key, value);
    }
    if let Some(socket) = options.notify_socket {
        cmd.env("NOTIFY_SOCKET", socket);
    }
    if let Some(dir) = &command.cwd {
        cmd.current_dir(dir);
    }
    // WATCHDOG_PID must be the child's own pid, which nobody knows before fork: the child execs
    // itself with a prepared environment instead of letting std do it.
    let mut exec_plan = match options.watchdog {
        Some(interval) => Some(ExecPlan::new(command, options.notify_socket, interval)?),
        None => None,
    };
    let parent = std::process::id() as libc::pid_t;
    let death_signal = options.death_signal.map(Signal::as_raw);
    let pre_exec = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: this runs between fork and exec.
        // SAFETY: setsid has no memory effects.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(signal) = death_signal {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // The supervisor may have died between fork and prctl; nobody would send the signal.
            // SAFETY: getppid has no memory effects.
            if unsafe { libc::getppid() } != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        if let Some(plan) = exec_plan.as_mut() {
            plan.exec();
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls and touches memory it owns
    // (the exec plan was fully allocated before fork).
    unsafe {
        cmd.pre_exec(pre_exec);
    }
    let child = cmd.spawn()?;
    // Dropping std's handle neither waits nor kills: the supervisor reaps via the pidfd.
    Ok(child.id())
}

/// Everything `execve` needs, allocated before fork, so the child only writes its pid digits into
/// a reserved slot and calls `execve`.
struct ExecPlan {
    path: CString,
    /// Kept alive for the pointers in `argv_ptrs`.
    _argv: Vec<CString>,
    /// Null-terminated `char *` array, stored as `usize` so the plan is `Send + Sync`.
    argv_ptrs: Vec<usize>,
    _env: Vec<CString>,
    envp: Vec<usize>,
    /// `WATCHDOG_PID=` followed by room for the digits and a NUL.
    pid_entry: Vec<u8>,
    /// The index of `pid_entry` in `envp`.
    pid_slot: usize,
}

impl ExecPlan {
    fn new(command: &Command, notify_socket: Option<&str>, watchdog: Duration) -> io::Result<ExecPlan> {
        let mut env: Vec<(OsString, OsString)> =
            if command.env_clear { Vec::new() } else { std::env::vars_os().collect() };
        env.retain(|(k, _)| {
            let k = k.to_string_lossy();
            !command.env_remove.iter().any(|r| *r == k) && !MANAGER_VARS.contains(&k.as_ref())
        });
        for (key, value) in &command.env {
            env.retain(|(k, _)| k != key.as_str());
            env.push((key.into(), value.into()));
        }
        if let Some(socket) = notify_socket {
            env.push(("NOTIFY_SOCKET".into(), socket.into()));
        }
        // sd_watchdog_enabled() parses a u64: saturate rather than hand the service a number it refuses.
        let usec = u64::try_from(watchdog.as_micros()).unwrap_or(u64::MAX);
        env.push(("WATCHDOG_USEC".into(), usec.to_string().into()));

        let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
        let path = resolve_program(&command.program, path_var.as_deref(), command.cwd.as_deref())?;
        let argv: Vec<CString> = std::iter::once(command.program.as_str())
            .chain(command.args.iter().map(String::as_str))
            .map(cstring)
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = env
            .into_iter()
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                CString::new(entry).map_err(|_| invalid("environment entry contains NUL"))
            })
            .collect::<io::Result<_>>()?;
        let mut pid_entry = vec![0u8; WATCHDOG_PID_PREFIX.len() + 16];
        pid_entry[..WATCHDOG_PID_PREFIX.len()].copy_from_slice(WATCHDOG_PID_PREFIX);
        let argv_ptrs = argv.iter().map(|a| a.as_ptr() as usize).chain([0]).collect();
        let mut envp: Vec<usize> = env.iter().map(|e| e.as_ptr() as usize).collect();
        let pid_slot = envp.len();
        envp.extend([pid_entry.as_ptr() as usize, 0]);
        Ok(ExecPlan {
            path: CString::new(path.into_os_string().into_vec()).map_err(|_| invalid("path contains NUL"))?,
            _argv: argv,
            argv_ptrs,
            _env: env,
            envp,
            pid_entry,
            pid_slot,
        })
    }

    /// Runs in the child after fork: fills in `WATCHDOG_PID` and execs. Returns only on failure.
    fn exec(&mut self) {
        // SAFETY: getpid has no memory effects.
        let pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut n = pid;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let start = WATCHDOG_PID_PREFIX.len();
        let len = digits.len() - at;
        self.pid_entry[start..start + len].copy_from_slice(&digits[at..]);
        self.pid_entry[start + len] = 0;
        self.envp[self.pid_slot] = self.pid_entry.as_ptr() as usize;
        // SAFETY: `path` is a valid C string; `argv_ptrs` and `envp` are null-terminated arrays of
        // pointers to NUL-terminated strings owned by `self` (usize and pointers have the same size
        // and alignment on every Linux target); execve only reads them.
        unsafe {
            libc::execve(self.path.as_ptr(), self.argv_ptrs.as_ptr().cast(), self.envp.as_ptr().cast());
        }
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| invalid("argument contains NUL"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

/// Finds `program` the way `execvp` would: as given if it contains a `/`, else in `PATH`.
fn resolve_program(program: &str, path_var: Option<&OsStr>, cwd: Option<&Path>) -> io::Result<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        // A relative path is relative to the child's working directory.
        return Ok(match cwd {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        });
    }
    let search = path_var
        .map_or_else(|| OsStr::from_bytes(b"/usr/local/bin:/usr/bin:/bin").to_owned(), OsStr::to_owned);
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{program} not found in PATH")))
}
