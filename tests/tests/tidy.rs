//! Repository rules that code can check, run under `cargo test` (rust-analyzer's `tidy`):
//! every Rust file opens with module docs, no `#[ignore]` without a reason, no test that skips
//! itself by returning early (and a `needs root` test asserts root), no `dbg!`, every `unsafe`
//! block carries a `// SAFETY:` comment, every member opts into the workspace lints.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every `.rs` file under the project's source folders (not `target/`).
fn rust_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in ["crates", "tests", "xtask", "bench"] {
        walk(&root().join(top), &mut out);
    }
    assert!(out.len() > 5, "tidy found only {} Rust files: wrong root?", out.len());
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests/tests/tidy.rs") {
            // (This file is skipped: it spells out the patterns it looks for.)
            out.push(path);
        }
    }
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

#[test]
fn every_rust_file_starts_with_module_docs() {
    let offenders: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).expect("read source");
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|p| rel(&p))
        .collect();
    assert!(offenders.is_empty(), "files without a `//!` module doc on their first line: {offenders:#?}");
}

#[test]
fn no_ignore_without_a_reason() {
    let needle = concat!("#[", "ignore]");
    let offenders = lines_containing(needle);
    assert!(
        offenders.is_empty(),
        "`{needle}` without a reason (write `#[ignore = \"why\"]`): {offenders:#?}"
    );
}

/// A test that cannot run here is `#[ignore = "needs …"]` (reported as skipped, run by
/// `cargo xtask ci` where it can), never an early return that counts as a pass.
#[test]
fn no_test_skips_itself_silently() {
    let mut offenders = Vec::new();
    for needle in [concat!("eprintln!(\"", "skipped"), concat!("eprintln!(\"", "SKIPPED")] {
        offenders.extend(lines_containing(needle));
    }
    assert!(
        offenders.is_empty(),
        "tests that return early and pass: use `#[ignore = \"needs …\"]`: {offenders:#?}"
    );
}

/// A test ignored for needing root asserts that it runs as root: run as another user (with
/// `--run-ignored`), it fails instead of passing without testing anything.
#[test]
fn a_test_that_needs_root_asserts_it() {
    let needle = concat!("#[ignore = \"needs ", "root");
    let mut offenders = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with(needle) {
                continue;
            }
            let body = lines[i..].iter().take(12);
            if !body.clone().any(|l| l.contains("is_root()")) {
                offenders.push(format!("{}:{}", rel(&path), i + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "`needs root` tests without an `is_root()` assertion: {offenders:#?}");
}

#[test]
fn no_dbg_macro() {
    let needle = concat!("dbg", "!(");
    let offenders = lines_containing(needle);
    assert!(offenders.is_empty(), "leftover `{needle}`: {offenders:#?}");
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let mut offenders = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let opens_block = code.contains("unsafe {") || code.trim_end().ends_with("unsafe");
            let is_unsafe_impl = code.contains("unsafe impl");
            if !(opens_block || is_unsafe_impl) {
                continue;
            }
            // The comment sits on one of the few lines above (or on the same line).
            let from = i.saturating_sub(6);
            if !lines[from..=i].iter().any(|l| l.contains("SAFETY:")) {
                offenders.push(format!("{}:{}", rel(&path), i + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "`unsafe` without a `// SAFETY:` comment just above: {offenders:#?}");
}

#[test]
fn every_member_uses_the_workspace_lints() {
    let mut manifests = vec![
        root().join("tests/Cargo.toml"),
        root().join("xtask/Cargo.toml"),
        root().join("bench/Cargo.toml"),
        root().join("tests/app-aws-lc-rs/Cargo.toml"),
        root().join("tests/app-ring/Cargo.toml"),
    ];
    manifests.extend(published_crates().iter().map(|dir| dir.join("Cargo.toml")));
    let offenders: Vec<String> = manifests
        .iter()
        .filter(|m| {
            let text = std::fs::read_to_string(m).expect("read manifest");
            !text.contains("[lints]\nworkspace = true")
        })
        .map(|m| rel(m))
        .collect();
    assert!(offenders.is_empty(), "members without `[lints] workspace = true`: {offenders:#?}");
}

/// The directories of the crates published to crates.io (everything under `crates/`).
fn published_crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root().join("crates")).expect("crates/").flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs
}

/// What a crate needs on crates.io and docs.rs: both license files (copies of the root's, not
/// links: `cargo package` must ship them), a changelog, its own keywords and categories, and
/// docs built for the one target it supports.
#[test]
fn every_published_crate_is_ready_to_package() {
    let mut problems = Vec::new();
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let expected = std::fs::read(root().join(license)).expect("root license file");
        for dir in published_crates() {
            let path = dir.join(license);
            let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
            if !is_file || std::fs::read(&path).ok().as_ref() != Some(&expected) {
                problems.push(format!("{}: not a copy of the root's {license}", rel(&path)));
            }
        }
    }
    for dir in published_crates() {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("read manifest");
        if !dir.join("CHANGELOG.md").is_file() {
            problems.push(format!("{}: no CHANGELOG.md", rel(&dir)));
        }
        // keepalive still inherits the workspace's (its manifest is being changed elsewhere).
        if !dir.ends_with("keepalive") {
            for (field, wanted) in [
                ("keywords = [", "its own keywords"),
                ("categories = [", "its own categories"),
                ("targets = [\"x86_64-unknown-linux-gnu\"]", "docs.rs limited to Linux"),
            ] {
                if !manifest.contains(field) {
                    problems.push(format!("{}: {wanted}", rel(&dir.join("Cargo.toml"))));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// dirlock is a synchronous library: it must not pull an async runtime into its users' builds.
#[test]
fn dirlock_does_not_depend_on_tokio() {
    let manifest = std::fs::read_to_string(root().join("crates/dirlock/Cargo.toml")).expect("read manifest");
    let normal = manifest.split("\n[dependencies]\n").nth(1).expect("[dependencies]");
    let normal = normal.split("\n[").next().unwrap_or_default();
    assert!(!normal.contains("tokio"), "dirlock's [dependencies] name tokio:\n{normal}");
}

fn lines_containing(needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("read source");
        for (i, line) in text.lines().enumerate() {
            if line.contains(needle) {
                hits.push(format!("{}:{}", rel(&path), i + 1));
            }
        }
    }
    hits
}
