//! Probes for services that speak no notify protocol: startup, readiness and liveness checks of
//! kind HTTP(S) GET, TCP connect or command, each with an interval, a timeout and a failure
//! threshold — Kubernetes' probes, for a supervised process.
//!
//! The text form (`lifeline supervise --probe`) is `ROLE[,KEY=VALUE…]:TARGET`:
//!
//! ```text
//! startup:http://127.0.0.1:8080/healthz
//! liveness,interval=5s,timeout=1s,failures=3:http://127.0.0.1:8080/healthz
//! readiness,status=200-299:https://localhost:8443/ready
//! liveness:tcp:127.0.0.1:5432
//! readiness,interval=10s:exec:/usr/local/bin/check --quick
//! ```
//!
//! Keys: `interval`, `timeout` (`250ms`, `5s`, `2m`, `1h`; at most 24h), `failures` (consecutive
//! failures that count, 1 to 1 000 000) and, for HTTP, `status` (one code or a range; default
//! `200-399`, as Kubernetes). An `exec:` command is split on whitespace (no shell, no quoting).
//! HTTPS probes do not verify the certificate (Kubernetes' `httpGet` with `scheme: HTTPS` does not
//! either): a probe asks whether the service answers, not whether it is who it claims to be.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a probe decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProbeRole {
    /// Whether the service has started: checked from its start until it first passes (the
    /// service is not ready before); `failures` consecutive failures fail the start — it is
    /// stopped and restarted as the policy decides (backoff applies). Once passed, readiness and
    /// liveness probes begin. Default: every 1 s, 60 failures (a minute to start).
    Startup,
    /// Whether the service is ready: its failures make it not ready (status, `READY=1` to a
    /// service manager) without restarting it; one success makes it ready again. Default: every
    /// 10 s, 3 failures.
    Readiness,
    /// Whether the service is alive: `failures` consecutive failures stop and restart it.
    /// Default: every 10 s, 3 failures.
    Liveness,
}

impl ProbeRole {
    /// `startup`, `readiness`, `liveness`.
    pub fn name(self) -> &'static str {
        match self {
            ProbeRole::Startup => "startup",
            ProbeRole::Readiness => "readiness",
            ProbeRole::Liveness => "liveness",
        }
    }
}

impl fmt::Display for ProbeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// An HTTP(S) `GET` whose status is in a range.
    Http(HttpCheck),
    /// A TCP connection that is accepted.
    Tcp {
        /// A host name or an IP address (IPv6 without brackets).
        host: String,
        /// The port.
        port: u16,
    },
    /// A command that exits 0 (run without a shell; in its own process group, killed with it
    /// at the timeout).
    Command {
        /// The program: a path, or a name looked up in `PATH`.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// An HTTP(S) `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// `https` (TLS, the certificate not verified) or `http`.
    pub tls: bool,
    /// A host name or an IP address (IPv6 without brackets): where to connect, and the `Host:`
    /// header (and the TLS server name).
    pub host: String,
    /// The port (default 80 or 443).
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
    /// The statuses that pass, inclusive (default `200..=399`).
    pub statuses: (u16, u16),
}

/// One probe: its role, what it checks, how often, how patiently.
///
/// ```
/// use std::time::Duration;
/// use keepalive::{Check, Config, Probe, ProbeRole};
///
/// let liveness: Probe = "liveness,interval=5s,failures=2:http://127.0.0.1:8080/healthz".parse()?;
/// assert_eq!((liveness.role, liveness.interval, liveness.failures), (ProbeRole::Liveness, Duration::from_secs(5), 2));
/// let startup = Probe::new(ProbeRole::Startup, Check::Tcp { host: "127.0.0.1".into(), port: 5432 })
///     .interval(Duration::from_millis(500));
/// assert_eq!(startup.to_string(), "startup,interval=500ms,timeout=1s,failures=60:tcp:127.0.0.1:5432");
/// let config = Config::default().probe(startup).probe(liveness);
/// # let _ = config;
/// # Ok::<(), keepalive::ProbeSyntaxError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Probe {
    /// What it decides.
    pub role: ProbeRole,
    /// What it checks.
    pub check: Check,
    /// Time between checks.
    pub interval: Duration,
    /// How long one check may take before it counts as a failure.
    pub timeout: Duration,
    /// How many consecutive failures count (1 or more).
    pub failures: u32,
}

