//! MQTT export: per-task and proplet-level messages published at QoS 1 on
//! Propeller's topics, and (Propeller mode) the Manager's control messages
//! received.
//!
//! Nothing is lost across broker outages: messages wait in a bounded queue
//! (oldest dropped and counted when full), and a message leaves the queue
//! for good only when the broker acknowledged it. Whatever was sent but not
//! acknowledged when the connection dropped goes back to the front of the
//! queue, in order, and is sent again after reconnecting (a consumer may
//! then see a QoS 1 duplicate, never a gap); the queue is the only thing
//! that sends again (see `client`). The sampling loop only ever pushes into
//! the queue; a background task does the network.
//!
//! Control messages are not lost either: the session is persistent, so the
//! broker keeps them while the agent is away, and each one is acknowledged
//! only once the agent acted on it ([`Incoming::acknowledge`]). No control
//! message can break the connection: MQTT 5 tells the broker the largest
//! one we take (`--mqtt-max-message-size`), and it drops larger ones for
//! us; over MQTT 3.1.1, which cannot say so, larger ones are read, logged
//! and dropped here.

pub mod client;
mod errors;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

pub use self::client::Protocol;
use self::{
    client::{AckToken, ConnectOptions, Connection, Event, Failure, Received},
    errors::Circumstances,
};
use super::{Message, Outgoing, Sink};

/// Default queue size: 10 minutes of 100 tasks at 1 s.
pub const DEFAULT_QUEUE_SIZE: usize = 60_000;
/// Default largest control message: a start message carries the task's
/// WebAssembly module, base64-encoded, in `file`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 << 20;
/// Messages handed to the MQTT client and not yet acknowledged, at most
/// (MQTT 5: fewer if the broker's receive maximum says so). Each window
/// of acknowledgements wakes the agent: a round of 1,000 tasks fits in
/// one, where a window of 100 took ten wake-ups (BENCHMARKS.md). What is
/// in flight goes out again after a reconnection: a window's worth of
/// QoS 1 duplicates at most.
const IN_FLIGHT: usize = 1000;
/// Retries stay frequent: a broker that comes back is used within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Parses `--mqtt-max-message-size`: bytes, or a number of `KiB` or `MiB`;
/// between 1 KiB and 256 MiB (MQTT's own limit).
pub fn parse_message_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let (number, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (examples: 33554432, 512KiB, 32MiB)"
            ));
        }
    };
    let bytes = number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid size {text:?} (examples: 33554432, 512KiB, 32MiB)"))?;
    if !(1 << 10..=256 << 20).contains(&bytes) {
        return Err(format!("size {text:?} is out of range (1KiB to 256MiB)"));
    }
    Ok(bytes)
}

/// Which per-task topic: Propeller's (`control/proplet/task_metrics`) or the
/// original Rust design's (`metrics/proplet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicStyle {
    Propeller,
    RustV1,
}

/// Where to connect and what to publish where.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub domain_id: String,
    pub channel_id: String,
    pub topic_style: TopicStyle,
    pub queue_size: usize,
    pub protocol: Protocol,
    /// Largest control message accepted, bytes.
    pub max_message_size: usize,
    /// Control topics to subscribe to (Propeller mode).
    pub subscribe: Vec<String>,
    /// Where the agent's own message goes (after `m/{domain}/c/{channel}/`).
    pub agent_metrics_path: &'static str,
    /// Whether per-task messages are published (always on stdout).
    pub publish_task_metrics: bool,
}

/// The proplet-level series of the Manager.
pub const PROPLET_METRICS_PATH: &str = "control/proplet/metrics";
/// propmon's own message beside a real proplet: a topic the Manager does
/// not read, so that it never lands in the proplet's series.
pub const PROPMON_METRICS_PATH: &str = "control/propmon/metrics";

impl MqttSettings {
    /// `m/{domain}/c/{channel}/{path}`.
    pub fn topic(&self, path: &str) -> String {
        format!("m/{}/c/{}/{path}", self.domain_id, self.channel_id)
    }

