//! Fixture for hand-over across `exec`: adopts a lock whose descriptor it inherited.
//!
//! `dirlock-adopt [--ofd] FD DIR` adopts descriptor FD as DIR's lock and prints
//! `adopted <pid> cloexec=<bool>`, then holds it until stdin closes, releases it and prints
//! `released`. If adopting fails it prints `held <pid|->` (exit 75) or `error <message>` (exit 1).

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use dirlock::{DirLock, LockOptions, OfdLock};
use nix::fcntl::{FcntlArg, FdFlag};

fn main() -> ExitCode {
    let mut options = LockOptions::new();
    let mut positional = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--ofd" {
            options = options.primitive(OfdLock);
        } else {
            positional.push(arg);
        }
    }
    let [fd, dir] = positional.as_slice() else {
        println!("error usage: dirlock-adopt [--ofd] FD DIR");
        return ExitCode::FAILURE;
    };
    let raw: RawFd = fd.parse().expect("FD is a number");
    // SAFETY: the parent passed us this descriptor number; it is open (inherited across exec) and
    // nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let lock = match DirLock::adopt(fd, dir, &options).map(dirlock::Adopted::commit) {
        Ok(lock) => lock,
        Err(err) if err.is_contention() => {
            let holder = err.holder_pid().map_or_else(|| "-".to_owned(), |pid| pid.to_string());
            println!("held {holder}");
            return ExitCode::from(75);
        }
        Err(err) => {
            println!("error {err}");
            return ExitCode::FAILURE;
        }
    };
    let flags = nix::fcntl::fcntl(lock.as_fd(), FcntlArg::F_GETFD).expect("F_GETFD");
    let cloexec = FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC);
    println!("adopted {} cloexec={cloexec}", std::process::id());
    std::io::stdout().flush().expect("flush stdout");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    match lock.release() {
        Ok(()) => {
            println!("released");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("error {err}");
            ExitCode::FAILURE
        }
    }
}
