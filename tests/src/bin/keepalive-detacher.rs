//! Fixture for keepalive: runs a command under a `keepalive::Supervisor` in a process of its own.
//!
//! `keepalive-detacher -- CMD [ARG...]`: starts CMD, detaches, prints the snapshot as one JSON line
//! and exits — leaving a running service that is nobody's child (for adoption by another process).
//!
//! `keepalive-detacher --die-with -- CMD [ARG...]`: starts CMD with
//! `Lifetime::DieWithSupervisor { SIGTERM }`, prints its pid and keeps supervising until killed.

use keepalive::{Command, Config, EventKind, Lifetime, Signal, Supervisor};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let die_with = std::env::args().any(|a| a == "--die-with");
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    let (program, rest) =
        args.split_first().ok_or_else(|| anyhow::anyhow!("usage: keepalive-detacher -- CMD"))?;
    let mut config = Config::default();
    if die_with {
        config.lifetime = Lifetime::DieWithSupervisor { signal: Signal::TERM };
    }
    let mut supervised =
        Supervisor::new(Command::new(program.clone()).args(rest.iter().cloned())).config(config).spawn()?;
    let mut events = supervised.events();
    let pid = match events.next().await.map(|e| e.kind) {
        Some(EventKind::Started { pid, .. }) => pid,
        other => anyhow::bail!("expected Started, got {other:?}"),
    };
    if die_with {
        println!("{pid}");
        std::future::pending::<()>().await;
    }
    let snapshot = supervised.detach().await?;
    println!("{}", snapshot.to_json());
    Ok(())
}