    /// Beside a real proplet (Propeller mode) the Manager's series belong
    /// to it: the proplet-level one always (propmon's own message goes to
    /// [`PROPMON_METRICS_PATH`]), the per-task ones unless the proplet's
    /// own monitoring is off (`PROPLET_ENABLE_MONITORING=false`, read from
    /// the environment both share). So two sources never mix in a series.
    pub fn beside_proplet(&mut self, proplet_monitors_tasks: bool) {
        self.agent_metrics_path = PROPMON_METRICS_PATH;
        self.publish_task_metrics = !proplet_monitors_tasks;
    }

    fn task_topic(&self) -> String {
        self.topic(match self.topic_style {
            TopicStyle::Propeller => "control/proplet/task_metrics",
            TopicStyle::RustV1 => "metrics/proplet",
        })
    }
}

/// A message received on a subscribed topic.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    receipt: Receipt,
}

#[derive(Debug)]
struct Receipt {
    token: AckToken,
    acks: mpsc::UnboundedSender<AckToken>,
    wake: Arc<Notify>,
}

impl Incoming {
    /// Tells the broker that the message was dealt with (acted on, or
    /// rejected as invalid), so it is not delivered again. A message never
    /// acknowledged, because the agent stopped first or the connection
    /// dropped, is delivered again on the next connection.
    pub fn acknowledge(&self) {
        if self.receipt.acks.send(self.receipt.token).is_err() {
            // The publisher has stopped: the broker keeps the message for
            // the next session, which is what an acknowledgement lost in
            // transit would give too.
            tracing::debug!("acknowledgement not sent: the MQTT publisher has stopped");
            return;
        }
        self.receipt.wake.notify_one();
    }
}

struct Queued {
    /// Order of arrival, to put unacknowledged messages back in order.
    seq: u64,
    topic: String,
    /// The JSON the other sinks send too, shared, not copied.
    payload: Bytes,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    next_seq: u64,
    /// `waiting.len()`, kept for readers that must not wait for the lock
    /// (the agent's health, read every round).
    length: Arc<AtomicU64>,
}

impl Queue {
    fn push_back(&mut self, message: Queued) {
        self.waiting.push_back(message);
        self.note_length();
    }

    fn push_front(&mut self, message: Queued) {
        self.waiting.push_front(message);
        self.note_length();
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let message = self.waiting.pop_front();
        self.note_length();
        message
    }

    fn note_length(&self) {
        self.length
            .store(self.waiting.len() as u64, Ordering::Relaxed);
    }
}

/// The exporter's state for `/metrics`: atomics the publisher and the
/// sink keep up to date, so that reading them never waits for either.
#[derive(Clone, Debug)]
pub struct MqttStatus {
    connected: Arc<AtomicBool>,
    queued: Arc<AtomicU64>,
    capacity: usize,
}

impl MqttStatus {
    /// Whether the broker accepted the connection and it has not failed since.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Messages waiting in the queue, not yet handed to the broker.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Messages the queue keeps at most (`--mqtt-queue-size`).
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }
}

/// The sink half: queues messages for the background publisher.
pub struct MqttSink {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    dropped: Arc<AtomicU64>,
    capacity: usize,
    connected: Arc<AtomicBool>,
    /// `None`: per-task messages are not published.
    task_topic: Option<String>,
    proplet_topic: String,
    last_drop_log: Option<Instant>,
}

/// Waits until everything queued was acknowledged (or a deadline).
pub struct Flusher {
    queue: Arc<Mutex<Queue>>,
    unacked: Arc<AtomicU64>,
}

