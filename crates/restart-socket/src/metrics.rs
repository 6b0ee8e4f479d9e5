//! The metrics a [`Server`](crate::Server) records through the [`metrics`](https://docs.rs/metrics)
//! facade.
//!
//! Recorded only with the `metrics` feature (off by default: without it nothing is recorded and
//! the `metrics` crate is not a dependency). The names follow Prometheus' conventions and are
//! defined here, in one place. Every label has a small fixed set of values: no uid, pid or path
//! is ever a label (the log line of a refusal names the uid).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`REQUESTS_TOTAL`] | counter | `kind` = `restart` \| `status` \| `details` \| `stop` | well-formed requests answered, by kind ([`Request::name`](crate::Request::name)) |
//! | [`REFUSED_TOTAL`] | counter | `reason` = `uid` \| `busy` \| `credentials` | connections refused before a byte was read: a peer whose uid is not allowed, one over [`ServerConfig::max_connections`](crate::ServerConfig::max_connections), one whose credentials could not be read |
//! | [`BAD_REQUESTS_TOTAL`] | counter | `reason` = `malformed` \| `unsupported_version` \| `too_large` \| `timeout` | frames answered with an error frame and a closed connection |
//!
//! ```
//! assert_eq!(restart_socket::metrics::REFUSED_TOTAL, "lifeline_restart_socket_refused_total");
//! ```

/// Counter: requests answered, by `kind`.
pub const REQUESTS_TOTAL: &str = "lifeline_restart_socket_requests_total";
/// Counter: connections refused, by `reason`.
pub const REFUSED_TOTAL: &str = "lifeline_restart_socket_refused_total";
/// Counter: bad frames, by `reason`.
pub const BAD_REQUESTS_TOTAL: &str = "lifeline_restart_socket_bad_requests_total";

/// Label of [`REQUESTS_TOTAL`].
pub const KIND: &str = "kind";
/// Label of [`REFUSED_TOTAL`] and [`BAD_REQUESTS_TOTAL`].
pub const REASON: &str = "reason";

/// Registers the help text of every metric above with the installed recorder (shown as
/// `# HELP` by a Prometheus exporter). Optional: metrics are recorded without it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    ::metrics::describe_counter!(REQUESTS_TOTAL, "Control socket requests answered, by kind.");
    ::metrics::describe_counter!(
        REFUSED_TOTAL,
        "Control socket connections refused before reading: uid not allowed, too many connections, unreadable credentials."
    );
    ::metrics::describe_counter!(
        BAD_REQUESTS_TOTAL,
        "Control socket frames answered with an error, by reason."
    );
}

/// One well-formed request.
pub(crate) fn request(request: crate::Request) {
    count(REQUESTS_TOTAL, KIND, request.name());
}

/// One refused connection.
pub(crate) fn refused(reason: &'static str) {
    count(REFUSED_TOTAL, REASON, reason);
}

/// One bad frame.
pub(crate) fn bad_request(kind: crate::ErrorKind) {
    let reason = match kind {
        crate::ErrorKind::UnsupportedVersion => "unsupported_version",
        crate::ErrorKind::FrameTooLarge => "too_large",
        crate::ErrorKind::Timeout => "timeout",
        _ => "malformed",
    };
    count(BAD_REQUESTS_TOTAL, REASON, reason);
}

fn count(name: &'static str, label: &'static str, value: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, label => value).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, label, value);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::UnixStream;

    use super::*;
    use crate::{CancellationToken, Client, Server, ServerConfig, Status};

    /// `name{label=value}` → count.
    fn counters(snapshotter: &Snapshotter) -> Vec<(String, u64)> {
        let mut counters: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let DebugValue::Counter(n) = value else { return None };
                let labels: Vec<String> =
                    key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                Some((format!("{}{{{}}}", key.key().name(), labels.join(",")), n))
            })
            .collect();
        counters.sort();
        counters
    }

    fn status() -> impl Fn() -> std::future::Ready<Status> + Send + Sync + 'static {
        || std::future::ready(Status { pid: 1, generation: 1, started_at: 0, last_restart: None })
    }

    /// Runs `client` against a server (one connection at a time) inside a local recorder.
    fn with_server(config: ServerConfig, client: impl AsyncFnOnce(std::path::PathBuf)) -> Vec<(String, u64)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("control.sock");
                let server = Server::bind(&path, config).unwrap();
                let shutdown = CancellationToken::new();
                let failing = || async { Err::<u32, String>("the new process exited".to_owned()) };
                let serving = tokio::spawn(server.serve(failing, status(), shutdown.clone()));
                client(path).await;
                shutdown.cancel();
                serving.await.unwrap().unwrap();
            });
        });
        counters(&snapshotter)
    }

    #[test]
    fn requests_are_counted_by_kind_and_bad_frames_by_reason() {
        let counted =
            with_server(ServerConfig::default().with_read_timeout(Duration::from_millis(50)), async |path| {
                let mut client = Client::connect(&path).await.unwrap();
                client.status().await.unwrap();
                client.status().await.unwrap();
                // The restart handler fails: still one restart request.
                assert!(client.restart(Duration::from_secs(5)).await.is_err());
                drop(client);
                for bytes in
                    [&[3u8, 0, 0, 0, 0xff, 0xff, 0xff][..], &[0xff, 0xff, 0xff, 0x7f][..], &[9u8, 0][..]]
                {
                    let mut raw = UnixStream::connect(&path).await.unwrap();
                    raw.write_all(bytes).await.unwrap();
                    let mut answer = Vec::new();
                    raw.read_to_end(&mut answer).await.unwrap();
                    assert!(!answer.is_empty(), "an error frame for {bytes:?}");
                }
            });
        let expected = [
            (format!("{BAD_REQUESTS_TOTAL}{{reason=malformed}}"), 1),
            (format!("{BAD_REQUESTS_TOTAL}{{reason=timeout}}"), 1),
            (format!("{BAD_REQUESTS_TOTAL}{{reason=too_large}}"), 1),
            (format!("{REQUESTS_TOTAL}{{kind=restart}}"), 1),
            (format!("{REQUESTS_TOTAL}{{kind=status}}"), 2),
        ];
        assert_eq!(counted, expected);
    }

    #[test]
    fn a_connection_over_the_limit_is_counted_as_refused() {
        let counted = with_server(ServerConfig::default().with_max_connections(1), async |path| {
            let mut first = Client::connect(&path).await.unwrap();
            first.status().await.unwrap();
            let mut second = Client::connect(&path).await.unwrap();
            assert!(second.status().await.is_err());
            first.status().await.unwrap();
        });
        let expected =
            [(format!("{REFUSED_TOTAL}{{reason=busy}}"), 1), (format!("{REQUESTS_TOTAL}{{kind=status}}"), 2)];
        assert_eq!(counted, expected);
    }

    #[test]
    #[ignore = "needs root"]
    fn a_peer_of_another_uid_is_counted_as_refused() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (setpriv to another uid)");
        let counted = with_server(ServerConfig::default(), async |path| {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = path.parent().unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            // Connects as nobody and reads until the server closes.
            let script = "use IO::Socket::UNIX; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die $!; \
                          while (sysread($s, my $b, 4096)) {}";
            let status = tokio::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "perl", "-e", script])
                .arg(&path)
                .status()
                .await
                .unwrap();
            assert!(status.success());
        });
        assert_eq!(counted, [(format!("{REFUSED_TOTAL}{{reason=uid}}"), 1)]);
    }
}
