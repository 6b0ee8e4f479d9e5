//! `cargo xtask demo`: builds the `lifeline` CLI, the example HTTPS server and the demo driver,
//! runs the walk-through (`tests/src/bin/lifeline-demo.rs`) against a live load, and renders
//! `target/demo/report.md` and `target/demo/timeline.svg` from what it measured.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::bench::target_dir;
use crate::project_root;
use crate::svg::{Marker, Series, line_chart};

/// Arguments of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

#[derive(Debug, Deserialize)]
struct Phase {
    name: String,
    start: f64,
    end: f64,
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
    notes: Vec<String>,
    passed: bool,
}

#[derive(Debug, Deserialize)]
struct Event {
    at: f64,
    label: String,
}

#[derive(Debug, Deserialize)]
struct Outcome {
    phases: Vec<Phase>,
    events: Vec<Event>,
    requests: Vec<(f64, bool)>,
    passed: bool,
}

pub(crate) fn run(_args: &Args) -> anyhow::Result<()> {
    println!("demo: building the lifeline CLI, the example server and the demo driver");
    build_stage(&["lifeline-demo"])?;
    let debug = target_dir().join("debug");
    let out = target_dir().join("demo");
    let status = Command::new(debug.join("lifeline-demo"))
        .arg("--lifeline")
        .arg(debug.join("lifeline"))
        .arg("--server")
        .arg(debug.join("examples/https-server"))
        .arg("--out")
        .arg(&out)
        .current_dir(project_root())
        .status()
        .context("run the demo driver")?;
    let result = out.join("result.json");
    if result.exists() {
        let outcome: Outcome =
            serde_json::from_slice(&std::fs::read(&result)?).context("read result.json")?;
        std::fs::write(out.join("timeline.svg"), timeline(&outcome))?;
        std::fs::write(out.join("report.md"), report(&outcome))?;
        println!(
            "demo: report in {}, timeline in {}",
            out.join("report.md").display(),
            out.join("timeline.svg").display()
        );
        if !outcome.passed {
            bail!("the demo saw an expectation fail (see the table above)");
        }
    }
    if !status.success() {
        bail!("the demo driver failed ({status}); the server's log is {}", out.join("server.log").display());
    }
    Ok(())
}

/// Builds the `lifeline` CLI, the example server and the `programs` of the tests package (a
/// driver and the fixtures it runs).
pub(crate) fn build_stage(programs: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![
        "build",
        "-p",
        "lifeline-kit",
        "--features",
        "cli,full",
        "--bin",
        "lifeline",
        "--example",
        "https-server",
    ];
    args.extend(["-p", "lifeline-tests"]);
    for program in programs {
        args.extend(["--bin", program]);
    }
    crate::ci::cargo(&args, &[])
}

/// Requests per second (ok and failed) in 250 ms buckets, with each event marked.
fn timeline(outcome: &Outcome) -> String {
    const BUCKET: f64 = 0.25;
    let end = outcome.requests.last().map_or(0.0, |r| r.0);
    let buckets = (end / BUCKET).ceil() as usize + 1;
    let (mut ok, mut failed) = (vec![0u32; buckets], vec![0u32; buckets]);
    for &(at, good) in &outcome.requests {
        let i = ((at / BUCKET) as usize).min(buckets - 1);
        if good { ok[i] += 1 } else { failed[i] += 1 }
    }
    let points = |counts: &[u32]| -> Vec<(f64, f64)> {
        counts.iter().enumerate().map(|(i, &n)| (i as f64 * BUCKET, f64::from(n) / BUCKET)).collect()
    };
    let markers: Vec<Marker<'_>> =
        outcome.events.iter().map(|e| Marker { x: e.at, label: &e.label }).collect();
    line_chart(
        "lifeline demo: requests per second under load",
        "seconds",
        "requests/s",
        &[Series { name: "ok", points: points(&ok) }, Series { name: "failed", points: points(&failed) }],
        &markers,
    )
}

fn report(outcome: &Outcome) -> String {
    let mut md = String::from("# lifeline demo report\n\n");
    let _ = writeln!(
        md,
        "The example HTTPS server under `lifeline supervise --notify`, with a live non-retrying load \
         (keep-alive and new connections), walked through every mechanism. Result: **{}**.\n",
        if outcome.passed { "every expectation held" } else { "some expectations failed" }
    );
    md.push_str("| phase | requests ok | failed | p50 ms | p99 ms | result |\n|---|---|---|---|---|---|\n");
    for p in &outcome.phases {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {} |",
            p.name,
            p.ok,
            p.failed,
            p.p50_ms,
            p.p99_ms,
            if p.passed { "ok" } else { "**FAIL**" }
        );
    }
    md.push_str("\n## What was seen\n\n");
    for p in &outcome.phases {
        let _ = writeln!(md, "**{}** ({:.1}–{:.1} s)\n", p.name, p.start, p.end);
        for note in &p.notes {
            let _ = writeln!(md, "- {note}");
        }
        md.push('\n');
    }
    md.push_str(
        "Failed requests are expected only in phase 5, while no process is serving: a SIGKILL \
                 is a crash, and keepalive restarts the service; every other phase must have none.\n\n\
                 ![requests per second](timeline.svg)\n",
    );
    md
}
