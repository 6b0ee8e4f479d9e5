//! `lifeline cert check`: validate a certificate/key pair exactly as certwatch would.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use certwatch::{CertInfo, PemFiles, Validity};

/// `lifeline cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate a cert/key pair as certwatch would; exit 0 if it would be accepted, 1 otherwise.
    #[command(after_help = "\
Examples:
  lifeline cert check --cert cert.pem --key key.pem
  lifeline cert check --cert cert.pem --key key.pem --checkend 30d    (renew when this exits 1)
  lifeline cert check --cert cert.pem --key key.pem --json | jq -r .not_after

Exit status: 0 the pair would be served (and, with --checkend, its leaf does not expire within
DURATION); 1 the pair is refused, or its leaf expires within DURATION.")]
    Check(CheckArgs),
}

/// Arguments of `lifeline cert check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// PEM certificate chain, leaf first.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: PathBuf,
    /// Exit 1 when the leaf expires within DURATION from now (`openssl x509 -checkend`); an
    /// expired leaf always does.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    checkend: Option<Duration>,
    /// Print one JSON object instead of the text fields.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check(args) => check(args),
    }
}

/// What `check` prints, as text or JSON.
#[derive(Debug, serde::Serialize)]
struct Report<'a> {
    subject: &'a str,
    sans: &'a [String],
    sha256: &'a str,
    serial: &'a str,
    not_before: String,
    not_after: String,
    days_left: i64,
    chain: usize,
    validity: String,
    /// With `--checkend`: whether the leaf expires within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_within_checkend: Option<bool>,
}

/// Prints what the pair is; a refusal is an `Err`, which `main` prints as one line and turns
/// into exit status 1. A leaf expiring within `--checkend` is printed, then exits 1.
fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let CheckArgs { cert, key, checkend, json } = args;
    // The very function the watcher runs before every swap.
    let checked = certwatch::check(&PemFiles::ring(cert, key))?;
    let info = &checked.info;
    let now = SystemTime::now();
    let validity = info.validity_at(now);
    let expiring = checkend.map(|within| expires_within(info, now, within));
    let report = Report {
        subject: &info.subject,
        sans: &info.sans,
        sha256: &info.fingerprint,
        serial: &info.serial,
        not_before: humantime::format_rfc3339_seconds(info.not_before).to_string(),
        not_after: humantime::format_rfc3339_seconds(info.not_after).to_string(),
        // Truncated towards zero: -2 reads "expired two (and a bit) days ago".
        days_left: (unix_secs(info.not_after) - unix_secs(now)) / 86_400,
        chain: info.chain_len,
        validity: validity.to_string(),
        expires_within_checkend: expiring,
    };
    if json {
        println!("{}", serde_json::to_string(&report).context("cannot encode the report as JSON")?);
    } else {
        print_text(&report);
    }
    if validity != Validity::Valid {
        // Accepted, as certwatch accepts it (serving an older pair is no better), but said loudly.
        eprintln!(
            "lifeline: warning: the certificate is {validity}; certwatch would serve it, clients may refuse it"
        );
    }
    if let (Some(true), Some(within)) = (expiring, checkend) {
        eprintln!(
            "lifeline: the certificate expires within {} (not_after {})",
            humantime::format_duration(within),
            report.not_after
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(report: &Report<'_>) {
    let sans = if report.sans.is_empty() { "-".to_owned() } else { report.sans.join(", ") };
    println!("subject:    {}", report.subject);
    println!("sans:       {sans}");
    println!("sha256:     {}", report.sha256);
    println!("serial:     {}", report.serial);
    println!("not_before: {}", report.not_before);
    println!("not_after:  {}", report.not_after);
    println!("days_left:  {}", report.days_left);
    println!("chain:      {} certificate{}", report.chain, if report.chain == 1 { "" } else { "s" });
    println!("validity:   {}", report.validity);
    if let Some(expiring) = report.expires_within_checkend {
        println!("checkend:   {}", if expiring { "expires within it" } else { "does not expire within it" });
    }
}

/// Whether the leaf's `not_after` comes before `now + within` (openssl's `-checkend`: "will
/// expire"); the sum saturates, so no duration makes it overflow.
fn expires_within(info: &CertInfo, now: SystemTime, within: Duration) -> bool {
    match now.checked_add(within) {
        Some(end) => info.not_after < end,
        None => true,
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
