//! `cargo xtask bench`: runs every benchmark program of the `lifeline-bench` package (release
//! build), each measuring a mechanism against a baseline in the same run, and writes
//! `target/bench/report.md`: one table per mechanism with figure, baseline, ratio and target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::ci::cargo;
use crate::project_root;
use crate::svg::{Series, cdf, curve_chart, line_chart};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run each benchmark briefly (CI runs this to keep every benchmark compiling and running).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Only the benchmarks whose program name contains this (e.g. `dirlock`).
    #[arg(long)]
    pub(crate) only: Option<String>,
}

/// One row printed by a benchmark program (see `lifeline_bench::Row`).
#[derive(Debug, Deserialize)]
struct Row {
    mechanism: String,
    name: String,
    value: f64,
    unit: String,
    baseline_name: Option<String>,
    baseline: Option<f64>,
    target: String,
    met: Option<bool>,
    #[serde(default)]
    samples: Vec<f64>,
    #[serde(default)]
    baseline_samples: Vec<f64>,
    #[serde(default)]
    curve: Option<Point>,
}

/// A row's place on a cost curve (see `lifeline_bench::Point`).
#[derive(Debug, Deserialize)]
struct Point {
    curve: String,
    x_label: String,
    x: f64,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let root = project_root();
    // A quick run only keeps the programs compiling and running (its numbers mean nothing), so it
    // reuses the debug build CI already has instead of a second, optimised build of everything.
    let (profile, bin_dir) = if args.quick {
        ("dev", target_dir().join("debug"))
    } else {
        ("release", target_dir().join("release"))
    };
    cargo(&["build", "--profile", profile, "-p", "lifeline-bench", "--bins"], &[])?;
    // The `lifeline` CLI too (bench-keepalive measures `lifeline supervise` itself) and both
    // examples (bench-service restarts them under load, bench-systemd runs the server under
    // systemd). A build of their own: in the same build, lifeline would get the test-only
    // features of lifeline-tests (a bench dependency).
    cargo(
        &[
            "build",
            "--profile",
            profile,
            "-p",
            "lifeline-kit",
            "--features",
            "cli,full",
            "--bin",
            "lifeline",
            "--example",
            "https-server",
            "--example",
            "axum-server",
        ],
        &[],
    )?;
    let mut programs: Vec<String> = std::fs::read_dir(root.join("bench/src/bin"))
        .context("read bench/src/bin")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        // `bench-*-server` programs are helpers the benchmarks start, not benchmarks.
        .filter(|name| !name.ends_with("-server"))
        .filter(|name| args.only.as_deref().is_none_or(|only| name.contains(only)))
        .collect();
    programs.sort();

    let mut rows = Vec::new();
    for program in &programs {
        println!("==> bench: {program}{}", if args.quick { " --quick" } else { "" });
        let mut cmd = Command::new(bin_dir.join(program));
        if args.quick {
            cmd.arg("--quick");
        }
        let out = cmd
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("run benchmark {program}"))?;
        if !out.status.success() {
            bail!("benchmark {program} failed: {}", out.status);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
            let row: Row =
                serde_json::from_str(line).with_context(|| format!("{program} printed a bad row: {line}"))?;
            println!("    {}: {} {}{}", row.name, fmt_num(row.value), row.unit, ratio_text(&row));
            rows.push(row);
        }
    }

    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    // Plots of an earlier run (other figures, other numbering) must not linger beside this report.
    for entry in std::fs::read_dir(&out_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "svg") {
            std::fs::remove_file(&path)?;
        }
    }
    let plots = plot(&rows, &out_dir)?;
    let mut report = render(&rows, args.quick);
    report.push_str(&render_curves(&rows, &out_dir)?);
    if !plots.is_empty() {
        report.push_str("\n## Distributions\n\n");
        for (name, file) in &plots {
            let _ = writeln!(report, "### {name}\n\n![{name}]({file})\n");
        }
    }
    let path = out_dir.join("report.md");
    std::fs::write(&path, report)?;
    println!("bench: {} figures from {} programs; report in {}", rows.len(), programs.len(), path.display());
    Ok(())
}

/// A row's baseline, ratio and met cells, as both report tables show them.
fn cells(row: &Row) -> (String, String, &'static str) {
    let baseline = match (&row.baseline_name, row.baseline) {
        (Some(name), Some(v)) => format!("{} {} ({name})", fmt_num(v), row.unit),
        _ => "—".to_owned(),
    };
    let ratio =
        row.baseline.filter(|b| *b != 0.0).map_or("—".to_owned(), |b| format!("{:.2}×", row.value / b));
    let met = match row.met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    };
    (baseline, ratio, met)
}

fn render(rows: &[Row], quick: bool) -> String {
    let mut by_mechanism: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        by_mechanism.entry(&row.mechanism).or_default().push(row);
    }
    let mut md = String::from("# lifeline benchmark report\n\n");
    if quick {
        md.push_str("**Quick run** (`--quick`): a debug build and few iterations; the figures are not meaningful.\n\n");
    }
    md.push_str("Every figure is compared with a baseline measured in the same run on the same machine.\n");
    for (mechanism, rows) in by_mechanism {
        let _ = write!(
            md,
            "\n## {mechanism}\n\n| figure | value | baseline | ratio | target | met |\n|---|---|---|---|---|---|\n"
        );
        for row in rows {
            let (baseline, ratio, met) = cells(row);
            let _ = writeln!(
                md,
                "| {} | {} {} | {baseline} | {ratio} | {} | {met} |",
                row.name,
                fmt_num(row.value),
                row.unit,
                row.target
            );
        }
    }
    md
}

