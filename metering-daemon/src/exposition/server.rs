//! `/metrics` over HTTP/1.1 (hyper). Each connection is its own task, so a client that
//! connects and sends nothing holds only its own connection (and is cut off after
//! [`HEADER_TIMEOUT`]); rendering runs on the blocking pool and streams in chunks, so a large
//! scrape neither holds the daemon's loop nor builds the whole page in memory.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, TextEncoder};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use super::{series, state::MetricsHandle};

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 64;

type Body = BoxBody<Bytes, Infallible>;

/// Binds `addr` for `/metrics` (a clear error when it is taken).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves `/metrics` from `handle` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handle: MetricsHandle,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closing this one");
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, handle.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics: connection ended");
            }
            drop(permit);
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    handle: MetricsHandle,
) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => metrics(handle),
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "eip-meter: Prometheus metrics at /metrics\n".to_owned(),
        ),
        (&Method::GET, _) => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".to_owned(),
        ),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".to_owned(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The exposition of the current state: the aggregates, then the per-series families, streamed
/// from a blocking thread through a small queue (memory stays a few chunks whatever the size).
fn metrics(handle: MetricsHandle) -> Response<Body> {
    let published = handle.current();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let mut head = Vec::new();
        let families = super::aggregates::gather(published.clone());
        if let Err(e) = TextEncoder::new().encode(&families, &mut head) {
            warn!(error = %e, "metrics: aggregates not encoded");
            return;
        }
        if tx.blocking_send(Bytes::from(head)).is_err() {
            return;
        }
        series::write(&published, |chunk| {
            tx.blocking_send(Bytes::from(chunk)).is_ok()
        });
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
