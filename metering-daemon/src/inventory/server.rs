//! The admin API over HTTP/1.1 (hyper): a unix socket (mode 0660, owned by the configured
//! group), and TCP only when configured, then with TLS (rustls) and a bearer token.
//!
//! Each connection is its own task and reads its whole request (a sync: parses its lines as
//! they stream in) before the daemon sees it, so a slow or stuck client holds only its own
//! connection, never the daemon's loop, another client or a sampling round. The daemon gets
//! one [`AdminRequest`] per request, in arrival order, and answers it from its loop.

use std::{
    convert::Infallible,
    future::Future,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as _, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{Semaphore, mpsc, oneshot},
};
use tracing::{debug, info, warn};

use super::{
    model::{ItemError, Op},
    protocol::{self, Batch, ErrorBody, Item, ItemErrorBody, SyncLine},
};
use crate::config::{ApiConfig, EipConfig, GroupConfig};

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest body of a batch or a single change.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Longest line of a sync.
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 10_000;
/// Refused items reported at most (the rest are counted).
const MAX_REPORTED_ERRORS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ApiBindError {
    #[error("api.socket {path}: {op}: {source}")]
    Socket {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "api.socket {path} is served by another running daemon (stop it, or give this one another api.socket)"
    )]
    InUse { path: PathBuf },
    #[error("api.group `{0}` does not exist")]
    NoGroup(String),
    #[error("api.tcp_listen {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("api TLS: {0}")]
    Tls(String),
}

/// Who sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The peer's uid (unix socket, from the kernel); `None` over TCP.
    pub uid: Option<u32>,
    /// `unix` or `tcp`.
    pub via: &'static str,
}

/// What a client asks the daemon.
#[derive(Debug)]
pub enum Command {
    Status,
    GetEip(IpAddr),
    ListEips {
        after: Option<IpAddr>,
        limit: usize,
    },
    ListGroups,
    /// A batch (a single change is a batch of one): all or nothing.
    Apply {
        ops: Vec<(Op, Option<i64>)>,
        caller: Caller,
        /// A single change (errors map to 404/409 instead of 422).
        single: bool,
    },
    /// Make the API-owned inventory exactly this.
    Sync {
        groups: Vec<GroupConfig>,
        eips: Vec<EipConfig>,
        at: Option<i64>,
        caller: Caller,
        /// Time spent receiving and parsing the stream.
        received_ms: u64,
    },
}

/// The daemon's answer: a JSON body, or an error with its status.
pub type Reply = Result<serde_json::Value, ApiError>;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                message: message.into(),
                items: Vec::new(),
            },
        }
    }

    /// Refused items: a single change gets the status its error means, a batch 422.
    pub fn items(errors: &[ItemError], total: usize, single: bool) -> Self {
        let status = match (single, errors.first().map(|e| e.code)) {
            (true, Some("unknown_eip" | "unknown_group")) => StatusCode::NOT_FOUND,
            (true, Some("owned_by_file" | "group_in_use")) => StatusCode::CONFLICT,
            (true, Some("capacity" | "group_capacity")) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let (error, message) = match (single, errors.first()) {
            (true, Some(e)) => (e.code.to_owned(), format!("{}: {}", e.subject, e.message)),
            _ => (
                "rejected".to_owned(),
                format!("nothing applied: {} of {total} items refused", errors.len()),
            ),
        };
        Self {
            status,
            body: ErrorBody {
                error,
                message,
                items: errors
                    .iter()
                    .take(MAX_REPORTED_ERRORS)
                    .map(ItemErrorBody::from)
                    .collect(),
            },
        }
    }
}

/// One request for the daemon's loop.
#[derive(Debug)]
pub struct AdminRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// The bound listeners.
pub struct Listeners {
    unix: UnixListener,
    path: PathBuf,
    tcp: Option<(TcpListener, tokio_rustls::TlsAcceptor, Arc<String>)>,
}

impl Listeners {
    pub fn socket_path(&self) -> &Path {
        &self.path
    }
}