/// The rows of each cost curve, in the order the programs printed them: (mechanism, curve) →
/// rows.
fn curves(rows: &[Row]) -> Vec<((&str, &str), Vec<&Row>)> {
    let mut out: Vec<((&str, &str), Vec<&Row>)> = Vec::new();
    for row in rows {
        let Some(point) = &row.curve else { continue };
        let key = (row.mechanism.as_str(), point.curve.as_str());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(row),
            None => out.push((key, vec![row])),
        }
    }
    out
}

/// "## Cost curves": per curve, a table of its points (figure, baseline, ratio, target, met) and
/// a line chart of the figure and its baseline on the same axes.
fn render_curves(rows: &[Row], out_dir: &std::path::Path) -> anyhow::Result<String> {
    let curves = curves(rows);
    if curves.is_empty() {
        return Ok(String::new());
    }
    let mut md = String::from(
        "\n## Cost curves\n\nEach point beside its baseline from the same run; the chart draws both on the same axes.\n",
    );
    for (i, ((mechanism, curve), points)) in curves.iter().enumerate() {
        let x_label = points[0].curve.as_ref().map_or("x", |p| p.x_label.as_str());
        let _ = write!(
            md,
            "\n### {mechanism}: {curve}\n\n| {x_label} | figure | value | baseline | ratio | target | met |\n|---|---|---|---|---|---|---|\n"
        );
        for row in points {
            let x = row.curve.as_ref().map_or(0.0, |p| p.x);
            let (baseline, ratio, met) = cells(row);
            let _ = writeln!(
                md,
                "| {} | {} | {} {} | {baseline} | {ratio} | {} | {met} |",
                if x.fract() == 0.0 { format!("{x:.0}") } else { fmt_num(x) },
                row.name,
                fmt_num(row.value),
                row.unit,
                row.target
            );
        }
        // One chart per unit (a curve may carry, say, a latency and a CPU share): the figure and
        // its baseline, each a line through the points.
        let mut units: Vec<&str> = points.iter().map(|r| r.unit.as_str()).collect();
        units.dedup();
        let mut seen = Vec::new();
        for unit in units {
            if seen.contains(&unit) {
                continue;
            }
            seen.push(unit);
            let of_unit: Vec<&&Row> = points.iter().filter(|r| r.unit == unit).collect();
            let xy = |value: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
                of_unit.iter().filter_map(|r| Some((r.curve.as_ref()?.x, value(r)?))).collect()
            };
            let figure = xy(&|r| Some(r.value));
            let baseline = xy(&|r| r.baseline);
            if figure.len() < 2 && baseline.len() < 2 {
                continue;
            }
            let figure_name = format!("{curve} ({unit})");
            let baseline_name =
                of_unit.iter().find_map(|r| r.baseline_name.clone()).unwrap_or_else(|| "baseline".to_owned());
            let mut series = vec![Series { name: &figure_name, points: figure }];
            if baseline.len() > 1 {
                series.push(Series { name: &baseline_name, points: baseline });
            }
            let title = format!("{mechanism}: {curve}");
            let svg = curve_chart(&title, x_label, unit, &series);
            let file = format!("curve-{i:02}-{}.svg", slug(&format!("{mechanism}-{curve}-{unit}")));
            std::fs::write(out_dir.join(&file), svg)?;
            let _ = writeln!(md, "\n![{title} ({unit})]({file})");
        }
    }
    Ok(md)
}

/// One SVG per figure that carries samples: the CDF of the figure, and of its baseline when the
/// program recorded the baseline's samples too. Returns (title, file name) pairs.
fn plot(rows: &[Row], out_dir: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut plots = Vec::new();
    for (i, row) in rows.iter().enumerate().filter(|(_, r)| r.samples.len() > 1) {
        let title = format!("{}: {}", row.mechanism, row.name);
        let mut series = vec![Series { name: &row.name, points: cdf(&row.samples) }];
        if row.baseline_samples.len() > 1 {
            series.push(Series {
                name: row.baseline_name.as_deref().unwrap_or("baseline"),
                points: cdf(&row.baseline_samples),
            });
        }
        let svg = line_chart(&title, &row.unit, "percentile", &series, &[]);
        let file = format!("{:02}-{}.svg", i, slug(&format!("{}-{}", row.mechanism, row.name)));
        std::fs::write(out_dir.join(&file), svg)?;
        plots.push((title, file));
    }
    Ok(plots)
}

fn slug(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').chars().take(60).collect()
}

fn ratio_text(row: &Row) -> String {
    match row.baseline.filter(|b| *b != 0.0) {
        Some(b) => format!(" ({:.2}× {})", row.value / b, row.baseline_name.as_deref().unwrap_or("baseline")),
        None => String::new(),
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), PathBuf::from)
}
