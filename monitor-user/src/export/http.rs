//! The HTTP listener (`--listen`): `/metrics` for Prometheus (see
//! `prometheus`), `/api/v1/tasks` for scripts (see `api`).
//!
//! It runs on a thread and an async runtime of its own, so that no client
//! can delay a sampling round (the sampling loop only writes into
//! [`Latest`], under a lock the listener holds just long enough to copy
//! pointers). No client can grow the agent's memory without bound either:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once; more wait in the
//!   kernel's accept queue;
//! - request headers must fit in [`MAX_REQUEST_BYTES`] and arrive within
//!   [`HEADER_TIMEOUT`]; request bodies are never read;
//! - a connection is closed after [`CONNECTION_LIFETIME`], whatever it is
//!   doing (a client that never reads its response holds nothing longer);
//! - responses are built from a snapshot, so their size is bounded by the
//!   tasks monitored (about 1 KB of JSON per task).
//!
//! It binds a loopback address unless told otherwise (`--listen` refuses
//! other addresses without `--listen-non-loopback`), or a unix socket that
//! only the agent's user can open.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
};

use super::{
    api,
    latest::Latest,
    prometheus::{self, Format},
};
use crate::input::untrusted;

/// The address of `--listen` given without one: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 16 << 10;
/// Most request headers.
const MAX_HEADERS: usize = 64;
/// Time a client has to send a request's headers (and, between requests,
/// to start the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Between two log lines about failed accepts (e.g. out of descriptors).
const ACCEPT_WARNING_PERIOD: Duration = Duration::from_secs(60);

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A unix socket (Unix systems only), created readable and writable
    /// by the agent's user alone.
    Unix(PathBuf),
}

impl ListenAddr {
    /// `IP:PORT` (`127.0.0.1:9464`, `[::1]:9464`), `localhost:PORT`, or a
    /// unix socket: `unix:/PATH` or `/PATH`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let shown = untrusted(text);
        if let Some(path) = text
            .strip_prefix("unix:")
            .or(text.starts_with('/').then_some(text))
        {
            if !path.starts_with('/') {
                return Err(format!(
                    "\"{shown}\": the socket path must be absolute (e.g. unix:/run/propmon/metrics.sock)"
                ));
            }
            if !cfg!(unix) {
                return Err(format!("\"{shown}\": unix sockets need a Unix system"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(port) = text.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(ListenAddr::Tcp(SocketAddr::new(
                Ipv4Addr::LOCALHOST.into(),
                port,
            )));
        }
        text.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| {
                format!(
                    "\"{shown}\": expected an IP address and port (e.g. {DEFAULT_LISTEN} or \
                 [::1]:9464) or a unix socket path (e.g. unix:/run/propmon/metrics.sock)"
                )
            })
    }

    /// Whether only this host can connect: a loopback address or a unix
    /// socket.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => match addr.ip() {
                IpAddr::V4(ip) => ip.is_loopback(),
                IpAddr::V6(ip) => {
                    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
                }
            },
            ListenAddr::Unix(_) => true,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The running listener; dropping it stops it (and removes its socket).
pub struct HttpServer {
    latest: Latest,
    local: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// What the listener serves from: the sampling loop writes here.
    pub fn latest(&self) -> &Latest {
        &self.latest
    }

    /// Where it listens (the port chosen by the system for port 0).
    pub fn local(&self) -> &str {
        &self.local
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(()); // the thread may have ended already
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the HTTP listener's thread panicked");
        }
    }
}

/// Binds `addr` (failing with one line that says what to do) and serves
/// what `latest` holds, from a thread of its own.
pub fn start(addr: &ListenAddr, latest: Latest) -> anyhow::Result<HttpServer> {
    let listener = Bound::bind(addr)?;
    let local = listener.local();
    let (shutdown, stopped) = oneshot::channel();
    let router = router(latest.clone());
    let thread = std::thread::Builder::new()
        .name("propmon-http".to_owned())
        .spawn(move || run(listener, router, stopped))
        .context("starting the HTTP listener's thread")?;
    tracing::info!("serving /metrics and /api/v1/tasks on {local}");
    Ok(HttpServer {
        latest,
        local,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}

/// The listener's thread: serves until told to stop.
fn run(listener: Bound, router: Router, stopped: oneshot::Receiver<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("the HTTP listener cannot start its runtime: {err}");
            return;
        }
    };
    runtime.block_on(async move {
        tokio::select! {
            () = accept_loop(listener, router) => {}
            _ = stopped => {}
        }
    });
    // Dropping the runtime closes every connection still open.
}

