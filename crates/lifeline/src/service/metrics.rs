//! The service's metrics: its own totals, which continue across generations, and — with the
//! `prometheus` feature — a recorder that renders every metric for a `/metrics` route.
//!
//! With the `metrics` feature, each mechanism records through the
//! [`metrics`](https://docs.rs/metrics) facade (their names are listed in `dirlock::metrics`,
//! `certwatch::metrics`, `restart_socket::metrics`, `handover::metrics` and
//! `keepalive::metrics`), and the service adds:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`RESTARTS_TOTAL`] | counter, **carried** | `outcome` = `ok` \| `failed` \| `refused` | restarts of the service since its first generation started: `ok` a successor took over, `failed` it did not (the old process served on), `refused` none was started (one in progress, stopping, too many retired) |
//! | [`CONNECTIONS_TOTAL`] | counter, **carried** | | connections served by every generation (each one [`Connections`](super::Connections) tracked) |
//! | [`GENERATION`] | gauge | | this process's generation |
//!
//! With TLS, the service also carries `lifeline_certwatch_reloads_total` of its certificate
//! (`kind="certificate"`): its value counts the reloads of every generation.
//!
//! **Carried** counters continue across handovers (and across a `systemctl restart` with the fd
//! store): the predecessor sends its totals with the state, and its successor's counters start
//! from them — so `/metrics` of the third generation says `…restarts_total{outcome="ok"} 2`. A
//! successor that took over counts its own restart. A predecessor of an earlier release (state
//! frame version 1, no totals) is still taken over from; the totals then start at 0. Everything
//! else counts what this process did since it started (`handover`'s restarts are the ones this
//! process made; `lifeline_service_restarts_total` the service's).
//!
//! # Serving `/metrics`
//!
//! Install the recorder first thing — before [`Builder::start`](super::Builder::start), whose
//! steps already record (the lock wait, the first certificate load) — and render it in the route:
//!
//! ```no_run
//! # #[cfg(feature = "prometheus")]
//! # async fn f() -> Result<(), lifeline::service::Error> {
//! use lifeline::service::metrics::Prometheus;
//!
//! let prometheus = Prometheus::install()?;
//! let mut starting = lifeline::service::Builder::new().start::<()>().await?;
//! // … and in the HTTP handler, for `GET /metrics`:
//! let body: String = prometheus.render();
//! # drop((starting, body)); Ok(()) }
//! ```
//!
//! The counters a connection touches are atomic increments on handles resolved once, when the
//! service starts; nothing is looked up per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counter, carried across generations: restarts by `outcome`.
pub const RESTARTS_TOTAL: &str = "lifeline_service_restarts_total";
/// Counter, carried across generations: connections served.
pub const CONNECTIONS_TOTAL: &str = "lifeline_service_connections_total";
/// Gauge: this process's generation.
pub const GENERATION: &str = "lifeline_service_generation";
/// The label of [`RESTARTS_TOTAL`].
pub const OUTCOME: &str = "outcome";

/// How a restart ended, for [`RESTARTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Refused,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Failed, Outcome::Refused];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }

    /// The series' key in the carried state.
    fn key(self) -> String {
        format!("{RESTARTS_TOTAL}{{{OUTCOME}=\"{}\"}}", self.label())
    }
}

/// The certificate reloads of the service's TLS, carried like the service's own totals: the
/// watcher counts this process's, the predecessors' are added.
pub(crate) struct Reloads {
    /// The `name` label of the watcher's metrics.
    name: String,
    /// Reloads (ok, failed) of the predecessors.
    before: [u64; 2],
    /// This process's watcher's counts.
    stats: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
}

#[cfg(feature = "tls")]
impl Reloads {
    pub(crate) fn new(name: String, stats: impl Fn() -> certwatch::Stats + Send + Sync + 'static) -> Reloads {
        let stats = move || {
            let stats = stats();
            (stats.reloads_ok, stats.reloads_failed)
        };
        Reloads { name, before: [0; 2], stats: Box::new(stats) }
    }
}

impl Reloads {
    /// The series' key in the carried state (`certwatch::metrics::RELOADS_TOTAL`'s).
    fn key(&self, ok: bool) -> String {
        let outcome = if ok { "ok" } else { "failed" };
        format!(
            "lifeline_certwatch_reloads_total{{kind=\"certificate\",name=\"{}\",outcome=\"{outcome}\"}}",
            self.name
        )
    }

