//! A client of the admin API's unix socket, for the `eip-meter` commands (hyper's HTTP/1.1
//! client, one connection per request).

use std::{convert::Infallible, path::Path};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, StatusCode, body::Frame, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncReadExt, net::UnixStream};

use super::protocol::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon's admin API at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin API answered {status}: {body}")]
    Unreadable { status: StatusCode, body: String },
    #[error("cannot read {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
}

/// What the daemon answered: its JSON body, or its error body with the status.
pub enum Answer {
    Ok(serde_json::Value),
    Refused(StatusCode, ErrorBody),
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Whether something answers on the socket (a daemon with its API up).
pub fn reachable(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Sends one request with a JSON body (or none).
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Answer, ClientError> {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let body = Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed();
    send(socket, method, path, "application/json", body).await
}

/// Streams a file (or stdin, for `-`) as the body: a sync of any size in constant memory.
pub async fn stream_file(
    socket: &Path,
    method: Method,
    path: &str,
    file: &Path,
) -> Result<Answer, ClientError> {
    let input_err = |source| ClientError::Input {
        path: file.display().to_string(),
        source,
    };
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send + Sync> = if file == Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(tokio::fs::File::open(file).await.map_err(input_err)?)
    };
    let frames = futures::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 1 << 20];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    let body = BodyExt::boxed(StreamBody::new(frames));
    send(socket, method, path, "application/x-ndjson", body).await
}

async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    content_type: &'static str,
    body: Body,
) -> Result<Answer, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "eip-meter")
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .expect("a valid request");
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    driver.abort();
    if status.is_success() {
        serde_json::from_slice(&bytes)
            .map(Answer::Ok)
            .map_err(|_| ClientError::Unreadable {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
    } else {
        serde_json::from_slice(&bytes)
            .map(|e| Answer::Refused(status, e))
            .map_err(|_| ClientError::Unreadable {
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
    }
}