/// The longest interval or timeout a probe takes.
pub const MAX_PROBE_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most consecutive failures a probe may wait for.
pub const MAX_PROBE_FAILURES: u32 = 1_000_000;

impl Probe {
    /// A probe with its role's defaults: startup every 1 s, 60 failures; readiness and
    /// liveness every 10 s, 3 failures; a 1 s timeout.
    pub fn new(role: ProbeRole, check: Check) -> Probe {
        let (interval, failures) = match role {
            ProbeRole::Startup => (Duration::from_secs(1), 60),
            ProbeRole::Readiness | ProbeRole::Liveness => (Duration::from_secs(10), 3),
        };
        Probe { role, check, interval, timeout: Duration::from_secs(1), failures }
    }

    /// Sets the interval (at most [`MAX_PROBE_DURATION`]; zero counts as 1 ms).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Probe {
        self.interval = interval.clamp(Duration::from_millis(1), MAX_PROBE_DURATION);
        self
    }

    /// Sets the timeout of one check (at most [`MAX_PROBE_DURATION`]; zero counts as 1 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout.clamp(Duration::from_millis(1), MAX_PROBE_DURATION);
        self
    }

    /// Sets how many consecutive failures count (1 to [`MAX_PROBE_FAILURES`]).
    #[must_use]
    pub fn failures(mut self, failures: u32) -> Probe {
        self.failures = failures.clamp(1, MAX_PROBE_FAILURES);
        self
    }
}

/// Why a probe's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid probe {text:?}: {reason}")]
pub struct ProbeSyntaxError {
    /// The text (cut to 200 characters).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Probe {
    type Err = ProbeSyntaxError;

    fn from_str(text: &str) -> Result<Probe, ProbeSyntaxError> {
        parse(text).map_err(|reason| ProbeSyntaxError { text: text.chars().take(200).collect(), reason })
    }
}

fn parse(text: &str) -> Result<Probe, String> {
    let (head, target) = text
        .split_once(':')
        .ok_or("expected ROLE[,KEY=VALUE…]:TARGET (startup:http://127.0.0.1:8080/healthz)")?;
    let mut parts = head.split(',');
    let role = match parts.next().unwrap_or_default() {
        "startup" => ProbeRole::Startup,
        "readiness" => ProbeRole::Readiness,
        "liveness" => ProbeRole::Liveness,
        other => return Err(format!("unknown role {other:?} (startup, readiness, liveness)")),
    };
    let mut options = Vec::new();
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {part:?}"))?;
        if options.iter().any(|(k, _)| *k == key) {
            return Err(format!("{key} given twice"));
        }
        options.push((key, value));
    }
    let mut check = parse_target(target)?;
    let mut probe = Probe::new(role, Check::Tcp { host: String::new(), port: 0 });
    for (key, value) in options {
        match key {
            "interval" => probe.interval = parse_duration(value).map_err(|e| format!("interval: {e}"))?,
            "timeout" => probe.timeout = parse_duration(value).map_err(|e| format!("timeout: {e}"))?,
            "failures" => {
                probe.failures =
                    value.parse().ok().filter(|n| (1..=MAX_PROBE_FAILURES).contains(n)).ok_or_else(|| {
                        format!("failures: {value:?} is not a number from 1 to {MAX_PROBE_FAILURES}")
                    })?;
            }
            "status" => match &mut check {
                Check::Http(http) => http.statuses = parse_statuses(value)?,
                _ => return Err("status= is for http and https probes".to_owned()),
            },
            other => return Err(format!("unknown key {other:?} (interval, timeout, failures, status)")),
        }
    }
    probe.check = check;
    Ok(probe)
}

