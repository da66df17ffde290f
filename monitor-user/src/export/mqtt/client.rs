//! One connection to the broker, in MQTT 5 or 3.1.1, behind one interface:
//! rumqttc has a client per protocol version, each with its own packets and
//! errors.
//!
//! The session is persistent (a stable client id, no clean session; MQTT 5:
//! a session expiry) and incoming messages are acknowledged by hand, once
//! the agent acted on them: the broker keeps the Manager's start and stop
//! messages while the agent is away or restarting, and delivers again any
//! the agent received but never acted on.
//!
//! Outgoing messages are sent again by the publisher's own queue, never by
//! rumqttc. After a connection error, rumqttc's `EventLoop::clean` moves
//! every unacknowledged PUBLISH, and whatever still waits in its request
//! channel, to `EventLoop::pending`; `poll` sends all of it again when the
//! broker says the session is present, which a persistent session makes
//! the rule. With the queue replaying the same messages, each one in flight
//! at an outage would go out twice more, and the MQTT 5 client resends in
//! packet id order, not in the order of sending. So `pending` is emptied
//! after every error and the queue alone replays, in order. For the broker
//! a QoS 1 message sent again under a new packet id is just a duplicate:
//! it keeps no state for QoS 1 messages it has acknowledged.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

/// Which MQTT version to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum Protocol {
    /// MQTT 5: the broker is told the largest message propmon accepts.
    #[value(name = "5")]
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1, for brokers that refuse 5.
    #[value(name = "3.1.1")]
    #[serde(rename = "3.1.1")]
    V311,
}

/// How long the broker keeps the session of an agent that went away (MQTT
/// 5; a 3.1.1 session never expires): a day covers restarts and outages
/// without keeping the sessions of removed agents forever.
pub const SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Control messages the broker may send before we acknowledge (MQTT 5).
const RECEIVE_MAXIMUM: u16 = 64;
/// The largest packet MQTT can frame (its remaining length); a 3.1.1 client
/// must be able to read whatever the broker sends, or lose the connection.
const MQTT_MAX_REMAINING_LENGTH: usize = 268_435_455;

/// What a connection needs to know.
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub transport: rumqttc::Transport,
    pub protocol: Protocol,
    /// Largest control message accepted, bytes.
    pub max_message_size: usize,
    /// Outgoing messages in flight at most.
    pub in_flight: u16,
}

/// What happened on the connection.
#[derive(Debug, PartialEq)]
pub enum Event {
    Connected {
        session_present: bool,
        /// The largest packet the broker accepts from us, if it says.
        max_packet_size: Option<usize>,
    },
    /// A message handed to `publish` went out with this packet id.
    Sent(u16),
    /// The broker acknowledged a message; `refused` says why it would not
    /// take it (MQTT 5 reason codes).
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    /// The answer to `subscribe`: per topic, why it was refused, if it was.
    Subscribed(Vec<Option<String>>),
    Message(Received),
    Other,
}

/// A message from a subscribed topic, to be acknowledged once acted on.
#[derive(Debug, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub ack: AckToken,
}

/// Identifies a received message for its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckToken {
    /// Which connection it came on: a later one has new packet ids, and the
    /// broker delivers again what was not acknowledged on the old one.
    generation: u64,
    pkid: u16,
    qos: u8,
}

/// Why the connection failed.
#[derive(Debug)]
pub enum Failure {
    V311(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::V311(err) => err.fmt(f),
            Failure::V5(err) => err.fmt(f),
        }
    }
}

pub struct Connection {
    inner: Inner,
    /// Incremented at each CONNACK.
    generation: u64,
}

enum Inner {
    V311 {
        client: rumqttc::AsyncClient,
        events: Box<rumqttc::EventLoop>,
    },
    V5 {
        client: v5::AsyncClient,
        events: Box<v5::EventLoop>,
    },
}

