//! `lifeline generate man|completions --out-dir DIR` (hidden: `cargo xtask man` and
//! `cargo xtask completions` run it): the man pages and the shell completions, generated from
//! the very definitions the parser uses, so they cannot drift from the flags.
//!
//! The subcommand is added to the parser at run time and is absent from the command the pages
//! and completions are made from: nobody sees it, and no completion offers it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args as _, CommandFactory as _, ValueEnum as _};

/// The hidden subcommand's name.
pub(crate) const NAME: &str = "generate";

/// What to generate.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum What {
    /// One man page per command: `lifeline.1`, `lifeline-lock.1`, … `lifeline-cert-check.1`.
    Man,
    /// A completion script per shell: `lifeline.bash`, `_lifeline` (zsh), `lifeline.fish`, …
    Completions,
}

/// Arguments of `lifeline generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Man pages or shell completions.
    #[arg(value_enum)]
    what: What,
    /// Where to write the files (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
}

/// The hidden subcommand, for the parser only.
pub(crate) fn command() -> clap::Command {
    Args::augment_args(clap::Command::new(NAME)).hide(true)
}

/// Runs `lifeline generate` from its matches.
pub(crate) fn run(matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let args = <Args as clap::FromArgMatches>::from_arg_matches(matches)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let files = match args.what {
        What::Man => man_pages(&args.out_dir)?,
        What::Completions => completions(&args.out_dir)?,
    };
    for file in files {
        println!("{}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The documented command tree (without the hidden `generate`).
fn documented() -> clap::Command {
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn completions(out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut cmd = documented();
    clap_complete::Shell::value_variants()
        .iter()
        .map(|&shell| {
            clap_complete::generate_to(shell, &mut cmd, "lifeline", out_dir)
                .with_context(|| format!("cannot write the {shell} completions"))
        })
        .collect()
}

fn man_pages(out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    write_pages(&documented(), true, out_dir, &mut files)?;
    Ok(files)
}

fn write_pages(
    cmd: &clap::Command,
    top: bool,
    out_dir: &Path,
    files: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, false, out_dir, files)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("lifeline {}", env!("CARGO_PKG_VERSION")))
        .manual("lifeline manual");
    let path = out_dir.join(man.get_filename());
    let page = render(&man, cmd, top).context("cannot render a man page")?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    files.push(path);
    Ok(())
}

/// `clap_mangen`'s sections, then EXAMPLES and EXIT STATUS from the help texts (its own
/// rendering of `after_help` runs the lines of a table or an example together).
fn render(man: &clap_mangen::Man, cmd: &clap::Command, top: bool) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let after = cmd.get_after_help().map(ToString::to_string).unwrap_or_default();
    let examples = paragraph(&after, "Examples:");
    if !examples.is_empty() {
        writeln!(out, ".SH EXAMPLES\n.nf")?;
        for line in examples.lines() {
            writeln!(out, "{}", roff_line(line.trim_start()))?;
        }
        writeln!(out, ".fi")?;
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    let own = paragraph(&after, "Exit status:");
    if top {
        for (code, meaning) in crate::exit::TABLE {
            writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_line(code), roff_line(meaning))?;
        }
    } else {
        if !own.is_empty() {
            writeln!(out, "{}", roff_line(&own.split_whitespace().collect::<Vec<_>>().join(" ")))?;
            writeln!(out, ".PP")?;
        }
        writeln!(out, "Every exit status of every command is listed in \\fBlifeline\\fR(1).")?;
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The text after `heading` in a help text, up to the next blank line (the heading may start
/// the paragraph's first line, as `Exit status: 0 …` does).
fn paragraph(text: &str, heading: &str) -> String {
    let Some(start) = text.find(heading) else { return String::new() };
    let rest = text[start + heading.len()..].trim_start_matches([' ', '\n']);
    rest.split("\n\n").next().unwrap_or_default().trim_end().to_owned()
}

/// One line of roff text: backslashes and hyphens escaped, a leading `.` or `'` defused.
fn roff_line(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) { format!("\\&{escaped}") } else { escaped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_found_by_heading() {
        let text = "Examples:\n  a\n  b\n\nExit status: 0 ok;\n1 not.";
        assert_eq!(paragraph(text, "Examples:"), "a\n  b");
        assert_eq!(paragraph(text, "Exit status:"), "0 ok;\n1 not.");
        assert_eq!(paragraph(text, "Missing:"), "");
    }

    #[test]
    fn roff_lines_cannot_become_requests() {
        assert_eq!(roff_line(".SH x"), "\\&.SH x");
        assert_eq!(roff_line("'x"), "\\&'x");
        assert_eq!(roff_line("--wait a\\b"), "\\-\\-wait a\\eb");
    }
}
