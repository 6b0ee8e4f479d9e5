//! `lifeline cert check`: validate a certificate/key pair exactly as certwatch would.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use certwatch::{PemFiles, Validity};

/// `lifeline cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate a cert/key pair as certwatch would; exit 0 if it would be accepted, 1 otherwise.
    Check {
        /// PEM certificate chain, leaf first.
        #[arg(long)]
        cert: PathBuf,
        /// PEM private key (PKCS#8, PKCS#1 or SEC1).
        #[arg(long)]
        key: PathBuf,
    },
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { cert, key } => check(cert, key),
    }
}

/// Prints what the pair is; a refusal is an `Err`, which `main` prints as one line and turns
/// into exit status 1.
fn check(cert: PathBuf, key: PathBuf) -> anyhow::Result<ExitCode> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // The very function the watcher runs before every swap.
    let checked = certwatch::check(&PemFiles::new(cert, key).with_provider(provider))?;
    let info = &checked.info;
    let now = SystemTime::now();
    let days_left = (unix_secs(info.not_after) - unix_secs(now)).div_euclid(86_400);
    let sans = if info.sans.is_empty() { "-".to_owned() } else { info.sans.join(", ") };
    println!("subject:    {}", info.subject);
    println!("sans:       {sans}");
    println!("sha256:     {}", info.fingerprint);
    println!("serial:     {}", info.serial);
    println!("not_before: {}", humantime::format_rfc3339_seconds(info.not_before));
    println!("not_after:  {}", humantime::format_rfc3339_seconds(info.not_after));
    println!("days_left:  {days_left}");
    println!("chain:      {} certificate{}", info.chain_len, if info.chain_len == 1 { "" } else { "s" });
    println!("validity:   {}", info.validity_at(now));
    match info.validity_at(now) {
        Validity::Valid => {}
        // Accepted, as certwatch accepts it (serving an older pair is no better), but said loudly.
        other => eprintln!(
            "lifeline: warning: the certificate is {other}; certwatch would serve it, clients may refuse it"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