/// Binds the API's socket (replacing a stale one a crashed daemon left) and, when configured,
/// its TCP listener. Must run inside the runtime.
pub fn bind(config: &ApiConfig) -> Result<Listeners, ApiBindError> {
    let path = config.socket.clone();
    let sock_err = |op, source| ApiBindError::Socket {
        path: path.clone(),
        op,
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| sock_err("create its directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| sock_err("set its directory's mode", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ApiBindError::InUse { path });
        }
        std::fs::remove_file(&path).map_err(|e| sock_err("remove the stale socket", e))?;
    }
    let std_listener =
        std::os::unix::net::UnixListener::bind(&path).map_err(|e| sock_err("bind", e))?;
    // Connecting needs write permission on the socket: 0660 keeps everyone but root and the
    // group out.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| sock_err("set mode 0660", e))?;
    if let Some(group) = &config.group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| ApiBindError::NoGroup(group.clone()))?
            .gid;
        nix::unistd::chown(&path, None, Some(gid))
            .map_err(|e| sock_err("give it to api.group", e.into()))?;
    }
    std_listener
        .set_nonblocking(true)
        .map_err(|e| sock_err("set non-blocking", e))?;
    let unix = UnixListener::from_std(std_listener).map_err(|e| sock_err("register", e))?;
    let tcp = match &config.tcp {
        None => None,
        Some(t) => {
            let acceptor = tls_acceptor(&t.tls_cert, &t.tls_key)?;
            let token = std::fs::read_to_string(&t.token_file)
                .map_err(|e| ApiBindError::Tls(format!("{}: {e}", t.token_file.display())))?
                .trim()
                .to_owned();
            if token.len() < 16 {
                return Err(ApiBindError::Tls(format!(
                    "{}: the token must be at least 16 characters",
                    t.token_file.display()
                )));
            }
            let std_tcp =
                std::net::TcpListener::bind(t.listen).map_err(|source| ApiBindError::Tcp {
                    addr: t.listen,
                    source,
                })?;
            std_tcp
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std_tcp))
                .map(|l| Some((l, acceptor, Arc::new(token))))
                .map_err(|source| ApiBindError::Tcp {
                    addr: t.listen,
                    source,
                })?
        }
    };
    Ok(Listeners { unix, path, tcp })
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ApiBindError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| ApiBindError::Tls(format!("{}: {e}", p.display())));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiBindError::Tls(format!("{}: {e}", cert.display())))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| ApiBindError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| ApiBindError::Tls(format!("{}: no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiBindError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ApiBindError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API until `shutdown` resolves, then removes the socket.
pub async fn serve(
    listeners: Listeners,
    requests: mpsc::Sender<AdminRequest>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let Listeners { unix, path, tcp } = listeners;
    let (tcp, acceptor, token) = match tcp {
        Some((l, a, t)) => (Some(l), Some(a), Some(t)),
        None => (None, None, None),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = unix.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    let caller = Caller { uid, via: "unix" };
                    spawn_connection(stream, caller, None, &permits, &requests);
                }
                Err(e) => {
                    warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone().expect("with its listener");
                    let token = token.clone();
                    let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "api: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let caller = Caller { uid: None, via: "tcp" };
                        connection(tls, caller, token, requests).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "api: TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_connection<S>(
    stream: S,
    caller: Caller,
    token: Option<Arc<String>>,
    permits: &Arc<Semaphore>,
    requests: &mpsc::Sender<AdminRequest>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        debug!("api: too many connections; closing this one");
        return;
    };
    let requests = requests.clone();
    tokio::spawn(async move {
        connection(stream, caller, token, requests).await;
        drop(permit);
    });
}

async fn connection<S>(
    stream: S,
    caller: Caller,
    token: Option<Arc<String>>,
    requests: mpsc::Sender<AdminRequest>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let requests = requests.clone();
        let token = token.clone();
        async move {
            let response = match authorized(&req, token.as_deref()) {
                Ok(()) => route(req, caller, &requests).await,
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(match response {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => json(e.status, &e.body),
            })
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "api: connection ended");
    }
}

/// TCP requests must carry the token (compared in constant time: its length is not secret,
/// its bytes are).
fn authorized(req: &Request<Incoming>, token: Option<&String>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>` with the token of api.token_file",
        ))
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.replace("%3A", ":").replace("%2B", "+"))
        })
    })
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn ask(requests: &mpsc::Sender<AdminRequest>, command: Command) -> Reply {
    let (tx, rx) = oneshot::channel();
    requests
        .send(AdminRequest { command, reply: tx })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the daemon is stopping",
            )
        })?;
    rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the daemon stopped before answering",
        )
    })?
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such resource {what}; see README, \"Admin API\""),
    )
}

fn malformed(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
}

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body not read: {e} (at most {MAX_BODY_BYTES} bytes; sync larger sets with PUT /v1/inventory)"),
            )
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| malformed(format!("body: {e}")))
}

async fn route(
    req: Request<Incoming>,
    caller: Caller,
    requests: &mpsc::Sender<AdminRequest>,
) -> Reply {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["v1", "status"]) => ask(requests, Command::Status).await,
        (Method::GET, ["v1", "eips"]) => {
            let after = match query(&req, "after") {
                Some(a) => Some(
                    a.parse::<IpAddr>()
                        .map_err(|_| malformed(format!("after: `{a}` is not an address")))?,
                ),
                None => None,
            };
            let limit = match query(&req, "limit") {
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| malformed(format!("limit must be 1..={MAX_PAGE}")))?,
                None => 1000,
            };
            ask(requests, Command::ListEips { after, limit }).await
        }
        (Method::GET, ["v1", "groups"]) => ask(requests, Command::ListGroups).await,
        (Method::GET, ["v1", "eips", addr]) => {
            let addr = addr
                .parse::<IpAddr>()
                .map_err(|_| malformed(format!("`{addr}` is not an IP address")))?;
            ask(requests, Command::GetEip(addr)).await
        }
        (Method::POST, ["v1", "changes"]) => {
            let bytes = body_bytes(req).await?;
            let batch: Batch = parse_json(&bytes)?;
            let now = now_seconds();
            let default_at = protocol::effective(batch.effective_at.as_ref(), now)
                .map_err(|(code, m)| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, m))?;
            let mut ops = protocol::ops_of(&batch.changes, now)
                .map_err(|e| ApiError::items(&e, batch.changes.len(), false))?;
            for (_, at) in &mut ops {
                *at = at.or(default_at);
            }
            ask(
                requests,
                Command::Apply {
                    ops,
                    caller,
                    single: false,
                },
            )
            .await
        }
        (Method::PUT, ["v1", "inventory"]) => sync(req, caller, requests).await,
        (
            method @ (Method::PUT | Method::PATCH | Method::DELETE),
            ["v1", kind @ ("eips" | "groups"), subject],
        ) => {
            let eip = *kind == "eips";
            let effective_q = query(&req, "effective_at");
            let force = query(&req, "force").is_some_and(|f| f == "true");
            let mut item: Item = if method == Method::DELETE {
                Item::default()
            } else {
                parse_json(&body_bytes(req).await?)?
            };
            if item.op.is_some() {
                return Err(malformed("`op` goes in POST /v1/changes items only"));
            }
            let key = if eip {
                &mut item.address
            } else {
                &mut item.name
            };
            match key {
                Some(given) if given != subject => {
                    return Err(malformed(format!(
                        "the body names `{given}`, the path `{subject}`"
                    )));
                }
                _ => *key = Some((*subject).to_owned()),
            }
            if let Some(t) = effective_q {
                item.effective_at = Some(match t.parse::<i64>() {
                    Ok(s) => protocol::Timestamp::Seconds(s),
                    Err(_) => protocol::Timestamp::Text(t),
                });
            }
            if force {
                item.force = Some(true);
            }
            let verb = match method {
                Method::PUT => "put",
                Method::PATCH => "patch",
                _ => "remove",
            };
            item.op = Some(format!("{verb}_{}", if eip { "eip" } else { "group" }));
            let ops = protocol::ops_of(std::slice::from_ref(&item), now_seconds())
                .map_err(|e| ApiError::items(&e, 1, true))?;
            ask(
                requests,
                Command::Apply {
                    ops,
                    caller,
                    single: true,
                },
            )
            .await
        }
        (_, ["v1", ..]) => Err(not_found(&path)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{path}: the API is under /v1/ (this daemon speaks version {})",
                protocol::API_VERSION
            ),
        )),
    }
}

/// `PUT /v1/inventory`: NDJSON lines parsed as they arrive into compact records (never the
/// whole document in memory), then one request to the daemon.
async fn sync(
    req: Request<Incoming>,
    caller: Caller,
    requests: &mpsc::Sender<AdminRequest>,
) -> Reply {
    let started = Instant::now();
    let now = now_seconds();
    let at = match query(&req, "effective_at") {
        Some(t) => protocol::effective(
            Some(&match t.parse::<i64>() {
                Ok(s) => protocol::Timestamp::Seconds(s),
                Err(_) => protocol::Timestamp::Text(t),
            }),
            now,
        )
        .map_err(|(code, m)| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, m))?,
        None => None,
    };
    let hint = req.body().size_hint().lower() as usize;
    let mut body = req.into_body();
    let mut parser = SyncParser::new(hint / 80);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| malformed(format!("body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            parser.feed(&data)?;
        }
    }
    let (groups, eips) = parser.finish()?;
    info!(
        eips = eips.len(),
        groups = groups.len(),
        received_ms = started.elapsed().as_millis() as u64,
        "api: sync received"
    );
    ask(
        requests,
        Command::Sync {
            groups,
            eips,
            at,
            caller,
            received_ms: started.elapsed().as_millis() as u64,
        },
    )
    .await
}

/// Splits a stream into lines and parses each into a compact record.
struct SyncParser {
    partial: Vec<u8>,
    line: usize,
    groups: Vec<GroupConfig>,
    eips: Vec<EipConfig>,
    errors: Vec<ItemError>,
    refused: usize,
}

impl SyncParser {
    fn new(expected_eips: usize) -> Self {
        Self {
            partial: Vec::new(),
            line: 0,
            groups: Vec::new(),
            eips: Vec::with_capacity(expected_eips.min(20_000_000)),
            errors: Vec::new(),
            refused: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), ApiError> {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.parse_line(&data[..nl]);
            } else {
                self.partial.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.parse_line(&line);
            }
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() > MAX_LINE_BYTES {
            return Err(malformed(format!(
                "line {}: longer than {MAX_LINE_BYTES} bytes",
                self.line + 1
            )));
        }
        Ok(())
    }

    fn parse_line(&mut self, bytes: &[u8]) {
        self.line += 1;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let parsed = serde_json::from_slice::<Item>(bytes)
            .map_err(|e| ("malformed", e.to_string()))
            .and_then(|item| protocol::sync_line(&item));
        match parsed {
            Ok(SyncLine::Eip(e)) => self.eips.push(e),
            Ok(SyncLine::Group(g)) => self.groups.push(g),
            Err((code, message)) => {
                self.refused += 1;
                if self.errors.len() < MAX_REPORTED_ERRORS {
                    self.errors.push(ItemError {
                        index: self.line,
                        subject: String::new(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    fn finish(mut self) -> Result<(Vec<GroupConfig>, Vec<EipConfig>), ApiError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.parse_line(&line);
        }
        if self.refused > 0 {
            let total = self.line;
            let mut e = ApiError::items(&self.errors, total, false);
            e.body.message = format!("nothing applied: {} of {total} lines refused", self.refused);
            return Err(e);
        }
        Ok((self.groups, self.eips))
    }
}
