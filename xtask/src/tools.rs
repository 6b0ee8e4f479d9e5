//! What `cargo xtask ci` needs besides the Rust toolchain, and installing it when it is missing:
//! the cargo subcommands it runs (`cargo-nextest`, `cargo-deny`) and the system programs the
//! tests and benchmarks drive as real peers (Debian packages).
//!
//! Each install is announced in one line saying what and why. Where nothing can be installed
//! (not root and no password-less `sudo`, or no `apt-get`), one line per missing tool says how
//! to get it, and the run goes on: a test whose peer is missing says so itself.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Arguments of `cargo xtask tools`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only say, one line each, how to get what is missing.
    #[arg(long)]
    pub(crate) no_install: bool,
}

/// A system program the tests or benchmarks run, and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The command looked up on `PATH`.
    pub(crate) command: &'static str,
    /// The Debian package that provides it.
    pub(crate) package: &'static str,
    /// Why the run needs it (printed when it is installed or missing).
    pub(crate) why: &'static str,
}

/// Every system program the tests, the fault suite and the benchmarks use as a real peer.
pub(crate) const PEERS: &[Peer] = &[
    Peer { command: "flock", package: "util-linux", why: "dirlock interoperates with flock(1)" },
    Peer { command: "setpriv", package: "util-linux", why: "tests run peers as another uid" },
    Peer { command: "prlimit", package: "util-linux", why: "fault scenarios lower fd limits" },
    Peer { command: "mount", package: "mount", why: "fault scenarios mount a full tmpfs" },
    Peer { command: "perl", package: "perl", why: "test fixtures" },
    Peer { command: "openssl", package: "openssl", why: "certificate tests compare with openssl" },
    Peer { command: "curl", package: "curl", why: "the example server is tested with curl" },
    Peer { command: "strace", package: "strace", why: "tests watch system calls" },
    Peer {
        command: "systemd-socket-activate",
        package: "systemd",
        why: "socket activation and the systemd units are tested for real",
    },
    Peer { command: "systemd-notify", package: "systemd", why: "notify-protocol tests" },
    Peer { command: "wrk", package: "wrk", why: "bench-service's HTTP/1.1 load (skipped without it)" },
    Peer {
        command: "h2load",
        package: "nghttp2-client",
        why: "bench-service's HTTP/2 load (skipped without it)",
    },
];

/// A cargo subcommand `cargo xtask ci` runs, installed with `cargo install --locked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CargoTool {
    /// The subcommand (`cargo <subcommand>`).
    pub(crate) subcommand: &'static str,
    /// The crate that provides it.
    pub(crate) krate: &'static str,
    /// Why the run needs it.
    pub(crate) why: &'static str,
}

/// The cargo subcommands of `cargo xtask ci`.
pub(crate) const CARGO_TOOLS: &[CargoTool] = &[
    CargoTool {
        subcommand: "nextest",
        krate: "cargo-nextest",
        why: "runs the tests, reporting root-only tests as skipped",
    },
    CargoTool {
        subcommand: "deny",
        krate: "cargo-deny",
        why: "checks licenses, duplicate crates and sources",
    },
];

/// How Debian packages can be installed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Apt {
    /// We are root and `apt-get` exists.
    Root,
    /// Not root, but `sudo -n` (no password prompt) works and `apt-get` exists.
    Sudo,
    /// Not root and no password-less sudo.
    NotRoot,
    /// No `apt-get` (not a Debian-like system).
    Missing,
}

/// What to do about the missing system programs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PeerPlan {
    /// Everything is there.
    Nothing,
    /// Install these packages (sorted, de-duplicated) with the given apt access.
    Install { packages: Vec<&'static str>, sudo: bool, line: String },
    /// Cannot install: one line per missing program saying how to get it.
    Advise(Vec<String>),
}