impl Connection {
    pub fn new(options: ConnectOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !options.client_id.is_empty(),
            "the MQTT client id is empty: the broker keeps the agent's session under it \
             (set --mqtt-client-id, or leave it to its default)"
        );
        // Room for every message in flight, the subscription and the acks.
        let capacity = usize::from(options.in_flight) * 2 + usize::from(RECEIVE_MAXIMUM);
        let inner = match options.protocol {
            Protocol::V311 => {
                let (client, events) = rumqttc::AsyncClient::new(v311_options(options), capacity);
                Inner::V311 {
                    client,
                    events: Box::new(events),
                }
            }
            Protocol::V5 => {
                let (client, events) = v5::AsyncClient::new(v5_options(options), capacity);
                Inner::V5 {
                    client,
                    events: Box::new(events),
                }
            }
        };
        Ok(Connection {
            inner,
            generation: 0,
        })
    }

    /// The next event; connects (again) first when needed.
    pub async fn poll(&mut self) -> Result<Event, Failure> {
        let generation = self.generation;
        let result = match &mut self.inner {
            Inner::V311 { events, .. } => match events.poll().await {
                Ok(event) => Ok(from_v311(event, generation)),
                Err(err) => Err(Failure::V311(err)),
            },
            Inner::V5 { events, .. } => match events.poll().await {
                Ok(event) => Ok(from_v5(event, generation)),
                Err(err) => Err(Failure::V5(err)),
            },
        };
        match &result {
            // Messages of the new connection come after its CONNACK.
            Ok(Event::Connected { .. }) => self.generation += 1,
            Err(_) => self.forget_unsent(),
            Ok(_) => {}
        }
        result
    }

    /// Drops what rumqttc would send again on its own (see the module doc),
    /// and the events of the connection that failed. Also the publish that
    /// waits for its packet id to be free (`collision`), which `clean`
    /// keeps: it waits for the ack of a resend that no longer happens, and
    /// would hold every later message back.
    fn forget_unsent(&mut self) {
        match &mut self.inner {
            Inner::V311 { events, .. } => {
                events.pending.clear();
                events.state.events.clear();
                events.state.collision = None;
            }
            Inner::V5 { events, .. } => {
                events.pending.clear();
                events.state.events.clear();
                events.state.collision = None;
            }
        }
    }

    /// Hands a message to the client (QoS 1); `false` if its channel is full.
    pub fn publish(&self, topic: &str, payload: &Bytes) -> bool {
        match &self.inner {
            // rumqttc's 3.1.1 client takes the payload as a Vec: a copy.
            Inner::V311 { client, .. } => client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
                .is_ok(),
            Inner::V5 { client, .. } => client
                .try_publish(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .is_ok(),
        }
    }

    /// Subscribes to every topic at QoS 1, in one request.
    pub fn subscribe(&self, topics: &[String]) -> Result<(), String> {
        match &self.inner {
            Inner::V311 { client, .. } => client
                .try_subscribe_many(topics.iter().map(|topic| {
                    rumqttc::SubscribeFilter::new(topic.clone(), rumqttc::QoS::AtLeastOnce)
                }))
                .map_err(|err| err.to_string()),
            Inner::V5 { client, .. } => client
                .try_subscribe_many(topics.iter().map(|topic| {
                    let mut filter = v5::mqttbytes::v5::Filter::new(
                        topic.clone(),
                        v5::mqttbytes::QoS::AtLeastOnce,
                    );
                    // A retained start must not be delivered again at each
                    // reconnection, only when the subscription is new.
                    filter.retain_forward_rule =
                        v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|err| err.to_string()),
        }
    }

    /// Acknowledges a received message, if it came on this connection.
    pub fn ack(&self, token: AckToken) {
        if token.generation != self.generation || token.qos == 0 {
            return;
        }
        let sent = match &self.inner {
            Inner::V311 { client, .. } => {
                let mut publish = rumqttc::Publish::new("", qos_v311(token.qos), Vec::new());
                publish.pkid = token.pkid;
                client.try_ack(&publish).is_ok()
            }
            Inner::V5 { client, .. } => {
                let mut publish =
                    v5::mqttbytes::v5::Publish::new("", qos_v5(token.qos), Vec::new(), None);
                publish.pkid = token.pkid;
                client.try_ack(&publish).is_ok()
            }
        };
        if !sent {
            tracing::debug!(
                "acknowledgement of packet {} not sent: the broker will deliver it again",
                token.pkid
            );
        }
    }
}

fn v311_options(options: ConnectOptions) -> rumqttc::MqttOptions {
    let mut mqtt = rumqttc::MqttOptions::new(&options.client_id, &options.host, options.port);
    mqtt.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_manual_acks(true)
        // A 3.1.1 broker cannot be told a limit: whatever it sends must be
        // read, or rumqttc fails the connection and the broker sends it
        // again on the next one. The publisher drops what is too large.
        .set_max_packet_size(MQTT_MAX_REMAINING_LENGTH, MQTT_MAX_REMAINING_LENGTH)
        .set_inflight(options.in_flight)
        .set_transport(options.transport);
    if let Some((username, password)) = options.credentials {
        mqtt.set_credentials(username, password);
    }
    mqtt
}

fn v5_options(options: ConnectOptions) -> v5::MqttOptions {
    let mut mqtt = v5::MqttOptions::new(&options.client_id, &options.host, options.port);
    let session_expiry = SESSION_EXPIRY.as_secs() as u32;
    mqtt.set_keep_alive(KEEP_ALIVE)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(session_expiry))
        .set_manual_acks(true)
        // The CONNECT's Maximum Packet Size: the broker must not send us a
        // larger packet (it drops it for us, MQTT 5 section 3.1.2.11.4), so
        // no message can make rumqttc fail the connection.
        .set_max_packet_size(Some(options.max_message_size as u32))
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_outgoing_inflight_upper_limit(options.in_flight)
        .set_transport(options.transport);
    if let Some((username, password)) = options.credentials {
        mqtt.set_credentials(username, password);
    }
    mqtt
}

fn qos_v311(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos_v5(qos: u8) -> v5::mqttbytes::QoS {
    match qos {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn from_v311(event: rumqttc::Event, generation: u64) -> Event {
    use rumqttc::{Event as E, Outgoing as O, Packet as P, SubscribeReasonCode as Code};
    match event {
        E::Incoming(P::ConnAck(ack)) => Event::Connected {
            session_present: ack.session_present,
            max_packet_size: None,
        },
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Incoming(P::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            refused: None,
        },
        E::Incoming(P::SubAck(ack)) => Event::Subscribed(
            ack.return_codes
                .iter()
                .map(|code| match code {
                    Code::Success(_) => None,
                    Code::Failure => Some("Failure".to_owned()),
                })
                .collect(),
        ),
        E::Incoming(P::Publish(publish)) => Event::Message(Received {
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            ack: AckToken {
                generation,
                pkid: publish.pkid,
                qos: publish.qos as u8,
            },
        }),
        _ => Event::Other,
    }
}

fn from_v5(event: v5::Event, generation: u64) -> Event {
    use rumqttc::Outgoing as O;
    use v5::{
        Event as E,
        mqttbytes::v5::{Packet as P, PubAckReason, SubscribeReasonCode as Code},
    };
    match event {
        E::Incoming(P::ConnAck(ack)) => Event::Connected {
            session_present: ack.session_present,
            max_packet_size: ack
                .properties
                .and_then(|properties| properties.max_packet_size)
                .map(|size| size as usize),
        },
        E::Outgoing(O::Publish(pkid)) => Event::Sent(pkid),
        E::Incoming(P::PubAck(ack)) => Event::Acked {
            pkid: ack.pkid,
            refused: match ack.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                reason => Some(format!("{reason:?}")),
            },
        },
        E::Incoming(P::SubAck(ack)) => Event::Subscribed(
            ack.return_codes
                .iter()
                .map(|code| match code {
                    Code::Success(_) => None,
                    refused => Some(format!("{refused:?}")),
                })
                .collect(),
        ),
        E::Incoming(P::Publish(publish)) => Event::Message(Received {
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload.to_vec(),
            ack: AckToken {
                generation,
                pkid: publish.pkid,
                qos: publish.qos as u8,
            },
        }),
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(protocol: Protocol) -> Connection {
        Connection::new(ConnectOptions {
            host: "localhost".into(),
            port: 1883,
            client_id: "propmon-test".into(),
            credentials: None,
            transport: rumqttc::Transport::tcp(),
            protocol,
            max_message_size: 1 << 20,
            in_flight: 10,
        })
        .unwrap()
    }

    /// After a failure rumqttc holds nothing it would send on its own: the
    /// publisher's queue is the only source of retransmission.
    #[test]
    fn a_failure_leaves_nothing_for_rumqttc_to_resend() {
        let mut v311 = connection(Protocol::V311);
        if let Inner::V311 { events, .. } = &mut v311.inner {
            let publish = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, vec![1]);
            events
                .pending
                .push_back(rumqttc::Request::Publish(publish.clone()));
            events.state.collision = Some(publish);
            let outgoing = rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(1));
            events.state.events.push_back(outgoing);
        }
        v311.forget_unsent();
        let Inner::V311 { events, .. } = &v311.inner else {
            unreachable!()
        };
        assert!(events.pending.is_empty() && events.state.events.is_empty());
        assert!(events.state.collision.is_none());

        let mut v5 = connection(Protocol::V5);
        if let Inner::V5 { events, .. } = &mut v5.inner {
            let qos = v5::mqttbytes::QoS::AtLeastOnce;
            let publish = v5::mqttbytes::v5::Publish::new("t", qos, vec![1], None);
            events
                .pending
                .push_back(v5::Request::Publish(publish.clone()));
            events.state.collision = Some(publish);
        }
        v5.forget_unsent();
        let Inner::V5 { events, .. } = &v5.inner else {
            unreachable!()
        };
        assert!(events.pending.is_empty() && events.state.collision.is_none());
    }
}
