//! A TCP proxy between the agent and the broker, to break the agent's
//! connection while the broker stays up for everybody else.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Bytes from the broker are thrown away: the agent's messages arrive,
    /// their acknowledgements do not.
    Hold,
    /// Connections are closed, new ones closed at once.
    Down,
}

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    /// Both ends of every open connection, to cut them.
    links: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().unwrap_or(Mode::Forward)
    }
}

pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// Forwards a free loopback port to `target_port`.
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if accepting.mode() == Mode::Down {
                    continue; // dropped: closed at once
                }
                let Ok(broker) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                link(&accepting, client, broker);
            }
        });
        TcpProxy { port, shared }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// From now on, what the broker sends is lost.
    pub fn hold(&self) {
        *self.shared.mode.lock().unwrap() = Some(Mode::Hold);
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        *self.shared.mode.lock().unwrap() = Some(Mode::Down);
        for stream in self.shared.links.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        *self.shared.mode.lock().unwrap() = Some(Mode::Forward);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn link(shared: &Arc<Shared>, client: TcpStream, broker: TcpStream) {
    {
        let mut links = shared.links.lock().unwrap();
        links.push(client.try_clone().unwrap());
        links.push(broker.try_clone().unwrap());
    }
    let upstream = (client.try_clone().unwrap(), broker.try_clone().unwrap());
    thread::spawn(move || pump(upstream.0, upstream.1, None));
    let held = shared.clone();
    thread::spawn(move || pump(broker, client, Some(held)));
}

/// Copies `from` to `to`; from the broker, drops bytes while held.
fn pump(mut from: TcpStream, mut to: TcpStream, from_broker: Option<Arc<Shared>>) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if from_broker
            .as_ref()
            .is_some_and(|shared| shared.mode() == Mode::Hold)
        {
            continue;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
