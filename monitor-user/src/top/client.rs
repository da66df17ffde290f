//! `top --connect`: reads a running agent's `/api/v1/tasks` (its
//! `--listen`), over TCP or a unix socket, with hyper's HTTP/1 client.
//!
//! One connection per poll: a poll a second costs the agent little, and
//! nothing has to notice a connection the agent closed (it closes every
//! connection after 30 s). Whatever the agent sends is bounded (a reply
//! of at most [`MAX_REPLY_BYTES`], read within [`REQUEST_TIMEOUT`]) and
//! checked: a task entry that is not a task message is skipped and
//! counted, never a panic.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    export::http::{DEFAULT_LISTEN, ListenAddr},
    message::TaskMetricsMessage,
};

/// The agent's API path that lists every task's latest message.
pub const TASKS_PATH: &str = "/api/v1/tasks";
/// Longest wait for a whole reply (connection included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply read: an agent's 4,096 tasks with their peers fit.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// An agent's local API.
#[derive(Clone, Debug)]
pub struct AgentClient {
    addr: ListenAddr,
}

/// One poll's task messages.
#[derive(Debug, Default)]
pub struct TaskList {
    pub messages: Vec<TaskMetricsMessage>,
    /// Entries that were not task messages (another version's shape, or
    /// garbage), skipped.
    pub skipped: usize,
}

#[derive(Deserialize)]
struct Reply {
    tasks: Vec<serde_json::Value>,
}

impl AgentClient {
    /// `IP:PORT`, `localhost:PORT` or `unix:/PATH`, as `--listen` takes
    /// them; the `http://` the agent's log line shows is accepted too.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let text = text.strip_prefix("http://").unwrap_or(text);
        let text = text.strip_suffix('/').unwrap_or(text);
        let addr = ListenAddr::parse(text).map_err(|why| anyhow!("--connect {why}"))?;
        Ok(AgentClient { addr })
    }

    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The latest message of every task the agent monitors.
    pub async fn tasks(&self) -> anyhow::Result<TaskList> {
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.get(TASKS_PATH))
            .await
            .map_err(|_| {
                anyhow!(
                    "the agent at {} did not answer within {REQUEST_TIMEOUT:?}",
                    self.addr
                )
            })??;
        parse_tasks(&body).with_context(|| {
            format!(
                "the server at {} did not send propmon's task list (is it a propmon agent?)",
                self.addr
            )
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        let unreachable = |err: std::io::Error| self.unreachable(&err);
        match &self.addr {
            ListenAddr::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(unreachable)?;
                self.exchange(stream, &addr.to_string(), path).await
            }
            #[cfg(unix)]
            ListenAddr::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(unreachable)?;
                self.exchange(stream, "localhost", path).await
            }
            #[cfg(not(unix))]
            ListenAddr::Unix(_) => bail!("unix sockets need a Unix system"),
        }
    }

    /// One request on a fresh connection; the body of a 200 reply.
    async fn exchange<Io>(&self, stream: Io, host: &str, path: &str) -> anyhow::Result<Bytes>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("talking HTTP to {}", self.addr))?;
        // The connection is driven beside the request; it ends when the
        // sender is dropped.
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let reply = sender
            .send_request(request)
            .await
            .with_context(|| format!("the agent at {} closed the connection", self.addr))?;
        let status = reply.status();
        if status != StatusCode::OK {
            driver.abort();
            bail!(
                "the server at {} answered {status} for {path} (is it a propmon agent with \
                 --listen, of this version or later?)",
                self.addr
            );
        }
        let body = Limited::new(reply.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|err| anyhow!("reading the reply of the agent at {}: {err}", self.addr))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok(body)
    }

    /// A connection that failed, as one line that says what to do.
    fn unreachable(&self, err: &std::io::Error) -> anyhow::Error {
        use std::io::ErrorKind;
        let addr = &self.addr;
        let start = match addr {
            ListenAddr::Tcp(tcp) if tcp.to_string() == DEFAULT_LISTEN => "--listen".to_owned(),
            _ => format!("--listen {addr}"),
        };
        let why = match err.kind() {
            ErrorKind::ConnectionRefused => "nothing listens there".to_owned(),
            ErrorKind::NotFound => "no such socket".to_owned(),
            ErrorKind::PermissionDenied => {
                return anyhow!(
                    "cannot reach the agent at {addr}: permission denied (its socket is \
                     root-only: run propmon top as root)"
                );
            }
            _ => err.to_string(),
        };
        anyhow!("cannot reach the agent at {addr}: {why} (is `propmon agent {start}` running?)")
    }
}

/// `{"tasks":[MESSAGE, ...]}`; entries that are not messages are counted.
fn parse_tasks(body: &[u8]) -> anyhow::Result<TaskList> {
    let reply: Reply = serde_json::from_slice(body)?;
    let mut list = TaskList::default();
    for entry in reply.tasks {
        match serde_json::from_value::<TaskMetricsMessage>(entry) {
            Ok(message) => list.messages.push(message),
            Err(_) => list.skipped += 1,
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::latest::tests::message;

    #[test]
    fn addresses_are_those_of_listen() {
        for (text, shown) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            ("http://127.0.0.1:9464/", "127.0.0.1:9464"),
            ("localhost:80", "127.0.0.1:80"),
            ("[::1]:9464", "[::1]:9464"),
        ] {
            assert_eq!(AgentClient::parse(text).unwrap().addr().to_string(), shown);
        }
        let err = AgentClient::parse("example.com:80")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--connect \"example.com:80\": expected"),
            "{err}"
        );
    }

    #[test]
    fn malformed_replies_are_errors_and_bad_entries_are_skipped() {
        let good = serde_json::to_value(message("a", 1, false)).unwrap();
        let body = serde_json::json!({"tasks": [good, {"task_id": 7}, "x"]}).to_string();
        let list = parse_tasks(body.as_bytes()).unwrap();
        assert_eq!((list.messages.len(), list.skipped), (1, 2));
        for bad in ["", "null", "{}", "{\"tasks\": 3}", "<html>", "[1,2]"] {
            assert!(parse_tasks(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_agent_that_is_not_there_is_one_clear_line() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let client = AgentClient::parse(&addr.to_string()).unwrap();
        let err = format!("{:#}", client.tasks().await.unwrap_err());
        assert_eq!(
            err,
            format!(
                "cannot reach the agent at {addr}: nothing listens there (is `propmon agent \
                 --listen {addr}` running?)"
            )
        );
    }

    #[tokio::test]
    async fn a_server_that_is_not_an_agent_is_named() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for reply in [
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            ] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await.unwrap();
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let client = AgentClient::parse(&addr.to_string()).unwrap();
        let err = format!("{:#}", client.tasks().await.unwrap_err());
        assert!(
            err.contains("answered 404 Not Found for /api/v1/tasks"),
            "{err}"
        );
        let err = format!("{:#}", client.tasks().await.unwrap_err());
        assert!(err.contains("did not send propmon's task list"), "{err}");
        server.await.unwrap();
    }
}
