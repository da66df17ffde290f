//! MQTT export: per-task and proplet-level messages published at QoS 1 on
//! Propeller's topics, and (Propeller mode) the Manager's control messages
//! received.
//!
//! Nothing is lost across broker outages: messages wait in a bounded queue
//! (oldest dropped and counted when full), and a message leaves the queue
//! for good only when the broker acknowledged it. Whatever was sent but not
//! acknowledged when the connection dropped goes back to the front of the
//! queue, in order, and is sent again after reconnecting (a consumer may
//! then see a QoS 1 duplicate, never a gap). The sampling loop only ever
//! pushes into the queue; a background task does the network.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing as MqttOutgoing, Packet,
    QoS,
};
use tokio::sync::{Notify, mpsc};

use super::{Outgoing, Sink};

/// Default queue size: 10 minutes of 100 tasks at 1 s.
pub const DEFAULT_QUEUE_SIZE: usize = 60_000;
/// Messages handed to the MQTT client and not yet acknowledged, at most.
const IN_FLIGHT: usize = 100;
/// Largest control message accepted (a start message carries the module).
const MAX_INCOMING_BYTES: usize = 32 << 20;
/// Retries stay frequent: a broker that comes back is used within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    /// Control topics to subscribe to (Propeller mode).
    pub subscribe: Vec<String>,
}

impl MqttSettings {
    /// `m/{domain}/c/{channel}/{path}`.
    pub fn topic(&self, path: &str) -> String {
        format!("m/{}/c/{}/{path}", self.domain_id, self.channel_id)
    }

    fn task_topic(&self) -> String {
        self.topic(match self.topic_style {
            TopicStyle::Propeller => "control/proplet/task_metrics",
            TopicStyle::RustV1 => "metrics/proplet",
        })
    }
}

/// A message received on a subscribed topic.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
}

struct Queued {
    /// Order of arrival, to put unacknowledged messages back in order.
    seq: u64,
    topic: String,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    next_seq: u64,
}

/// The sink half: queues messages for the background publisher.
pub struct MqttSink {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    dropped: Arc<AtomicU64>,
    capacity: usize,
    task_topic: String,
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
) -> anyhow::Result<(MqttSink, Flusher, mpsc::Receiver<Incoming>)> {
    let options = mqtt_options(&settings)?;
    let (client, eventloop) = AsyncClient::new(options, IN_FLIGHT * 2);
    let queue = Arc::new(Mutex::new(Queue::default()));
    let wake = Arc::new(Notify::new());
    let unacked = Arc::new(AtomicU64::new(0));
    let (incoming_tx, incoming_rx) = mpsc::channel(1024);
    let publisher = Publisher {
        client,
        eventloop,
        queue: queue.clone(),
        wake: wake.clone(),
        unacked_count: unacked.clone(),
        handed: VecDeque::new(),
        unacked: BTreeMap::new(),
        connected: false,
        backoff: Duration::from_secs(1),
        subscribe: settings.subscribe.clone(),
        incoming: incoming_tx,
        url: settings.url.clone(),
        failing_since: None,
        last_warning: None,
    };
    tokio::spawn(publisher.run());
    let sink = MqttSink {
        queue: queue.clone(),
        wake,
        dropped: Arc::new(AtomicU64::new(0)),
        capacity: settings.queue_size.max(1),
        task_topic: settings.task_topic(),
        proplet_topic: settings.topic("control/proplet/metrics"),
        last_drop_log: None,
    };
    Ok((sink, Flusher { queue, unacked }, incoming_rx))
}

fn mqtt_options(settings: &MqttSettings) -> anyhow::Result<MqttOptions> {
    let endpoint = Endpoint::parse(&settings.url)?;
    let mut options = MqttOptions::new(&settings.client_id, &endpoint.host, endpoint.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        // The session lives in our queue, not the broker: a restarted
        // broker forgets sessions, and we replay what it never acknowledged.
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_BYTES, MAX_INCOMING_BYTES)
        .set_inflight(IN_FLIGHT as u16);
    if let Some(username) = &settings.username {
        options.set_credentials(username, settings.password.clone().unwrap_or_default());
    }
    if endpoint.tls {
        set_tls(&mut options, settings.ca_file.as_deref())?;
    }
    Ok(options)
}