async fn accept_loop(listener: Bound, router: Router) {
    let listener = match listener.into_tokio() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("the HTTP listener cannot start: {err:#}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<Instant> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        match listener.accept().await {
            Ok(Accepted::Tcp(stream)) => {
                tokio::spawn(serve(stream, router.clone(), slot));
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(serve(stream, router.clone(), slot));
            }
            Err(err) => {
                // E.g. out of file descriptors: wait rather than spin.
                if last_warning.is_none_or(|at| at.elapsed() > ACCEPT_WARNING_PERIOD) {
                    tracing::warn!("the HTTP listener cannot accept connections: {err}");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection, within the limits; `_slot` frees its place when done.
async fn serve<Io>(io: Io, router: Router, _slot: OwnedSemaphorePermit)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
        Ok(Ok(())) => {}
        // Clients that go away, send garbage or take too long: theirs to fix.
        Ok(Err(err)) => tracing::debug!("HTTP connection: {err}"),
        Err(_) => tracing::debug!("HTTP connection closed after {CONNECTION_LIFETIME:?}"),
    }
}

fn router(latest: Latest) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{id}", get(task))
        .fallback(not_found)
        .with_state(latest)
}

const INDEX: &str = "propmon\n\n\
    /metrics            Prometheus text format (OpenMetrics if asked for with Accept)\n\
    /api/v1/tasks       the latest message of every task, as JSON\n\
    /api/v1/tasks/{id}  the latest message of one task\n";

async fn index() -> &'static str {
    INDEX
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, INDEX)
}

async fn metrics(State(latest): State<Latest>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::from_accept(accept);
    match prometheus::render(latest.snapshot(), format) {
        Ok(text) => body(format.content_type(), text.into_bytes()),
        Err(err) => {
            tracing::warn!("encoding /metrics: {err}");
            internal_error()
        }
    }
}

async fn tasks(State(latest): State<Latest>) -> Response {
    match api::tasks(&latest.snapshot().tasks) {
        Ok(json) => body(api::CONTENT_TYPE, json),
        Err(err) => {
            tracing::warn!("encoding /api/v1/tasks: {err}");
            internal_error()
        }
    }
}

async fn task(State(latest): State<Latest>, Path(task_id): Path<String>) -> Response {
    let Some(message) = latest.task(&task_id) else {
        let json = api::error(&format!(
            "no task \"{}\": it has ended, or sent no message yet",
            untrusted(&task_id)
        ));
        return (StatusCode::NOT_FOUND, body(api::CONTENT_TYPE, json)).into_response();
    };
    match api::task(&message) {
        Ok(json) => body(api::CONTENT_TYPE, json),
        Err(err) => {
            tracing::warn!("encoding /api/v1/tasks/{}: {err}", untrusted(&task_id));
            internal_error()
        }
    }
}

/// A response of the agent's current figures: never cached.
fn body(content_type: &'static str, bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "encoding failed; see the agent's log\n",
    )
        .into_response()
}

/// A bound listener, not yet handed to the runtime.
enum Bound {
    Tcp(std::net::TcpListener),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener, socket::SocketFile),
}

enum Listening {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix {
        listener: tokio::net::UnixListener,
        /// Removes the socket when the listener goes.
        _file: socket::SocketFile,
    },
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Bound {
    fn bind(addr: &ListenAddr) -> anyhow::Result<Self> {
        match addr {
            ListenAddr::Tcp(socket_addr) => std::net::TcpListener::bind(socket_addr)
                .map(Bound::Tcp)
                .map_err(|err| bind_error(&err, addr)),
            #[cfg(unix)]
            ListenAddr::Unix(path) => {
                let (listener, file) =
                    socket::bind(path).with_context(|| format!("cannot listen on {addr}"))?;
                Ok(Bound::Unix(listener, file))
            }
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => anyhow::bail!("cannot listen on {addr}: unix sockets need Unix"),
        }
    }

    fn local(&self) -> String {
        match self {
            Bound::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "a TCP port".to_owned(),
            },
            #[cfg(unix)]
            Bound::Unix(_, file) => format!("unix:{}", file.path().display()),
        }
    }

    /// Must run inside the runtime.
    fn into_tokio(self) -> anyhow::Result<Listening> {
        Ok(match self {
            Bound::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                Listening::Tcp(tokio::net::TcpListener::from_std(listener)?)
            }
            #[cfg(unix)]
            Bound::Unix(listener, file) => {
                listener.set_nonblocking(true)?;
                Listening::Unix {
                    listener: tokio::net::UnixListener::from_std(listener)?,
                    _file: file,
                }
            }
        })
    }
}

impl Listening {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listening::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Tcp(stream))
            }
            #[cfg(unix)]
            Listening::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Unix(stream))
            }
        }
    }
}

