//! The CLI's conventions, checked on the real binary: `--help` with examples for every
//! subcommand, the exit-status table (the same in `--help`, the man page and the README), the
//! man pages and completions `cargo xtask man|completions` write, and `-v`/`-q`.
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::{Command, Output};

use lifeline::dirlock::DirLock;

fn lifeline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run lifeline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every documented command, as its words on the command line.
const COMMANDS: &[&[&str]] =
    &[&["lock"], &["supervise"], &["cert"], &["cert", "check"], &["restart"], &["status"], &["stop"]];

#[test]
fn every_subcommand_has_help_with_an_example_of_itself() {
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let out = lifeline(&args);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        let example = format!("\n  lifeline {} ", command.join(" "));
        assert!(
            help.contains("\nExamples:\n") && help.contains(&example),
            "{args:?} has no example:\n{help}"
        );
        // The short form too.
        let mut short = command.to_vec();
        short.push("-h");
        assert_eq!(lifeline(&short).status.code(), Some(0));
    }
}

/// The exit codes `lifeline --help` lists, each with its meaning.
fn exit_table() -> Vec<(String, String)> {
    let help = text(&lifeline(&["--help"]).stdout);
    let table = help.split("Exit status:\n").nth(1).expect("an exit status table in --help");
    let mut rows: Vec<(String, String)> = Vec::new();
    for line in table.lines().take_while(|l| !l.is_empty()) {
        match line[2..].split_once("  ") {
            Some((code, meaning)) if !code.trim().is_empty() => {
                rows.push((code.trim().to_owned(), meaning.trim().to_owned()));
            }
            _ => {
                let meaning = &mut rows.last_mut().unwrap().1;
                meaning.push(' ');
                meaning.push_str(line.trim());
            }
        }
    }
    rows
}

#[test]
fn help_lists_every_exit_status_and_the_readme_has_the_same_table() {
    let rows = exit_table();
    let codes: Vec<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes, ["0", "1", "2", "3", "69", "75", "other"]);
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    for (code, meaning) in &rows {
        let row = format!("| {code} | {meaning} |");
        assert!(readme.contains(&row), "README.md lacks the exit status row\n{row}");
    }
}

#[test]
fn the_man_pages_cover_every_command_with_examples_and_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = lifeline(&["generate", "man", "--out-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "lifeline-cert-check.1",
            "lifeline-cert.1",
            "lifeline-lock.1",
            "lifeline-restart.1",
            "lifeline-status.1",
            "lifeline-stop.1",
            "lifeline-supervise.1",
            "lifeline.1"
        ]
    );
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let top = page("lifeline.1");
    assert!(top.contains(".SH \"EXIT STATUS\""), "{top}");
    for (code, _) in exit_table() {
        assert!(top.contains(&format!(".TP\n\\fB{code}\\fR\n")), "lifeline.1 lacks exit status {code}");
    }
    assert!(!top.contains("generate"), "the hidden subcommand is documented:\n{top}");
    let check = page("lifeline-cert-check.1");
    assert!(check.contains(".SH EXAMPLES\n.nf\nlifeline cert check \\-\\-cert cert.pem"), "{check}");
    assert!(check.contains("\\-\\-checkend"), "{check}");
    assert!(check.contains("lifeline\\fR(1)"), "{check}");
    // Rendered by a real formatter where one is installed.
    let man = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("lifeline-status.1"))
        .env("MANWIDTH", "100")
        .output();
    if let Ok(man) = man
        && man.status.success()
    {
        let rendered = text(&man.stdout);
        assert!(rendered.contains("--format") && rendered.contains("EXIT STATUS"), "{rendered}");
    }
}

#[test]
fn completions_are_written_for_every_shell_without_the_hidden_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = lifeline(&["generate", "completions", "--out-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for file in ["lifeline.bash", "_lifeline", "lifeline.fish", "lifeline.elv", "_lifeline.ps1"] {
        let script = std::fs::read_to_string(dir.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(script.contains("supervise") && script.contains("checkend"), "{file}");
        assert!(!script.contains("generate"), "{file} offers the hidden subcommand");
    }
    // bash accepts its script.
    let bash = Command::new("bash").arg("-n").arg(dir.path().join("lifeline.bash")).output().unwrap();
    assert!(bash.status.success(), "{}", text(&bash.stderr));
}

/// `-v` and `-q` set the log level (over `RUST_LOG`); the one-line error that ends a command is
/// printed whatever the level. Seen through dirlock's "waiting for lock" (info) line while
/// another holder keeps the directory locked.
#[test]
fn verbose_and_quiet_set_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let _held = DirLock::acquire(dir.path()).unwrap();
    let d = dir.path().to_str().unwrap();
    let run = |flags: &[&str], rust_log: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
        cmd.env_remove("RUST_LOG").args(flags).args(["lock", "--wait", "50ms", d, "--", "true"]);
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(75), "{flags:?}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.lines().any(|l| l.starts_with("lifeline: timed out")), "{flags:?}: {stderr}");
        stderr.contains("waiting for lock")
    };
    assert!(!run(&[], None), "default: warnings only");
    assert!(run(&["-v"], None));
    assert!(run(&["--verbose"], None));
    assert!(run(&["-vv"], None));
    assert!(!run(&["-q"], None));
    assert!(!run(&["-qq"], None));
    assert!(run(&[], Some("info")), "RUST_LOG still works without a flag");
    assert!(!run(&["-q"], Some("info")), "the flag wins over RUST_LOG");
    // After the subcommand too (the flags are global).
    let out = lifeline(&["lock", "-v", "--wait", "50ms", d, "--", "true"]);
    assert!(text(&out.stderr).contains("waiting for lock"), "{}", text(&out.stderr));
    // -v and -q together is a usage error.
    assert_eq!(lifeline(&["-v", "-q", "lock", d, "--", "true"]).status.code(), Some(2));
}