#[cfg(feature = "tls")]
fn set_tls(options: &mut MqttOptions, ca_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(ca_file) = ca_file else {
        bail!("mqtts:// needs the broker's CA certificate: pass --mqtt-ca-file FILE (PEM)");
    };
    let ca = std::fs::read(ca_file)
        .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
    options.set_transport(rumqttc::Transport::tls(ca, None, None));
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn set_tls(_: &mut MqttOptions, _: Option<&std::path::Path>) -> anyhow::Result<()> {
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
}

impl MqttSink {
    fn push(&mut self, topic: String, payload: Vec<u8>) {
        let mut dropped_now = false;
        {
            let mut queue = self.queue.lock().expect("queue lock");
            if queue.waiting.len() >= self.capacity {
                queue.waiting.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
                dropped_now = true;
            }
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.waiting.push_back(Queued {
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
        let (topic, payload) = match message {
            Outgoing::Task { export: false, .. } => return,
            Outgoing::Task { message, .. } => {
                (self.task_topic.clone(), serde_json::to_vec(message))
            }
            Outgoing::Proplet(message) => (self.proplet_topic.clone(), serde_json::to_vec(message)),
        };
        self.push(topic, payload.expect("messages always serialise"));
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The background task that owns the connection.
struct Publisher {
    client: AsyncClient,
    eventloop: EventLoop,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    unacked_count: Arc<AtomicU64>,
    /// Handed to the client, waiting for their packet id, in order.
    handed: VecDeque<Queued>,
    /// Sent, waiting for PUBACK, by packet id.
    unacked: BTreeMap<u16, Queued>,
    connected: bool,
    backoff: Duration,
    subscribe: Vec<String>,
    incoming: mpsc::Sender<Incoming>,
    url: String,
    failing_since: Option<Instant>,
    /// When the outage was last reported (once a minute at most).
    last_warning: Option<Instant>,
}

impl Publisher {
    async fn run(mut self) {
        loop {
            if self.connected {
                self.hand_over();
            }
            tokio::select! {
                event = self.eventloop.poll() => match event {
                    Ok(event) => self.on_event(event),
                    Err(err) => {
                        self.on_error(&err);
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                },
                _ = self.wake.notified(), if self.connected => {}
            }
        }
    }

    /// Moves queued messages to the client, up to the in-flight window.
    fn hand_over(&mut self) {
        while self.handed.len() + self.unacked.len() < IN_FLIGHT {
            let Some(next) = self.queue.lock().expect("queue lock").waiting.pop_front() else {
                break;
            };
            let request = self.client.try_publish(
                next.topic.clone(),
                QoS::AtLeastOnce,
                false,
                next.payload.clone(),
            );
            if request.is_err() {
                self.queue
                    .lock()
                    .expect("queue lock")
                    .waiting
                    .push_front(next);
                break;
            }
            self.handed.push_back(next);
        }
        self.count_unacked();
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.connected = true;
                self.backoff = Duration::from_secs(1);
                self.last_warning = None;
                match self.failing_since.take() {
                    Some(since) => tracing::info!(
                        "MQTT broker {} reachable again after {:.0?}; sending what waited",
                        self.url,
                        since.elapsed()
                    ),
                    None => tracing::info!("connected to the MQTT broker {}", self.url),
                }
                for topic in &self.subscribe {
                    if let Err(err) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::warn!("subscribing to {topic}: {err}");
                    }
                }
            }
            Event::Outgoing(MqttOutgoing::Publish(pkid)) => {
                if let Some(message) = self.handed.pop_front() {
                    self.unacked.insert(pkid, message);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.unacked.remove(&ack.pkid);
                self.count_unacked();
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let message = Incoming {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                };
                if self.incoming.try_send(message).is_err() {
                    tracing::warn!("control messages arrive faster than handled: one skipped");
                }
            }
            _ => {}
        }
    }

    /// The connection failed: what was not acknowledged goes back first.
    fn on_error(&mut self, err: &ConnectionError) {
        self.connected = false;
        let mut replay: Vec<Queued> = std::mem::take(&mut self.unacked).into_values().collect();
        replay.extend(self.handed.drain(..));
        replay.sort_by_key(|message| message.seq);
        {
            let mut queue = self.queue.lock().expect("queue lock");
            for message in replay.into_iter().rev() {
                queue.waiting.push_front(message);
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
            tracing::warn!(
                "MQTT broker {}: {}; retrying (messages wait in the queue)",
                self.url,
                describe(err)
            );
        } else {
            tracing::debug!("MQTT broker {}: {}", self.url, describe(err));
        }
    }

    fn count_unacked(&self) {
        let count = self.unacked.len() + self.handed.len();
        self.unacked_count.store(count as u64, Ordering::Relaxed);
    }
}

fn describe(err: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as Code;
    match err {
        ConnectionError::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => {
            "connection refused: bad user name or password \
             (check --mqtt-username/--mqtt-password)"
                .to_owned()
        }
        ConnectionError::ConnectionRefused(code) => format!("connection refused ({code:?})"),
        ConnectionError::Io(io) => format!("cannot connect: {io}"),
        other => other.to_string(),
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
    fn topics_follow_the_style() {
        let mut settings = MqttSettings {
            url: "mqtt://x".into(),
            client_id: "c".into(),
            username: None,
            password: None,
            ca_file: None,
            domain_id: "d".into(),
            channel_id: "ch".into(),
            topic_style: TopicStyle::Propeller,
            queue_size: 1,
            subscribe: vec![],
        };
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
