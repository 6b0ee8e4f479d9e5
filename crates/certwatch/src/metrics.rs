//! The metrics certwatch records through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Recorded only with the `metrics` feature (off by default: without it nothing is recorded and
//! the `metrics` crate is not a dependency). The names follow Prometheus' conventions and are
//! defined here, in one place.
//!
//! | name | type | what |
//! |---|---|---|
//! | [`RELOADS_TOTAL`] | counter, label `outcome` = `ok` \| `failed` | reloads that swapped in a new pair (`ok`) and reload attempts refused, the previous pair still served (`failed`); attempts that found the same pair are not counted (see [`Stats`](crate::Stats)) |
//! | [`LAST_RELOAD_TIMESTAMP_SECONDS`] | gauge | Unix time at which the served pair was loaded: the first load, then each successful reload |
//! | [`EXPIRES_IN_SECONDS`] | gauge | seconds from the last update to the served leaf's `not_after`, negative once it has expired |
//! | [`NOT_AFTER_TIMESTAMP_SECONDS`] | gauge | the served leaf's `not_after` as Unix time |
//!
//! Every series also has the labels `kind` (`certificate` for a [`CertWatcher`](crate::CertWatcher),
//! `client_ca` for a [`ClientCaWatcher`](crate::ClientCaWatcher)) and `name`
//! ([`WatchConfig::metrics_name`](crate::WatchConfig::metrics_name), `default` unless set): give
//! each watcher of a process its own name (`api`, `admin`; never a path or anything unbounded).
//! A [`CertDir`](crate::CertDir) records nothing.
//!
//! **Gauges are updated, not computed at scrape time**: [`EXPIRES_IN_SECONDS`] at the first load,
//! after each reload, and at each periodic re-check
//! ([`WatchConfig::recheck_interval`](crate::WatchConfig::recheck_interval), 60 s by default), so
//! it lags by at most that interval. For an exact value at any instant, alert on
//! `lifeline_certwatch_not_after_timestamp_seconds - time()`.
//!
//! ```
//! // A PromQL alert on a certificate that was not renewed in time:
//! let rule = format!("{} < 7 * 86400", certwatch::metrics::EXPIRES_IN_SECONDS);
//! assert_eq!(rule, "lifeline_certwatch_expires_in_seconds < 7 * 86400");
//! ```

/// Counter: reloads by `outcome` (`ok`, `failed`).
pub const RELOADS_TOTAL: &str = "lifeline_certwatch_reloads_total";
/// Gauge, Unix seconds: when the served pair was loaded.
pub const LAST_RELOAD_TIMESTAMP_SECONDS: &str = "lifeline_certwatch_last_reload_timestamp_seconds";
/// Gauge, seconds: time left until the served leaf's `not_after` (negative once expired).
pub const EXPIRES_IN_SECONDS: &str = "lifeline_certwatch_expires_in_seconds";
/// Gauge, Unix seconds: the served leaf's `not_after`.
pub const NOT_AFTER_TIMESTAMP_SECONDS: &str = "lifeline_certwatch_not_after_timestamp_seconds";

/// Label: `certificate` or `client_ca`.
pub const KIND: &str = "kind";
/// Label: the watcher's [`WatchConfig::metrics_name`](crate::WatchConfig::metrics_name).
pub const NAME: &str = "name";
/// Label of [`RELOADS_TOTAL`]: `ok` or `failed`.
pub const OUTCOME: &str = "outcome";

/// Registers the help text and unit of every metric above with the installed recorder (shown
/// as `# HELP` by a Prometheus exporter). Optional: metrics are recorded without it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        RELOADS_TOTAL,
        "Certificate reloads: ok (a new pair served) or failed (the previous pair kept)."
    );
    describe_gauge!(
        LAST_RELOAD_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time at which the served pair was loaded."
    );
    describe_gauge!(
        EXPIRES_IN_SECONDS,
        Unit::Seconds,
        "Seconds until the served certificate expires (updated at reloads and periodic re-checks)."
    );
    describe_gauge!(
        NOT_AFTER_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time at which the served certificate expires."
    );
}

/// What a watcher records under: its `kind` and `name` labels.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    #[cfg(feature = "metrics")]
    labels: [::metrics::Label; 2],
}

