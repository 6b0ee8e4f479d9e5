//! HTTP/1.1 and HTTP/2 for a service (feature `http`): any hyper 1 service — or any tower
//! service, such as an axum `Router`, through [`TowerToHyperService`] — served with hyper-util's
//! auto builder and drained without failing a request.
//!
//! During a drain, HTTP/1.1 responses carry `Connection: close` and an idle keep-alive
//! connection is closed only after the quiet period (its client may already have sent the next
//! request). An HTTP/2 connection gets GOAWAY (graceful: the client learns which streams were
//! processed, and the ones in flight finish) once it has been quiet for the quiet period — or,
//! if its client keeps it busy, after [`Connection::patience`] (half the drain timeout). Not at
//! once: a client that never retries (a benchmark such as h2load) counts every request it can no
//! longer send on a connection that got GOAWAY as failed, and real clients lose nothing by
//! finishing their burst on the old process.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

pub use hyper_util::service::TowerToHyperService;

use super::{Connection, Protocol, Running, Stop};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves plain-text HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until the service stops;
/// returns why. Connections go on in the background: call [`Running::drain`] next.
///
/// ```no_run
/// # async fn f(running: lifeline::service::Running, listener: tokio::net::TcpListener) {
/// use hyper::{Request, Response, body::Incoming};
/// let hello = hyper::service::service_fn(|_req: Request<Incoming>| async {
///     Ok::<_, std::convert::Infallible>(Response::new("hello\n".to_owned()))
/// });
/// lifeline::service::http::serve(&running, listener, hello).await;
/// running.drain().await;
/// # }
/// ```
pub async fn serve<S, B>(running: &Running, listener: TcpListener, service: S) -> Stop
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connections = running.connections();
    let builder = auto::Builder::new(TokioExecutor::new());
    accept_loop(running, listener, move |stream| {
        let service = service.clone();
        let builder = builder.clone();
        connections
            .spawn_with(stream, move |io, connection| serve_connection(builder, io, connection, service));
    })
    .await
}

/// Serves HTTPS (HTTP/2 or HTTP/1.1, as ALPN negotiates) on `listener` with `acceptor` until the
/// service stops; returns why. Connections go on in the background: call [`Running::drain`] next.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub async fn serve_tls<S, B>(
    running: &Running,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    service: S,
) -> Stop
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connections = running.connections();
    let builder = auto::Builder::new(TokioExecutor::new());
    accept_loop(running, listener, move |stream| {
        let service = service.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        connections.spawn_with(stream, move |io, connection| async move {
            let peer = io.get_ref().peer_addr().ok();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    return tracing::debug!(
                        ?peer,
                        error = &err as &dyn std::error::Error,
                        "TLS handshake failed"
                    );
                }
                Err(_) => return tracing::debug!(?peer, "TLS handshake timed out"),
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                connection.set_protocol(Protocol::Http2);
            }
            serve_connection(builder, tls, connection, service).await;
        });
    })
    .await
}

/// Accepts while the service serves (pausing in a rollback window); hands each stream to
/// `on_connection`; returns why the service stopped once it must stop accepting for good.
async fn accept_loop(
    running: &Running,
    listener: TcpListener,
    mut on_connection: impl FnMut(TcpStream),
) -> Stop {
    while let Some((stream, _peer)) = running.accept(&listener).await {
        let _ = stream.set_nodelay(true);
        on_connection(stream);
    }
    drop(listener);
    running.stopped().await
}

/// One connection, HTTP/1.1 or HTTP/2, drained without racing its client.
async fn serve_connection<I, S, B>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    connection: Connection,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let service = Draining { inner: service, connection: connection.clone() };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = connection.draining() => {}
    }
    // HTTP/1: the next response says `Connection: close`; an idle connection is closed only
    // once quiet, since the client's next request may already be on the wire. HTTP/2: GOAWAY
    // once quiet, or when patience runs out.
    let out_of_patience = async {
        if connection.protocol() == Protocol::Http2 {
            tokio::time::sleep(connection.patience()).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = connection.idle_while_draining() => {}
        () = out_of_patience => tracing::debug!("HTTP/2 connection still busy; sending GOAWAY"),
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(err) = result {
        tracing::debug!(
            error = &*err as &(dyn std::error::Error + 'static),
            "connection ended with an error"
        );
    }
}

/// The application's service, marking each request busy and closing HTTP/1 connections after
/// their response once the drain has begun.
#[derive(Clone)]
struct Draining<S> {
    inner: S,
    connection: Connection,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Draining<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http2 = req.version() == Version::HTTP_2;
        self.connection.set_protocol(if http2 { Protocol::Http2 } else { Protocol::Http1 });
        let busy = self.connection.busy();
        let connection = self.connection.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            drop(busy);
            if !http2 && connection.is_draining() {
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}
