//! Running probes: one tokio task per probe of the current main process, reporting every check's
//! outcome to the supervisor's loop, which counts and acts.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Check, HttpCheck, Probe, ProbeRole};
use crate::exit::ExitStatus;
use crate::signal::Signal;
use crate::sys::{self, Reaped};

/// The longest status line an HTTP probe reads.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// One check's outcome, for the supervisor's loop.
#[derive(Debug)]
pub(crate) struct Report {
    /// Which round of probes (a new main process starts a new one): stale reports are dropped.
    pub(crate) round: u64,
    pub(crate) role: ProbeRole,
    /// `Err` says why it failed.
    pub(crate) outcome: Result<(), String>,
}

/// What the probe tasks share with the supervisor: the exit statuses of probe commands that a
/// dedicated supervisor's `waitpid(-1)` reaped before the probe did.
#[derive(Debug, Default)]
pub(crate) struct Children {
    /// Probe commands running (`None`) or reaped by the supervisor (`Some`).
    statuses: Mutex<HashMap<i32, Option<ExitStatus>>>,
}

impl Children {
    /// Runs `reap` (which calls `waitpid`) under the lock that probe spawns take, and keeps the
    /// statuses of probe commands among what it reaped; returns the others.
    pub(crate) fn reaping(&self, reap: impl FnOnce() -> Vec<(i32, ExitStatus)>) -> Vec<(i32, ExitStatus)> {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        let mut others = Vec::new();
        for (pid, status) in reap() {
            match statuses.get_mut(&pid) {
                Some(slot) => *slot = Some(status),
                None => others.push((pid, status)),
            }
        }
        others
    }
}

/// How probes reach TLS servers: the application's rustls provider, never one chosen here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tls {
    #[cfg(feature = "tls")]
    pub(crate) provider: Option<Arc<rustls::crypto::CryptoProvider>>,
}

/// Starts `probe` for round `round`: a check at once, then one every interval, each bounded by
/// the timeout, until the task is aborted.
pub(crate) fn spawn(
    probe: Probe,
    round: u64,
    reports: mpsc::UnboundedSender<Report>,
    children: Arc<Children>,
    tls: Tls,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let connector = connector(&probe, &tls);
        loop {
            let outcome =
                match tokio::time::timeout(probe.timeout, check(&probe.check, &children, &connector)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {}", crate::policy::humanize(probe.timeout))),
                };
            if reports.send(Report { round, role: probe.role, outcome }).is_err() {
                return;
            }
            tokio::time::sleep(probe.interval).await;
        }
    })
}

/// A TLS connector for an `https` probe (`None` for the others), or why there is none.
type Connector = Result<Option<TlsConnector>, String>;

#[cfg(feature = "tls")]
type TlsConnector = tokio_rustls::TlsConnector;
#[cfg(not(feature = "tls"))]
type TlsConnector = ();

fn connector(probe: &Probe, tls: &Tls) -> Connector {
    let Check::Http(HttpCheck { tls: true, .. }) = &probe.check else { return Ok(None) };
    #[cfg(feature = "tls")]
    {
        let provider = tls
            .provider
            .clone()
            .or_else(|| rustls::crypto::CryptoProvider::get_default().cloned())
            .ok_or("no rustls crypto provider: install one (CryptoProvider::install_default) or set Config::probe_tls_provider")?;
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS: {err}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls_any::AnyCertificate { provider }))
            .with_no_client_auth();
        Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = tls;
        Err("https probes need keepalive's `tls` feature".to_owned())
    }
}