impl Flusher {
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            let waiting = self.queue.lock().expect("queue lock").waiting.len();
            if waiting == 0 && self.unacked.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the background publisher; returns the sink, a flusher, and the
/// stream of messages received on `settings.subscribe`.
pub fn start(
    settings: MqttSettings,
) -> anyhow::Result<(MqttSink, Flusher, mpsc::UnboundedReceiver<Incoming>)> {
    let endpoint = Endpoint::parse(&settings.url)?;
    let connection = Connection::new(connect_options(&settings, &endpoint)?)?;
    if !settings.publish_task_metrics {
        tracing::warn!(
            "the proplet's own task monitoring is on (PROPLET_ENABLE_MONITORING is not false): \
             task metrics stay on stdout, so that the Manager never stores two sources in one \
             task's series; set PROPLET_ENABLE_MONITORING=false for the proplet and propmon \
             (e.g. in /etc/default/proplet) to publish propmon's instead"
        );
    }
    let queue = Arc::new(Mutex::new(Queue::default()));
    let connected = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    let unacked = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let publisher = Publisher {
        connection,
        queue: queue.clone(),
        wake: wake.clone(),
        unacked_count: unacked.clone(),
        dropped: dropped.clone(),
        handed: VecDeque::new(),
        unacked: BTreeMap::new(),
        connected: false,
        connected_flag: connected.clone(),
        backoff: Duration::from_secs(1),
        subscribe: settings.subscribe.clone(),
        incoming: incoming_tx,
        acks: acks_rx,
        acks_tx,
        url: settings.url.clone(),
        server: endpoint.server(),
        protocol: settings.protocol,
        max_message_size: settings.max_message_size,
        broker_max_packet: None,
        failing_since: None,
        last_warning: None,
        last_refusal: None,
    };
    tokio::spawn(publisher.run());
    let sink = MqttSink {
        queue: queue.clone(),
        wake,
        dropped,
        capacity: settings.queue_size.max(1),
        connected,
        task_topic: settings.publish_task_metrics.then(|| settings.task_topic()),
        proplet_topic: settings.topic(settings.agent_metrics_path),
        last_drop_log: None,
    };
    Ok((sink, Flusher { queue, unacked }, incoming_rx))
}

fn connect_options(settings: &MqttSettings, endpoint: &Endpoint) -> anyhow::Result<ConnectOptions> {
    let transport = if endpoint.tls {
        tls_transport(settings.ca_file.as_deref())?
    } else {
        rumqttc::Transport::tcp()
    };
    let credentials = settings.username.as_ref().map(|username| {
        let password = settings.password.clone().unwrap_or_default();
        (username.clone(), password)
    });
    Ok(ConnectOptions {
        host: endpoint.host.clone(),
        port: endpoint.port,
        client_id: settings.client_id.clone(),
        credentials,
        transport,
        protocol: settings.protocol,
        max_message_size: settings.max_message_size,
        in_flight: IN_FLIGHT as u16,
    })
}

#[cfg(feature = "tls")]
fn tls_transport(ca_file: Option<&std::path::Path>) -> anyhow::Result<rumqttc::Transport> {
    let Some(ca_file) = ca_file else {
        bail!("mqtts:// needs the broker's CA certificate: pass --mqtt-ca-file FILE (PEM)");
    };
    let ca = std::fs::read(ca_file)
        .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
    Ok(rumqttc::Transport::tls(ca, None, None))
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_: Option<&std::path::Path>) -> anyhow::Result<rumqttc::Transport> {
    bail!("this propmon was built without TLS (feature `tls`): use mqtt:// or rebuild with it")
}

/// A broker address: `mqtt://host:port`, `tcp://`, `mqtts://`, `ssl://`, or
/// a bare `host[:port]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl" | "tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                bail!("unsupported MQTT URL scheme {scheme:?} in {url:?} (use mqtt:// or mqtts://)")
            }
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                let port = port
                    .parse()
                    .with_context(|| format!("invalid port {port:?} in MQTT URL {url:?}"))?;
                (host, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("no host in MQTT URL {url:?}");
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// `host:port`, as users name a server.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl MqttSink {
    /// A handle on the exporter's state, cheap to read from any thread.
    pub fn status(&self) -> MqttStatus {
        MqttStatus {
            connected: self.connected.clone(),
            queued: self.queue.lock().expect("queue lock").length.clone(),
            capacity: self.capacity,
        }
    }

    fn push(&mut self, topic: String, payload: Bytes) {
        let mut dropped_now = false;
        {
            let mut queue = self.queue.lock().expect("queue lock");
            if queue.waiting.len() >= self.capacity {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
                dropped_now = true;
            }
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.push_back(Queued {
                seq,
                topic,
                payload,
            });
        }
        self.wake.notify_one();
        if dropped_now {
            self.log_drops();
        }
    }

    fn log_drops(&mut self) {
        let now = Instant::now();
        if self
            .last_drop_log
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(30))
        {
            return;
        }
        self.last_drop_log = Some(now);
        tracing::warn!(
            "MQTT queue full ({} messages): dropping the oldest; {} dropped so far \
             (the broker is unreachable; raise --mqtt-queue-size to wait longer)",
            self.capacity,
            self.dropped.load(Ordering::Relaxed)
        );
    }
}

