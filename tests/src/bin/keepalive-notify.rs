//! Fixture for keepalive: sends `NOTIFY_SOCKET` messages through a real client — the sd-notify
//! crate, libsystemd's `sd_notify` (loaded with dlopen) or `systemd-notify(1)` — then waits.
//!
//! `keepalive-notify --via sd-notify|libsystemd|systemd-notify [--status TEXT] [--done FILE]`
//! sends `READY=1` (and `STATUS=TEXT`); with libsystemd it then runs the `BARRIER=1` handshake,
//! and with systemd-notify the tool runs it itself. FILE gets one line saying how it went
//! (`ok`, or the error), written atomically. `--started FILE` writes `ready` to FILE (atomically)
//! before anything is sent: whatever the receiver does after `READY=1` comes after it.
//!
//! `keepalive-notify --mainpid PID --done FILE`: sends `MAINPID=PID`, then `STATUS=sent`.
//!
//! `keepalive-notify --send TEXT --done FILE`: sends TEXT as one message (verbatim: any
//! assignments, valid or not), then `STATUS=sent`.
//!
//! `keepalive-notify --from-child --done FILE`: a child process sends `READY=1` (it is not the
//! main process, so a supervisor must ignore it); once the child has exited, the main process
//! sends `STATUS=after-child`.

use std::ffi::{CString, c_char, c_int};
use std::time::Duration;

use sd_notify::NotifyState;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let has = |name: &str| args.iter().any(|a| a == name);
    let done = opt("--done");
    let status = opt("--status");
    if let Some(file) = opt("--started") {
        write_atomically(&file, "ready\n");
    }

    let result: Result<(), String> = if let Some(text) = opt("--send") {
        sd_notify::notify(&[NotifyState::Custom(&text)])
            .and_then(|()| sd_notify::notify(&[NotifyState::Status("sent")]))
            .map_err(|e| format!("sd-notify: {e}"))
    } else if let Some(pid) = opt("--mainpid") {
        let pid: u32 = pid.parse().expect("--mainpid PID");
        sd_notify::notify(&[NotifyState::MainPid(pid)])
            .and_then(|()| sd_notify::notify(&[NotifyState::Status("sent")]))
            .map_err(|e| format!("sd-notify: {e}"))
    } else if has("--from-child") {
        let exe = std::env::current_exe().expect("current_exe");
        let child = std::process::Command::new(exe)
            .args(["--via", "sd-notify"])
            .env("KEEPALIVE_NOTIFY_EXIT", "1")
            .status();
        match child {
            Ok(s) if s.success() => sd_notify::notify(&[NotifyState::Status("after-child")])
                .map_err(|e| format!("sd-notify: {e}")),
            other => Err(format!("child failed: {other:?}")),
        }
    } else {
        match opt("--via").as_deref() {
            Some("sd-notify") => {
                let mut messages = vec![NotifyState::Ready];
                if let Some(text) = &status {
                    messages.push(NotifyState::Status(text));
                }
                sd_notify::notify(&messages).map_err(|e| format!("sd-notify: {e}"))
            }
            Some("libsystemd") => libsystemd(status.as_deref()),
            Some("systemd-notify") => {
                let mut cmd = std::process::Command::new("systemd-notify");
                cmd.arg("--ready");
                if let Some(text) = &status {
                    cmd.arg(format!("--status={text}"));
                }
                match cmd.status() {
                    Ok(s) if s.success() => Ok(()),
                    other => Err(format!("systemd-notify: {other:?}")),
                }
            }
            other => Err(format!("unknown --via {other:?}")),
        }
    };
    if std::env::var_os("KEEPALIVE_NOTIFY_EXIT").is_some() {
        std::process::exit(i32::from(result.is_err()));
    }
    if let Some(file) = done {
        write_atomically(&file, &format!("{}\n", result.err().unwrap_or_else(|| "ok".to_owned())));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn write_atomically(file: &str, text: &str) {
    let tmp = format!("{file}.tmp");
    std::fs::write(&tmp, text).expect("write the file");
    std::fs::rename(&tmp, file).expect("rename the file");
}

type SdNotify = unsafe extern "C" fn(c_int, *const c_char) -> c_int;
type SdNotifyBarrier = unsafe extern "C" fn(c_int, u64) -> c_int;

/// `sd_notify(0, "READY=1\nSTATUS=...")` then `sd_notify_barrier(0, 5 s)` from the real library.
fn libsystemd(status: Option<&str>) -> Result<(), String> {
    // SAFETY: dlopen with a NUL-terminated name; the handle is checked and never closed.
    let lib = unsafe { libc::dlopen(c"libsystemd.so.0".as_ptr(), libc::RTLD_NOW) };
    if lib.is_null() {
        return Err("cannot dlopen libsystemd.so.0".to_owned());
    }
    // SAFETY: dlsym on a live handle with NUL-terminated names; results are checked for null.
    let (notify, barrier) =
        unsafe { (libc::dlsym(lib, c"sd_notify".as_ptr()), libc::dlsym(lib, c"sd_notify_barrier".as_ptr())) };
    if notify.is_null() || barrier.is_null() {
        return Err("libsystemd lacks sd_notify or sd_notify_barrier".to_owned());
    }
    // SAFETY: these are the documented C signatures of sd_notify(3) and sd_notify_barrier(3).
    let (notify, barrier) = unsafe {
        (
            std::mem::transmute::<*mut libc::c_void, SdNotify>(notify),
            std::mem::transmute::<*mut libc::c_void, SdNotifyBarrier>(barrier),
        )
    };
    let text = match status {
        Some(s) => format!("READY=1\nSTATUS={s}"),
        None => "READY=1".to_owned(),
    };
    let text = CString::new(text).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; sd_notify only reads it.
    let rc = unsafe { notify(0, text.as_ptr()) };
    if rc <= 0 {
        return Err(format!("sd_notify returned {rc}"));
    }
    // SAFETY: plain integer arguments. Returns > 0 only after the manager closed the passed fd.
    let rc = unsafe { barrier(0, 5_000_000) };
    if rc <= 0 { Err(format!("sd_notify_barrier returned {rc}")) } else { Ok(()) }
}