/// Decides what to do about `missing` system programs, given how apt can be reached. Pure, so
/// that every case is tested without touching the machine.
pub(crate) fn plan_peers(missing: &[Peer], apt: Apt) -> PeerPlan {
    if missing.is_empty() {
        return PeerPlan::Nothing;
    }
    let packages: Vec<&'static str> =
        missing.iter().map(|p| p.package).collect::<BTreeSet<_>>().into_iter().collect();
    match apt {
        Apt::Root | Apt::Sudo => {
            let what: Vec<String> = missing.iter().map(|p| format!("{} ({})", p.command, p.why)).collect();
            let line = format!(
                "ci: installing {} with apt-get{}: the tests drive them as real peers; missing: {}",
                packages.join(" "),
                if apt == Apt::Sudo { " (sudo)" } else { "" },
                what.join(", ")
            );
            PeerPlan::Install { packages, sudo: apt == Apt::Sudo, line }
        }
        Apt::NotRoot | Apt::Missing => {
            let why_not =
                if apt == Apt::Missing { "no apt-get here" } else { "not root, no password-less sudo" };
            PeerPlan::Advise(
                missing
                    .iter()
                    .map(|p| {
                        format!(
                            "ci: `{}` is missing ({}) and cannot be installed ({why_not}): install the Debian \
                             package `{}` (`sudo apt-get install {}`) or your system's equivalent",
                            p.command, p.why, p.package, p.package
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// The line printed before installing a cargo tool.
pub(crate) fn cargo_install_line(tool: &CargoTool) -> String {
    format!("ci: installing {} with `cargo install {} --locked`: it {}", tool.krate, tool.krate, tool.why)
}

/// Installs what is missing (or, with `install == false`, only says how to get it).
pub(crate) fn ensure(install: bool) -> anyhow::Result<()> {
    let missing: Vec<Peer> = PEERS.iter().copied().filter(|p| !on_path(p.command)).collect();
    let apt = if install { apt_access() } else { Apt::NotRoot };
    match plan_peers(&missing, apt) {
        PeerPlan::Nothing => {}
        PeerPlan::Install { packages, sudo, line } => {
            println!("{line}");
            apt_get(sudo, &["update", "-qq"])?;
            let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
            args.extend(packages.iter().copied());
            apt_get(sudo, &args)?;
        }
        PeerPlan::Advise(lines) => {
            for line in lines {
                println!("{line}");
            }
        }
    }
    for tool in CARGO_TOOLS {
        if has_cargo_subcommand(tool.subcommand) {
            continue;
        }
        if !install {
            println!(
                "ci: {} is missing (it {}): `cargo install {} --locked`",
                tool.krate, tool.why, tool.krate
            );
            continue;
        }
        println!("{}", cargo_install_line(tool));
        let status = Command::new(cargo())
            .args(["install", tool.krate, "--locked"])
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("run cargo install {}", tool.krate))?;
        if !status.success() || !has_cargo_subcommand(tool.subcommand) {
            bail!(
                "could not install {} (`cargo install {} --locked` exited with {status}); install it by hand",
                tool.krate,
                tool.krate
            );
        }
    }
    Ok(())
}

fn apt_access() -> Apt {
    if !on_path("apt-get") {
        return Apt::Missing;
    }
    if nix::unistd::geteuid().is_root() {
        return Apt::Root;
    }
    // `-n`: never prompt (CI has no terminal); a sudo that wants a password counts as none.
    let sudo_ok = on_path("sudo")
        && Command::new("sudo")
            .args(["-n", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if sudo_ok { Apt::Sudo } else { Apt::NotRoot }
}

fn apt_get(sudo: bool, args: &[&str]) -> anyhow::Result<()> {
    let mut command = if sudo {
        let mut c = Command::new("sudo");
        c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    let status = command.args(args).stdin(Stdio::null()).status().context("run apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

/// Whether `command` is an executable file in a `PATH` directory.
pub(crate) fn on_path(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(command))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

pub(crate) fn has_cargo_subcommand(name: &str) -> bool {
    Command::new(cargo())
        .args([name, "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(command: &str) -> Peer {
        *PEERS.iter().find(|p| p.command == command).unwrap()
    }

    #[test]
    fn nothing_missing_installs_nothing() {
        for apt in [Apt::Root, Apt::Sudo, Apt::NotRoot, Apt::Missing] {
            assert_eq!(plan_peers(&[], apt), PeerPlan::Nothing);
        }
    }

    #[test]
    fn as_root_the_missing_packages_are_installed_once_each_in_one_announced_line() {
        let missing = [peer("flock"), peer("setpriv"), peer("wrk"), peer("systemd-notify")];
        let PeerPlan::Install { packages, sudo, line } = plan_peers(&missing, Apt::Root) else { panic!() };
        assert_eq!(packages, ["systemd", "util-linux", "wrk"]);
        assert!(!sudo);
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("ci: installing systemd util-linux wrk with apt-get: "), "{line}");
        assert!(line.contains("flock (dirlock interoperates with flock(1))"), "{line}");
    }

    #[test]
    fn with_passwordless_sudo_apt_runs_through_sudo() {
        let PeerPlan::Install { sudo, line, .. } = plan_peers(&[peer("curl")], Apt::Sudo) else { panic!() };
        assert!(sudo);
        assert!(line.contains("with apt-get (sudo)"), "{line}");
    }

    #[test]
    fn without_root_or_apt_each_missing_tool_gets_one_line_saying_how_to_get_it() {
        for apt in [Apt::NotRoot, Apt::Missing] {
            let PeerPlan::Advise(lines) = plan_peers(&[peer("h2load"), peer("strace")], apt) else {
                panic!()
            };
            assert_eq!(lines.len(), 2);
            assert!(
                lines[0].contains("`h2load` is missing")
                    && lines[0].contains("apt-get install nghttp2-client")
            );
            assert!(lines.iter().all(|l| !l.contains('\n')));
        }
    }

    #[test]
    fn the_peer_list_is_the_set_ci_installed_before() {
        let packages: BTreeSet<&str> = PEERS.iter().map(|p| p.package).collect();
        assert_eq!(
            packages.into_iter().collect::<Vec<_>>(),
            ["curl", "mount", "nghttp2-client", "openssl", "perl", "strace", "systemd", "util-linux", "wrk"]
        );
    }

    #[test]
    fn cargo_tools_are_installed_locked_and_say_why() {
        let line = cargo_install_line(&CARGO_TOOLS[1]);
        assert_eq!(
            line,
            "ci: installing cargo-deny with `cargo install cargo-deny --locked`: it checks licenses, duplicate crates and sources"
        );
    }
}