fn bind_error(err: &std::io::Error, addr: &ListenAddr) -> anyhow::Error {
    use std::io::ErrorKind;
    let why = match err.kind() {
        ErrorKind::AddrInUse => "the address is in use (another propmon, or another program on \
                                 this port?): stop it, or choose another --listen address"
            .to_owned(),
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        ErrorKind::AddrNotAvailable => {
            "no network interface of this host has this address".to_owned()
        }
        _ => err.to_string(),
    };
    anyhow!("cannot listen on {addr}: {why}")
}

/// A unix socket only the agent's user can open.
#[cfg(unix)]
mod socket {
    use std::{
        fs,
        os::unix::{
            fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
            net::{UnixListener, UnixStream},
        },
        path::{Path, PathBuf},
    };

    use anyhow::{Context as _, bail};

    /// The socket's path, removed when the listener stops.
    pub struct SocketFile(PathBuf);

    impl SocketFile {
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for SocketFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0); // gone already: nothing to do
        }
    }

    /// Binds `path` with mode 0600. A socket's mode comes from the umask
    /// when it is bound, and the umask is the whole process's: so the
    /// socket is bound in a private directory, made root-only, and only
    /// then moved into place, where nobody else ever sees it open.
    pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
        clear_stale(path)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("/"),
        };
        if !dir.is_dir() {
            bail!(
                "the directory {} does not exist: create it first (root-only, e.g. \
                 install -d -m 0700 {})",
                dir.display(),
                dir.display()
            );
        }
        let private = dir.join(format!(".propmon-{}", std::process::id()));
        let _ = fs::remove_dir_all(&private); // left by a crashed agent with our pid
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .with_context(|| format!("creating {}", private.display()))?;
        let bound = bind_privately(&private.join("s"), path);
        let _ = fs::remove_dir_all(&private);
        bound.map(|listener| (listener, SocketFile(path.to_owned())))
    }

    fn bind_privately(temporary: &Path, path: &Path) -> anyhow::Result<UnixListener> {
        let listener = UnixListener::bind(temporary).map_err(|err| {
            if err.kind() == std::io::ErrorKind::InvalidInput {
                anyhow::anyhow!("the socket path is too long (at most about 100 bytes)")
            } else {
                anyhow::Error::new(err)
            }
        })?;
        fs::set_permissions(temporary, fs::Permissions::from_mode(0o600))
            .context("making the socket root-only")?;
        fs::rename(temporary, path).with_context(|| format!("creating {}", path.display()))?;
        Ok(listener)
    }

    /// A socket left by an agent that did not stop cleanly is removed; a
    /// live one, or anything else at the path, is not ours to touch.
    fn clear_stale(path: &Path) -> anyhow::Result<()> {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return Ok(());
        };
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: remove it, or choose another path",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another process serves on {} (another propmon?): stop it, or choose another path",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_fail_clearly() {
        let tcp = |text: &str| ListenAddr::Tcp(text.parse().unwrap());
        assert_eq!(ListenAddr::parse(DEFAULT_LISTEN), Ok(tcp("127.0.0.1:9464")));
        assert_eq!(ListenAddr::parse("[::1]:9464"), Ok(tcp("[::1]:9464")));
        assert_eq!(ListenAddr::parse("localhost:80"), Ok(tcp("127.0.0.1:80")));
        #[cfg(unix)]
        {
            let unix = |path: &str| Ok(ListenAddr::Unix(path.into()));
            assert_eq!(ListenAddr::parse("unix:/run/p.sock"), unix("/run/p.sock"));
            assert_eq!(ListenAddr::parse("/run/p.sock"), unix("/run/p.sock"));
        }
        for (bad, expected) in [
            (":9464", "expected an IP address and port"),
            ("example.com:9464", "expected an IP address and port"),
            ("127.0.0.1", "expected an IP address and port"),
            ("unix:run/p.sock", "must be absolute"),
            ("a\nb", r#""a\nb""#),
        ] {
            let err = ListenAddr::parse(bad).unwrap_err();
            assert!(err.contains(expected), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn only_loopback_and_unix_sockets_are_local() {
        for local in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
            "/s",
        ] {
            assert!(ListenAddr::parse(local).unwrap().is_local(), "{local}");
        }
        for remote in ["0.0.0.0:1", "[::]:1", "192.0.2.1:1", "[2001:db8::1]:1"] {
            assert!(!ListenAddr::parse(remote).unwrap().is_local(), "{remote}");
        }
    }

    #[test]
    fn an_address_in_use_says_so() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ListenAddr::Tcp(taken.local_addr().unwrap());
        let err = Bound::bind(&addr).err().unwrap().to_string();
        assert!(err.contains("the address is in use"), "{err}");
        assert!(
            err.starts_with(&format!("cannot listen on {addr}")),
            "{err}"
        );
    }
}