async fn check(check: &Check, children: &Children, connector: &Connector) -> Result<(), String> {
    match check {
        Check::Tcp { host, port } => connect(host, *port).await.map(drop),
        Check::Http(http) => {
            let stream = connect(&http.host, http.port).await?;
            match connector.as_ref().map_err(Clone::clone)? {
                None => get(stream, http).await,
                #[cfg(feature = "tls")]
                Some(connector) => {
                    let name = rustls::pki_types::ServerName::try_from(http.host.clone())
                        .map_err(|err| format!("TLS server name {:?}: {err}", http.host))?;
                    let stream =
                        connector.connect(name, stream).await.map_err(|err| format!("TLS: {err}"))?;
                    get(stream, http).await
                }
                #[cfg(not(feature = "tls"))]
                Some(()) => Err("https probes need keepalive's `tls` feature".to_owned()),
            }
        }
        Check::Command { program, args } => command(program, args, children).await,
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    TcpStream::connect((host, port)).await.map_err(|err| format!("connect to {host}:{port}: {err}"))
}

/// `GET` and the status line of the answer.
async fn get(mut stream: impl AsyncRead + AsyncWrite + Unpin, http: &HttpCheck) -> Result<(), String> {
    let host = if http.host.contains(':') { format!("[{}]", http.host) } else { http.host.clone() };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: lifeline-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path, http.port
    );
    stream.write_all(request.as_bytes()).await.map_err(|err| format!("send the request: {err}"))?;
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    while !line.windows(2).any(|w| w == b"\r\n") {
        if line.len() > MAX_STATUS_LINE {
            return Err("no status line in the first 8 KiB".to_owned());
        }
        let n = stream.read(&mut buf).await.map_err(|err| format!("read the answer: {err}"))?;
        if n == 0 {
            return Err("closed without answering".to_owned());
        }
        line.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&line);
    let status = text
        .split_whitespace()
        .nth(1)
        .filter(|_| text.starts_with("HTTP/"))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", text.lines().next().unwrap_or_default()))?;
    let (low, high) = http.statuses;
    if (low..=high).contains(&status) { Ok(()) } else { Err(format!("answered {status}")) }
}

/// Runs the command in its own process group; exit 0 passes. Dropped at the timeout, it kills
/// the group.
async fn command(program: &str, args: &[String], children: &Children) -> Result<(), String> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    let pid = {
        // Under the lock a dedicated supervisor reaps with: it cannot reap this child before we
        // have registered it.
        let mut statuses = children.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn().map_err(|err| format!("cannot run {program}: {err}"))?;
        let pid = child.id() as i32;
        statuses.insert(pid, None);
        pid
    };
    let guard = Running { pid, children };
    let pidfd = sys::pidfd_open(pid).and_then(sys::async_fd).map_err(|err| format!("pidfd: {err}"))?;
    let _ = pidfd.readable().await;
    let status = match sys::try_reap(pid) {
        Reaped::Exited(status) => Some(status),
        _ => guard
            .children
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pid)
            .copied()
            .flatten(),
    };
    drop(guard);
    match status {
        Some(ExitStatus::Code(0)) => Ok(()),
        Some(status) => Err(format!("{program} {status}")),
        None => Err(format!("{program} exited with an unknown status")),
    }
}

/// A probe command until it has been reaped: killed with its group if the check is dropped.
struct Running<'a> {
    pid: i32,
    children: &'a Children,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut statuses = self.children.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        let reaped = statuses.remove(&self.pid).flatten().is_some();
        drop(statuses);
        if reaped || matches!(sys::try_reap(self.pid), Reaped::Exited(_) | Reaped::NotOurChild) {
            return;
        }
        // Still running (the timeout struck): the whole group goes, through a pidfd.
        if let Ok(fd) = sys::pidfd_open(self.pid) {
            let _ = sys::pidfd_send_signal(fd.as_fd(), Signal::KILL);
        }
        let _ = sys::kill_group(self.pid, Signal::KILL);
        let pid = self.pid;
        // Reaped once it is gone (a dedicated supervisor may get there first: then this finds
        // nothing to reap).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(fd) = sys::pidfd_open(pid).and_then(sys::async_fd) {
                    let _ = fd.readable().await;
                }
                let _ = sys::try_reap(pid);
            });
        }
    }
}

#[cfg(feature = "tls")]
mod tls_any {
    //! A certificate verifier that accepts any certificate but checks the handshake signatures
    //! with the provider's algorithms: a probe asks whether the service answers over TLS
    //! (Kubernetes' HTTPS probes do not verify either).

    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    pub(super) struct AnyCertificate {
        pub(super) provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    }
}
