//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{project_root, tools};

/// Arguments of `cargo xtask ci`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Skip the slow parts that only re-check what the tests already cover (per-crate builds).
    #[arg(long)]
    quick: bool,
    /// Do not install missing tools (cargo-nextest, cargo-deny, the Debian packages the tests
    /// drive): only say, one line each, how to get them.
    #[arg(long)]
    no_install: bool,
}

/// The library crates, each of which must build alone with no and with all features.
const LIBRARY_CRATES: &[&str] =
    &["dirlock", "certwatch", "restart-socket", "handover", "keepalive", "lifeline-kit"];

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let total = Instant::now();
    // A fresh machine has only the toolchain: what the steps below need is installed first.
    crate::tools::ensure(!args.no_install)?;
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        println!("\n==> {name}");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        timings.push((name.to_owned(), took));
        match result {
            Ok(()) => {
                println!("<== {name}: ok in {}", secs(took));
                Ok(())
            }
            Err(err) => Err(err.context(format!("step `{name}` failed after {}", secs(took)))),
        }
    };

    step("fmt", &mut || cargo(&["fmt", "--all", "--", "--check"], &[]))?;
    step("clippy", &mut || {
        cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"], &[])
    })?;
    step("test", &mut run_tests)?;
    step("fault", &mut || crate::fault::run(&crate::fault::Args { only: None }))?;
    if !args.quick {
        step("crates alone", &mut || {
            for krate in LIBRARY_CRATES {
                cargo(&["check", "-p", krate, "--lib", "--no-default-features"], &[])?;
                cargo(&["check", "-p", krate, "--lib", "--all-features"], &[])?;
            }
            Ok(())
        })?;
    }
    step("package", &mut || {
        // Every publishable crate has complete metadata and packages (files listed, nothing built).
        for krate in LIBRARY_CRATES {
            let out = Command::new("cargo")
                .args(["package", "--list", "--allow-dirty", "-p", krate])
                .current_dir(project_root())
                .output()
                .context("run cargo package")?;
            if !out.status.success() {
                bail!(
                    "`cargo package --list -p {krate}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            println!("{krate}: {} files", String::from_utf8_lossy(&out.stdout).lines().count());
        }
        Ok(())
    })?;
    step("doc", &mut || {
        cargo(&["doc", "--workspace", "--no-deps", "--all-features"], &[("RUSTDOCFLAGS", "-D warnings")])
    })?;
    step("deny", &mut run_deny)?;
    step("bench --quick", &mut || crate::bench::run(&crate::bench::Args { quick: true, only: None }))?;

    println!("\nci: all steps passed in {}", secs(total.elapsed()));
    for (name, took) in &timings {
        println!("  {name:<14} {:>8}", secs(*took));
    }
    Ok(())
}

/// The application-shaped crates that prove certwatch leaves the crypto provider to the
/// application. Each is built and tested alone: in a build of the whole workspace cargo unifies
/// rustls' features across members, and two providers are as ambiguous to rustls as none.
pub(crate) const APP_CRATES: &[&str] = &["lifeline-app-aws-lc-rs", "lifeline-app-ring"];

/// Tests of the whole workspace: nextest when installed (doc tests separately, which nextest
/// cannot run), else `cargo test`; then each of [`APP_CRATES`] alone.
///
/// Tests that need root are `#[ignore = "needs root"]`: as root they run too (and assert), as
/// another user they are reported as skipped, never counted as passed.
fn run_tests() -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        println!("not running as root: the tests marked `needs root` are reported as skipped");
    }
    let mut excludes = Vec::new();
    for app in APP_CRATES {
        excludes.extend(["--exclude", app]);
    }
    let nextest = tools::has_cargo_subcommand("nextest");
    if nextest {
        let ignored = if root { "all" } else { "default" };
        let mut args = vec![
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
            "--run-ignored",
            ignored,
        ];
        args.extend(&excludes);
        cargo(&args, &[])?;
        cargo(&["test", "--workspace", "--all-features", "--doc"], &[])?;
    } else {
        println!("cargo-nextest is not installed: running `cargo test`");
        let mut args = vec!["test", "--workspace", "--all-features", "--no-fail-fast"];
        args.extend(&excludes);
        if root {
            args.extend(["--", "--include-ignored"]);
        }
        cargo(&args, &[])?;
    }
    for app in APP_CRATES {
        if nextest {
            cargo(&["nextest", "run", "-p", app], &[])?;
        } else {
            cargo(&["test", "-p", app], &[])?;
        }
    }
    Ok(())
}

/// `cargo deny check`: bans, licenses and sources always; advisories only when the advisory
/// database can be fetched (it lives on GitHub, which CI cannot reach).
fn run_deny() -> anyhow::Result<()> {
    if !tools::has_cargo_subcommand("deny") {
        bail!(
            "cargo-deny is not installed: `cargo install cargo-deny --locked` (`cargo xtask ci` does this unless --no-install)"
        );
    }
    cargo(
        &["deny", "--all-features", "check", "--hide-inclusion-graph", "bans", "licenses", "sources"],
        &[],
    )?;
    if advisory_db_reachable() {
        cargo(&["deny", "--all-features", "check", "advisories"], &[])
    } else {
        println!(
            "advisories: skipped, the advisory database (github.com/rustsec/advisory-db) is unreachable from here"
        );
        Ok(())
    }
}

fn advisory_db_reachable() -> bool {
    Command::new("timeout")
        .args(["15", "git", "ls-remote", "--heads", "https://github.com/rustsec/advisory-db"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cargo ARGS` in the project root with extra environment; fails on a non-zero exit.
pub(crate) fn cargo(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(project_root())
        .status()
        .with_context(|| format!("could not run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
