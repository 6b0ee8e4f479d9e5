//! `cargo xtask demo` (grows with each mechanism).

/// Arguments of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run briefly (CI uses this to keep the command working).
    #[arg(long)]
    quick: bool,
}

#[expect(clippy::unnecessary_wraps, reason = "a placeholder until the mechanisms land")]
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let _ = args.quick;
    println!("demo: nothing to run yet");
    Ok(())
}