impl Sink for MqttSink {
    fn send(&mut self, message: &Outgoing) {
        let topic = match &message.message {
            Message::Task { export: false, .. } => return,
            Message::Task { .. } => match &self.task_topic {
                Some(topic) => topic.clone(),
                None => return,
            },
            Message::Proplet(_) => self.proplet_topic.clone(),
        };
        self.push(topic, message.json().clone());
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The background task that owns the connection.
struct Publisher {
    connection: Connection,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    unacked_count: Arc<AtomicU64>,
    /// Messages lost (full queue, refused by the broker), shared with the sink.
    dropped: Arc<AtomicU64>,
    /// Handed to the client, waiting for their packet id, in order.
    handed: VecDeque<Queued>,
    /// Sent, waiting for PUBACK, by packet id.
    unacked: BTreeMap<u16, Queued>,
    connected: bool,
    /// `connected`, for [`MqttStatus`].
    connected_flag: Arc<AtomicBool>,
    backoff: Duration,
    subscribe: Vec<String>,
    incoming: mpsc::UnboundedSender<Incoming>,
    /// Acknowledgements of handled control messages, to send.
    acks: mpsc::UnboundedReceiver<AckToken>,
    acks_tx: mpsc::UnboundedSender<AckToken>,
    url: String,
    /// `host:port`.
    server: String,
    protocol: Protocol,
    max_message_size: usize,
    /// The largest packet the broker takes from us, if it said (MQTT 5).
    broker_max_packet: Option<usize>,
    failing_since: Option<Instant>,
    /// When the outage was last reported (once a minute at most).
    last_warning: Option<Instant>,
    /// When a refused message was last reported (once a minute at most).
    last_refusal: Option<Instant>,
}

impl Publisher {
    async fn run(mut self) {
        loop {
            if self.connected {
                self.send_acks();
                self.hand_over();
            }
            tokio::select! {
                event = self.connection.poll() => match event {
                    Ok(event) => self.on_event(event),
                    Err(failure) => {
                        self.on_error(&failure);
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                },
                _ = self.wake.notified(), if self.connected => {}
            }
        }
    }

    /// Acknowledgements of control messages the agent has dealt with.
    fn send_acks(&mut self) {
        while let Ok(token) = self.acks.try_recv() {
            self.connection.ack(token);
        }
    }

    /// Moves queued messages to the client, up to the in-flight window.
    fn hand_over(&mut self) {
        while self.handed.len() + self.unacked.len() < IN_FLIGHT {
            let Some(next) = self.queue.lock().expect("queue lock").pop_front() else {
                break;
            };
            if self.too_large_for_broker(&next) {
                self.refused(&next, "larger than the broker's maximum packet size");
                continue;
            }
            if !self.connection.publish(&next.topic, &next.payload) {
                self.queue.lock().expect("queue lock").push_front(next);
                break;
            }
            self.handed.push_back(next);
        }
        self.count_unacked();
    }

    /// A message the broker said it would refuse: sending it would fail the
    /// connection, again at every attempt.
    fn too_large_for_broker(&self, message: &Queued) -> bool {
        // Fixed header, topic, packet id, empty MQTT 5 properties.
        let packet = 5 + 2 + message.topic.len() + 2 + 1 + message.payload.len();
        self.broker_max_packet.is_some_and(|max| packet > max)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected {
                session_present,
                max_packet_size,
            } => self.on_connected(session_present, max_packet_size),
            Event::Sent(pkid) => {
                if let Some(message) = self.handed.pop_front() {
                    self.unacked.insert(pkid, message);
                }
            }
            Event::Acked { pkid, refused } => {
                let message = self.unacked.remove(&pkid);
                if let (Some(message), Some(why)) = (message, refused) {
                    self.refused(&message, &why);
                }
                self.count_unacked();
            }
            Event::Subscribed(outcomes) => {
                if outcomes.iter().all(Option::is_none) {
                    tracing::info!("subscribed to {}", self.subscribe.join(", "));
                }
                for (topic, why) in self.subscribe.iter().zip(outcomes) {
                    if let Some(why) = why {
                        tracing::warn!(
                            "the MQTT broker refused the subscription to {topic} ({why}): the \
                             Manager's messages there will not arrive (check the broker's access \
                             rules for this client)"
                        );
                    }
                }
            }
            Event::Message(received) => self.on_message(received),
            Event::Other => {}
        }
    }

    fn on_connected(&mut self, session_present: bool, max_packet_size: Option<usize>) {
        self.connected = true;
        self.connected_flag.store(true, Ordering::Relaxed);
        self.backoff = Duration::from_secs(1);
        self.last_warning = None;
        self.broker_max_packet = max_packet_size;
        match self.failing_since.take() {
            Some(since) => tracing::info!(
                "MQTT broker {} reachable again after {:.0?}; sending what waited",
                self.url,
                since.elapsed()
            ),
            None => tracing::info!("connected to the MQTT broker {}", self.url),
        }
        tracing::debug!("MQTT session present: {session_present}");
        // Also when the session is present: it may predate these topics.
        if !self.subscribe.is_empty()
            && let Err(err) = self.connection.subscribe(&self.subscribe)
        {
            tracing::warn!("subscribing to {}: {err}", self.subscribe.join(", "));
        }
    }

    fn on_message(&mut self, received: Received) {
        let Received {
            topic,
            payload,
            ack,
        } = received;
        if payload.len() > self.max_message_size {
            tracing::warn!(
                "control message on {topic} dropped: {} bytes, above the limit of {} bytes \
                 (--mqtt-max-message-size)",
                payload.len(),
                self.max_message_size
            );
            // Acknowledged, or the broker would deliver it again and again.
            self.connection.ack(ack);
            return;
        }
        let receipt = Receipt {
            token: ack,
            acks: self.acks_tx.clone(),
            wake: self.wake.clone(),
        };
        let message = Incoming {
            topic,
            payload,
            receipt,
        };
        if self.incoming.send(message).is_err() {
            // Nobody listens (the agent is stopping): not acknowledged, so
            // the broker keeps it for the next session.
            tracing::debug!("control message left for the next session");
        }
    }

    /// The broker will not take a message: it is dropped and counted.
    fn refused(&mut self, message: &Queued, why: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        if self
            .last_refusal
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.last_refusal = Some(now);
        tracing::warn!(
            "the MQTT broker refused a message on {} ({why}); {dropped} messages dropped so \
             far (check the broker's access rules and limits for this client)",
            message.topic
        );
    }

    /// The connection failed: what was not acknowledged goes back first.
    fn on_error(&mut self, failure: &Failure) {
        let circumstances = Circumstances {
            server: &self.server,
            protocol: self.protocol,
            handshake: !self.connected,
        };
        let description = errors::describe(failure, &circumstances);
        self.connected = false;
        self.connected_flag.store(false, Ordering::Relaxed);
        let mut replay: Vec<Queued> = std::mem::take(&mut self.unacked).into_values().collect();
        replay.extend(self.handed.drain(..));
        replay.sort_by_key(|message| message.seq);
        {
            let mut queue = self.queue.lock().expect("queue lock");
            for message in replay.into_iter().rev() {
                queue.push_front(message);
            }
        }
        self.count_unacked();
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        let warn_again = self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60));
        if warn_again {
            self.last_warning = Some(now);
            tracing::warn!("{description}; retrying (messages wait in the queue)");
        } else {
            tracing::debug!("{description} ({failure})");
        }
    }

