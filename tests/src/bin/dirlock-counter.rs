//! Fixture for the stress tests: increments a shared counter file N times, each time under the
//! locks of the given directories, with a deliberately non-atomic read-modify-write.
//!
//! `dirlock-counter --iterations N --counter FILE [--ofd] [--spin] DIR...`. A lost update shows
//! as a final count short of the total; two holders at once also trip an `O_EXCL` marker file
//! (`FILE.inside`): the process then prints `overlap` and exits 2. `--spin` retries a refused
//! non-blocking attempt at once instead of waiting with backoff, to widen the unlink/re-create
//! race. Prints `done` at the end.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dirlock::{LockOptions, LockSet, OfdLock};

fn main() -> ExitCode {
    let mut iterations = 0u32;
    let mut counter = PathBuf::new();
    let mut options = LockOptions::new().lock_timeout(Duration::from_secs(60));
    let mut spin = false;
    let mut dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => iterations = args.next().and_then(|v| v.parse().ok()).expect("--iterations N"),
            "--counter" => counter = args.next().expect("--counter FILE").into(),
            "--ofd" => options = options.primitive(OfdLock),
            "--spin" => spin = true,
            "--poll" => options = options.wait_mode(dirlock::WaitMode::Poll),
            _ => dirs.push(arg),
        }
    }
    if spin {
        options = options.no_wait();
    }
    let marker = counter.with_extension("inside");
    let mut done = 0;
    while done < iterations {
        let set = match LockSet::acquire(&dirs, &options) {
            Ok(set) => set,
            Err(err) if spin && (err.is_contention() || matches!(err, dirlock::Error::Replaced { .. })) => {
                std::thread::yield_now();
                continue;
            }
            Err(err) => {
                println!("error {err}");
                return ExitCode::FAILURE;
            }
        };
        match fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                println!("overlap");
                return ExitCode::from(2);
            }
            Err(err) => {
                println!("error marker: {err}");
                return ExitCode::FAILURE;
            }
        }
        let value: u64 = match fs::read_to_string(&counter) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(err) if err.kind() == ErrorKind::NotFound => 0,
            Err(err) => {
                println!("error counter: {err}");
                return ExitCode::FAILURE;
            }
        };
        // Give a concurrent (buggy) holder every chance to interleave.
        std::thread::yield_now();
        if let Err(err) =
            fs::write(&counter, format!("{}\n", value + 1)).and_then(|()| fs::remove_file(&marker))
        {
            println!("error counter: {err}");
            return ExitCode::FAILURE;
        }
        if let Err(err) = set.release() {
            println!("error {err}");
            return ExitCode::FAILURE;
        }
        done += 1;
    }
    println!("done");
    ExitCode::SUCCESS
}