// Without the feature every method is empty: nothing is recorded.
#[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
impl Recorder {
    pub(crate) fn new(kind: &'static str, name: &str) -> Recorder {
        #[cfg(feature = "metrics")]
        {
            Recorder {
                labels: [::metrics::Label::new(KIND, kind), ::metrics::Label::new(NAME, name.to_owned())],
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (kind, name);
            Recorder {}
        }
    }

    /// A reload attempt's outcome (`true`: a new pair is served).
    pub(crate) fn reload(&self, ok: bool) {
        #[cfg(feature = "metrics")]
        {
            let outcome = ::metrics::Label::from_static_parts(OUTCOME, if ok { "ok" } else { "failed" });
            let labels = self.labels.iter().cloned().chain([outcome]).collect::<Vec<_>>();
            ::metrics::counter!(RELOADS_TOTAL, labels).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = ok;
    }

    /// A pair was loaded and is now served (the first load or a reload).
    pub(crate) fn loaded(&self, at: std::time::SystemTime, not_after: std::time::SystemTime) {
        #[cfg(feature = "metrics")]
        {
            ::metrics::gauge!(LAST_RELOAD_TIMESTAMP_SECONDS, self.labels.to_vec()).set(unix_seconds(at));
            ::metrics::gauge!(NOT_AFTER_TIMESTAMP_SECONDS, self.labels.to_vec()).set(unix_seconds(not_after));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (at, not_after);
    }

    /// The time left on the served pair, as of `now`.
    pub(crate) fn expiry(&self, now: std::time::SystemTime, not_after: std::time::SystemTime) {
        #[cfg(feature = "metrics")]
        ::metrics::gauge!(EXPIRES_IN_SECONDS, self.labels.to_vec())
            .set(unix_seconds(not_after) - unix_seconds(now));
        #[cfg(not(feature = "metrics"))]
        let _ = (now, not_after);
    }
}

/// Seconds since the Unix epoch, negative before it.
#[cfg(feature = "metrics")]
fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::{CertWatcher, PemFiles, WatchConfig};

    fn write_pair(dir: &Path, days: u64) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = (SystemTime::now() + Duration::from_secs(days * 86_400)).into();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    }

    /// `name{labels}` → value, for the series recorded so far.
    fn values(snapshotter: &Snapshotter) -> Vec<(String, DebugValue)> {
        let mut values: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> =
                    key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                (format!("{}{{{}}}", key.key().name(), labels.join(",")), value)
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    }

    fn gauge(values: &[(String, DebugValue)], series: &str) -> f64 {
        match values.iter().find(|(s, _)| s == series) {
            Some((_, DebugValue::Gauge(v))) => v.0,
            other => panic!("no gauge {series}: {other:?} in {values:?}"),
        }
    }

    #[test]
    fn the_first_load_a_refused_reload_and_a_good_one_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), 30);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let source =
            PemFiles::new(dir.path().join("cert.pem"), dir.path().join("key.pem")).with_provider(provider);
        let labels = "kind=certificate,name=api";
        let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        let watcher = ::metrics::with_local_recorder(&recorder, || {
            CertWatcher::new(source, WatchConfig::default().metrics_name("api")).unwrap()
        });
        let first = values(&snapshotter);
        let expires_in = gauge(&first, &format!("{EXPIRES_IN_SECONDS}{{{labels}}}"));
        assert!((29.9 * 86_400.0..=30.0 * 86_400.0).contains(&expires_in), "{expires_in}");
        assert!(gauge(&first, &format!("{LAST_RELOAD_TIMESTAMP_SECONDS}{{{labels}}}")) >= before.floor());
        assert!(!first.iter().any(|(s, _)| s.starts_with(RELOADS_TOTAL)), "the first load is no reload");

        ::metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
                assert!(watcher.reload().await.is_err());
                write_pair(dir.path(), 90);
                assert!(watcher.reload().await.is_ok());
            });
        });
        let after = values(&snapshotter);
        let counter = |outcome: &str| {
            after
                .iter()
                .find(|(s, _)| *s == format!("{RELOADS_TOTAL}{{{labels},outcome={outcome}}}"))
                .map(|v| &v.1)
        };
        assert_eq!(counter("ok"), Some(&DebugValue::Counter(1)), "{after:?}");
        assert_eq!(counter("failed"), Some(&DebugValue::Counter(1)), "{after:?}");
        let expires_in = gauge(&after, &format!("{EXPIRES_IN_SECONDS}{{{labels}}}"));
        assert!((89.9 * 86_400.0..=90.0 * 86_400.0).contains(&expires_in), "{expires_in}");
        let not_after = gauge(&after, &format!("{NOT_AFTER_TIMESTAMP_SECONDS}{{{labels}}}"));
        assert!((not_after - before - 90.0 * 86_400.0).abs() < 120.0, "{not_after}");
    }
}