    /// (ok, failed) of every generation.
    fn totals(&self) -> [u64; 2] {
        let (ok, failed) = (self.stats)();
        [self.before[0].saturating_add(ok), self.before[1].saturating_add(failed)]
    }
}

impl std::fmt::Debug for Reloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloads")
            .field("name", &self.name)
            .field("before", &self.before)
            .finish_non_exhaustive()
    }
}

/// The service's totals: what this process counted, on top of what its predecessors did.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Restarts by [`Outcome`], predecessors' included.
    restarts: [AtomicU64; 3],
    /// Connections of the predecessors.
    connections_before: u64,
    /// Connections of this process (shared with [`Connections`](super::Connections)).
    accepted: Arc<AtomicU64>,
    /// The certificate's reloads, with TLS.
    reloads: Option<Reloads>,
}

impl Totals {
    /// Continues from the predecessor's totals (unknown series ignored, missing ones 0); a
    /// successor that `took_over` counts its own restart.
    pub(crate) fn continue_from(
        carried: &[(String, u64)],
        took_over: bool,
        reloads: Option<Reloads>,
    ) -> Totals {
        let find = |key: &str| carried.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v);
        let reloads = reloads.map(|mut reloads| {
            reloads.before = [find(&reloads.key(true)), find(&reloads.key(false))];
            reloads
        });
        let totals = Totals {
            restarts: Outcome::ALL.map(|o| AtomicU64::new(find(&o.key()))),
            connections_before: find(CONNECTIONS_TOTAL),
            accepted: Arc::default(),
            reloads,
        };
        if took_over {
            totals.restarts[0].fetch_add(1, Ordering::Relaxed);
        }
        totals
    }

    /// This process's connection count, for [`Connections`](super::Connections).
    pub(crate) fn accepted(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.accepted)
    }

    /// One restart ended.
    pub(crate) fn restart(&self, outcome: Outcome) {
        self.restarts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!(RESTARTS_TOTAL, OUTCOME => outcome.label()).increment(1);
    }

    /// What a successor continues from.
    pub(crate) fn carried(&self) -> Vec<(String, u64)> {
        let mut carried: Vec<(String, u64)> = Outcome::ALL
            .iter()
            .map(|o| (o.key(), self.restarts[*o as usize].load(Ordering::Relaxed)))
            .collect();
        let connections = self.connections_before.saturating_add(self.accepted.load(Ordering::Relaxed));
        carried.push((CONNECTIONS_TOTAL.to_owned(), connections));
        if let Some(reloads) = &self.reloads {
            let [ok, failed] = reloads.totals();
            carried.extend([(reloads.key(true), ok), (reloads.key(false), failed)]);
        }
        carried
    }

    /// Sets the recorder's counters to the totals (the predecessors' counts included) and
    /// returns the handle each new connection increments.
    pub(crate) fn publish(&self, generation: u64) -> ConnectionCounter {
        #[cfg(feature = "metrics")]
        {
            for outcome in Outcome::ALL {
                let total = self.restarts[outcome as usize].load(Ordering::Relaxed);
                ::metrics::counter!(RESTARTS_TOTAL, OUTCOME => outcome.label()).absolute(total);
            }
            ::metrics::gauge!(GENERATION).set(generation as f64);
            #[cfg(feature = "certwatch")]
            if let Some(reloads) = &self.reloads {
                let [ok, failed] = reloads.totals();
                for (outcome, total) in [("ok", ok), ("failed", failed)] {
                    let labels = [
                        ("kind", "certificate".to_owned()),
                        ("name", reloads.name.clone()),
                        ("outcome", outcome.to_owned()),
                    ];
                    ::metrics::counter!(certwatch::metrics::RELOADS_TOTAL, &labels).absolute(total);
                }
            }
            let connections = ::metrics::counter!(CONNECTIONS_TOTAL);
            connections
                .absolute(self.connections_before.saturating_add(self.accepted.load(Ordering::Relaxed)));
            ConnectionCounter(Some(connections))
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = generation;
            ConnectionCounter::default()
        }
    }
}

/// The handle of [`CONNECTIONS_TOTAL`], resolved once: each connection costs an atomic increment.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionCounter(#[cfg(feature = "metrics")] Option<::metrics::Counter>);

impl ConnectionCounter {
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(crate) fn increment(&self) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = &self.0 {
            counter.increment(1);
        }
    }
}

