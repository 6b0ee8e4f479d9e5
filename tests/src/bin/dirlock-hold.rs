//! Fixture: locks directories with `dirlock`, reports, holds until stdin closes, then releases.
//!
//! `dirlock-hold [--ofd] [--drop] [--name FILE] [--wait-ms N] DIR...` prints `locked <pid>` once
//! every lock is held, then `released` after stdin reaches EOF (with `--drop` the locks are dropped
//! instead of released explicitly: the unlink-on-drop path). With `--wait-ms`, a first refused attempt
//! prints `waiting <pid|->` before waiting. On contention it prints `held <pid|->` and
//! exits 75; on any other error `error <message>` and exits 1.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use dirlock::{LockOptions, LockSet, OfdLock};

fn main() -> ExitCode {
    let mut options = LockOptions::new();
    let mut dirs = Vec::new();
    let mut drop_them = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ofd" => options = options.primitive(OfdLock),
            "--drop" => drop_them = true,
            "--name" => options = options.file_name(args.next().expect("--name FILE")),
            "--wait-ms" => {
                let ms = args.next().and_then(|v| v.parse().ok()).expect("--wait-ms N");
                options = options.lock_timeout(Duration::from_millis(ms));
            }
            _ => dirs.push(arg),
        }
    }
    let first_try = match options.wait() {
        Some(_) => LockSet::acquire(&dirs, &options.clone().no_wait()),
        None => LockSet::acquire(&dirs, &options),
    };
    let result = match first_try {
        Err(err) if err.is_contention() && options.wait().is_some() => {
            println!("waiting {}", holder(&err));
            std::io::stdout().flush().expect("flush stdout");
            LockSet::acquire(&dirs, &options)
        }
        other => other,
    };
    let set = match result {
        Ok(set) => set,
        Err(err) if err.is_contention() => {
            println!("held {}", holder(&err));
            return ExitCode::from(75);
        }
        Err(err) => {
            println!("error {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("locked {}", std::process::id());
    std::io::stdout().flush().expect("flush stdout");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    if drop_them {
        drop(set);
        println!("released");
        return ExitCode::SUCCESS;
    }
    match set.release() {
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

fn holder(err: &dirlock::Error) -> String {
    err.holder_pid().map_or_else(|| "-".to_owned(), |pid| pid.to_string())
}