fn parse_target(target: &str) -> Result<Check, String> {
    if let Some(rest) = target.strip_prefix("http://") {
        return parse_http(rest, false);
    }
    if let Some(rest) = target.strip_prefix("https://") {
        return parse_http(rest, true);
    }
    if let Some(rest) = target.strip_prefix("tcp:") {
        let (host, port) = parse_host_port(rest, None)?;
        return Ok(Check::Tcp { host, port });
    }
    if let Some(rest) = target.strip_prefix("exec:") {
        let mut words = rest.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or("exec: needs a command")?;
        let args: Vec<String> = words.collect();
        if std::iter::once(&program).chain(&args).any(|w| w.chars().any(char::is_control)) {
            return Err("exec: the command contains control characters".to_owned());
        }
        return Ok(Check::Command { program, args });
    }
    Err(format!("unknown target {target:?} (http://…, https://…, tcp:HOST:PORT, exec:COMMAND)"))
}

fn parse_http(rest: &str, tls: bool) -> Result<Check, String> {
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let (host, port) = parse_host_port(authority, Some(if tls { 443 } else { 80 }))?;
    // The path goes into the request line as is: nothing that could end or split it.
    if let Some(bad) = path.chars().find(|c| c.is_whitespace() || c.is_control() || *c == '#') {
        return Err(format!("the path contains {bad:?}"));
    }
    Ok(Check::Http(HttpCheck { tls, host, port, path: path.to_owned(), statuses: (200, 399) }))
}

/// `HOST:PORT` or `[V6]:PORT` (`:PORT` optional when there is a default).
fn parse_host_port(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{v6:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| format!("unexpected {after:?} after ]"))?),
        };
        (v6.to_owned(), port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    if host.contains(':') {
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address (write [ADDRESS]:PORT)"));
        }
    } else {
        if host.is_empty() {
            return Err("no host".to_owned());
        }
        if let Some(bad) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!("the host contains {bad:?}"));
        }
    }
    let port = match port {
        Some(port) => {
            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{port:?} is not a port"))?
        }
        None => default_port.ok_or("a port is needed (HOST:PORT)")?,
    };
    Ok((host, port))
}

fn parse_statuses(value: &str) -> Result<(u16, u16), String> {
    let code = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("status: {s:?} is not 100–599"))
    };
    let (low, high) = match value.split_once('-') {
        Some((low, high)) => (code(low)?, code(high)?),
        None => (code(value)?, code(value)?),
    };
    if low > high {
        return Err(format!("status: {low} is above {high}"));
    }
    Ok((low, high))
}

/// `250ms`, `5s`, `2m`, `1h`: one number and one unit; more than zero, at most
/// [`MAX_PROBE_DURATION`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration (250ms, 5s, 2m, 1h)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?} is not a duration (250ms, 5s, 2m, 1h)")),
    };
    let d = ms.map(Duration::from_millis).filter(|d| *d <= MAX_PROBE_DURATION);
    match d {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("must be more than zero".to_owned()),
        None => Err("at most 24h".to_owned()),
    }
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn format_host(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Http(http) => {
                let scheme = if http.tls { "https" } else { "http" };
                write!(f, "{scheme}://{}:{}{}", format_host(&http.host), http.port, http.path)
            }
            Check::Tcp { host, port } => write!(f, "tcp:{}:{port}", format_host(host)),
            Check::Command { program, args } => {
                write!(f, "exec:{program}")?;
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
        }
    }
}

/// The canonical text form, which parses back to the same probe.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},interval={},timeout={},failures={}",
            self.role,
            format_duration(self.interval),
            format_duration(self.timeout),
            self.failures
        )?;
        if let Check::Http(HttpCheck { statuses: (low, high), .. }) = &self.check {
            write!(f, ",status={low}-{high}")?;
        }
        write!(f, ":{}", self.check)
    }
}

pub(crate) mod run;

#[cfg(test)]
mod tests;