/// Registers the help text and unit of every metric the service and its mechanisms record
/// with the installed recorder (shown as `# HELP` by a Prometheus exporter).
/// [`Prometheus::install`] calls it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    dirlock::metrics::describe();
    restart_socket::metrics::describe();
    handover::metrics::describe();
    #[cfg(feature = "certwatch")]
    certwatch::metrics::describe();
    #[cfg(feature = "keepalive")]
    keepalive::metrics::describe();
    ::metrics::describe_counter!(
        RESTARTS_TOTAL,
        "Restarts of the service across all its generations, by outcome."
    );
    ::metrics::describe_counter!(CONNECTIONS_TOTAL, "Connections served by all generations of the service.");
    ::metrics::describe_gauge!(GENERATION, "The generation of the process serving (1 for a fresh start).");
}

/// The buckets of every `_seconds` histogram: lock waits and drains from a millisecond to a
/// minute, restarts from tens of milliseconds to the default ready timeout.
#[cfg(feature = "prometheus")]
const SECONDS_BUCKETS: [f64; 14] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus recorder, installed as the process's `metrics` recorder, that renders the text
/// exposition format for a `/metrics` route. It opens no port and starts no thread: the service
/// serves the text itself (behind its TLS, on its listener).
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
#[derive(Debug, Clone)]
pub struct Prometheus {
    handle: metrics_exporter_prometheus::PrometheusHandle,
}

#[cfg(feature = "prometheus")]
impl Prometheus {
    /// The `Content-Type` of [`render`](Prometheus::render)'s text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Installs the recorder (histograms with `_bucket` series, see the module's table) and
    /// [`describe`]s every metric. Fails with [`Error::Metrics`](super::Error::Metrics) if the
    /// process already has a recorder.
    pub fn install() -> Result<Prometheus, super::Error> {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&SECONDS_BUCKETS)
            .and_then(metrics_exporter_prometheus::PrometheusBuilder::install_recorder)
            .map_err(|err| super::Error::Metrics { reason: err.to_string() })?;
        describe();
        Ok(Prometheus { handle })
    }

    /// Every metric recorded so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        // Upkeep folds histogram samples in; the service's histograms are low-rate (restarts,
        // drains, lock waits), so doing it at each scrape keeps memory bounded without a thread.
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[cfg(all(feature = "prometheus", feature = "http"))]
impl Prometheus {
    /// Wraps an HTTP service (hyper's, as [`http::serve`](super::http::serve) takes) so that
    /// `GET /metrics` answers [`render`](Prometheus::render)'s text and everything else goes to
    /// `service`. Costs a method and path comparison per request; nothing is allocated for the
    /// requests it passes on.
    ///
    /// ```no_run
    /// # async fn f(running: lifeline::service::Running, listener: tokio::net::TcpListener) -> Result<(), lifeline::service::Error> {
    /// use http_body_util::Full;
    /// use hyper::body::Bytes;
    ///
    /// let prometheus = lifeline::service::metrics::Prometheus::install()?;
    /// let hello = hyper::service::service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hello\n"))))
    /// });
    /// lifeline::service::http::serve(&running, listener, prometheus.route(hello)).await;
    /// # Ok(()) }
    /// ```
    pub fn route<S>(&self, service: S) -> WithMetrics<S> {
        WithMetrics { prometheus: self.clone(), service }
    }
}

/// A hyper service that answers `GET /metrics` itself ([`Prometheus::route`]).
#[cfg(all(feature = "prometheus", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "prometheus", feature = "http"))))]
#[derive(Debug, Clone)]
pub struct WithMetrics<S> {
    prometheus: Prometheus,
    service: S,
}

#[cfg(all(feature = "prometheus", feature = "http"))]
impl<S, B, R> hyper::service::Service<hyper::Request<R>> for WithMetrics<S>
where
    S: hyper::service::Service<hyper::Request<R>, Response = hyper::Response<B>>,
    B: From<String>,
{
    type Response = hyper::Response<B>;
    type Error = S::Error;
    type Future =
        tokio_util::either::Either<std::future::Ready<Result<hyper::Response<B>, S::Error>>, S::Future>;

    fn call(&self, req: hyper::Request<R>) -> Self::Future {
        if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
            let mut response = hyper::Response::new(B::from(self.prometheus.render()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(Prometheus::CONTENT_TYPE),
            );
            return tokio_util::either::Either::Left(std::future::ready(Ok(response)));
        }
        tokio_util::either::Either::Right(self.service.call(req))
    }
}