    fn count_unacked(&self) {
        let count = self.unacked.len() + self.handed.len();
        self.unacked_count.store(count as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_propeller_and_mqtt_forms() {
        let plain = |host: &str, port| Endpoint {
            host: host.into(),
            port,
            tls: false,
        };
        assert_eq!(
            Endpoint::parse("mqtt://broker:1884").unwrap(),
            plain("broker", 1884)
        );
        assert_eq!(
            Endpoint::parse("tcp://localhost:1883").unwrap(),
            plain("localhost", 1883)
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1").unwrap(),
            plain("127.0.0.1", 1883)
        );
        assert_eq!(
            Endpoint::parse("mqtt://[::1]:1999").unwrap(),
            plain("::1", 1999)
        );
        let tls = Endpoint::parse("mqtts://broker").unwrap();
        assert!(tls.tls && tls.port == 8883);
        for bad in ["http://x", "mqtt://:1883", "mqtt://host:port"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_sizes_take_bytes_kib_and_mib_within_mqtt_limits() {
        assert_eq!(parse_message_size("32MiB"), Ok(DEFAULT_MAX_MESSAGE_SIZE));
        assert_eq!(parse_message_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_message_size(" 512 KiB "), Ok(512 << 10));
        assert_eq!(parse_message_size("256MiB"), Ok(256 << 20));
        for (bad, expected) in [
            ("12", "out of range"),
            ("257MiB", "out of range"),
            ("1GiB", "unknown unit \"GiB\""),
            ("lots", "invalid size"),
            ("99999999999999999999MiB", "invalid size"),
            ("", "invalid size"),
        ] {
            let err = parse_message_size(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empty_client_id_is_an_error_not_a_panic() {
        let settings = MqttSettings {
            client_id: String::new(),
            ..test_settings()
        };
        let endpoint = Endpoint::parse(&settings.url).unwrap();
        let options = connect_options(&settings, &endpoint).unwrap();
        let err = Connection::new(options).err().unwrap();
        assert!(err.to_string().contains("--mqtt-client-id"), "{err}");
    }

    fn test_settings() -> MqttSettings {
        MqttSettings {
            url: "mqtt://x".into(),
            client_id: "c".into(),
            username: None,
            password: None,
            ca_file: None,
            domain_id: "d".into(),
            channel_id: "ch".into(),
            topic_style: TopicStyle::Propeller,
            queue_size: 1,
            protocol: Protocol::V311,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            subscribe: vec![],
            agent_metrics_path: PROPLET_METRICS_PATH,
            publish_task_metrics: true,
        }
    }

    /// Issue 10, item 15: beside a proplet, propmon's own message never
    /// goes to the proplet's series, and task metrics only when the
    /// proplet's own monitoring is off.
    #[test]
    fn beside_a_proplet_no_series_gets_two_sources() {
        let mut settings = test_settings();
        settings.beside_proplet(true);
        assert_eq!(
            settings.topic(settings.agent_metrics_path),
            "m/d/c/ch/control/propmon/metrics"
        );
        assert!(!settings.publish_task_metrics);
        settings.beside_proplet(false);
        assert!(settings.publish_task_metrics);
        assert_eq!(settings.agent_metrics_path, PROPMON_METRICS_PATH);
    }

    #[test]
    fn topics_follow_the_style() {
        let mut settings = test_settings();
        assert_eq!(
            settings.task_topic(),
            "m/d/c/ch/control/proplet/task_metrics"
        );
        settings.topic_style = TopicStyle::RustV1;
        assert_eq!(settings.task_topic(), "m/d/c/ch/metrics/proplet");
        assert_eq!(
            settings.topic("control/proplet/metrics"),
            "m/d/c/ch/control/proplet/metrics"
        );
    }
}
