//! rumqttc's connection errors in words a user understands, each saying
//! what to check. `Promised boundary crossed: 17487` means that the server
//! answered the CONNECT with something that is not MQTT, e.g. an HTTP
//! server; that is what the user is told.

use rumqttc::v5;

use super::client::{Failure, Protocol};

/// Where the failure happened, to say what it means.
pub struct Circumstances<'a> {
    /// `host:port`.
    pub server: &'a str,
    pub protocol: Protocol,
    /// `true` while connecting, before the broker accepted us: garbage then
    /// means that the server does not speak MQTT at all.
    pub handshake: bool,
}

/// One line: what went wrong and what to check.
pub fn describe(failure: &Failure, at: &Circumstances) -> String {
    let server = at.server;
    match classify(failure, at.handshake) {
        Trouble::BadCredentials => format!(
            "the MQTT broker at {server} refused the connection: bad user name or password, \
             or not authorized (check --mqtt-username/--mqtt-password)"
        ),
        Trouble::BadClientId => format!(
            "the MQTT broker at {server} refused the client id (choose another with \
             --mqtt-client-id)"
        ),
        Trouble::ProtocolRefused => match at.protocol {
            Protocol::V5 => format!(
                "the MQTT broker at {server} does not accept MQTT 5: pass --mqtt-protocol 3.1.1"
            ),
            Protocol::V311 => format!(
                "the MQTT broker at {server} does not accept MQTT 3.1.1: pass --mqtt-protocol 5"
            ),
        },
        Trouble::Refused(code) => {
            format!("the MQTT broker at {server} refused the connection ({code})")
        }
        Trouble::Unreachable(io) => format!("cannot connect to {server}: {io}"),
        Trouble::Tls(why) => format!(
            "TLS with {server} failed: {why} (is it a TLS port, and is --mqtt-ca-file the CA \
             that signed the broker's certificate?)"
        ),
        Trouble::NotMqtt => format!(
            "the server at {server} does not speak MQTT (is this the right port? a TLS port \
             needs mqtts://)"
        ),
        Trouble::ClosedInHandshake => match at.protocol {
            Protocol::V5 => format!(
                "the server at {server} closed the connection during the MQTT handshake (is \
                 this an MQTT port? a broker that only speaks MQTT 3.1.1 needs --mqtt-protocol \
                 3.1.1)"
            ),
            Protocol::V311 => format!(
                "the server at {server} closed the connection during the MQTT handshake (is \
                 this an MQTT port?)"
            ),
        },
        Trouble::NoAnswer => format!(
            "no MQTT answer from {server} within 5 s (is this an MQTT port? a TLS port needs \
             mqtts://)"
        ),
        Trouble::SessionTakenOver => format!(
            "the MQTT broker at {server} disconnected us: another client connected with the \
             same client id (give every agent its own --mqtt-client-id)"
        ),
        Trouble::Disconnected(why) => {
            format!("the MQTT broker at {server} disconnected us ({why})")
        }
        Trouble::Closed => format!("the MQTT broker at {server} closed the connection"),
        Trouble::Lost(why) => format!("lost the connection to the MQTT broker at {server}: {why}"),
        Trouble::Silent => {
            format!("the MQTT broker at {server} stopped answering (no reply to a ping or a write)")
        }
        Trouble::Unreadable(why) => {
            format!("the MQTT broker at {server} sent a packet propmon cannot read ({why})")
        }
        Trouble::Other(why) => format!("MQTT connection to {server}: {why}"),
    }
}

/// What a failure means, whichever the protocol.
#[derive(Debug, PartialEq)]
enum Trouble {
    BadCredentials,
    BadClientId,
    ProtocolRefused,
    Refused(String),
    Unreachable(String),
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(String),
    NotMqtt,
    ClosedInHandshake,
    NoAnswer,
    SessionTakenOver,
    Disconnected(String),
    Closed,
    Lost(String),
    Silent,
    Unreadable(String),
    Other(String),
}

fn classify(failure: &Failure, handshake: bool) -> Trouble {
    match failure {
        Failure::V311(err) => classify_v311(err, handshake),
        Failure::V5(err) => classify_v5(err, handshake),
    }
}

fn classify_v311(err: &rumqttc::ConnectionError, handshake: bool) -> Trouble {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E, StateError as S};
    match err {
        E::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => {
            Trouble::BadCredentials
        }
        E::ConnectionRefused(Code::BadClientId) => Trouble::BadClientId,
        E::ConnectionRefused(Code::RefusedProtocolVersion) => Trouble::ProtocolRefused,
        E::ConnectionRefused(code) => Trouble::Refused(format!("{code:?}")),
        E::Io(io) => Trouble::Unreachable(io.to_string()),
        #[cfg(feature = "tls")]
        E::Tls(err) => Trouble::Tls(err.to_string()),
        E::NotConnAck(_) => Trouble::NotMqtt,
        E::NetworkTimeout if handshake => Trouble::NoAnswer,
        E::NetworkTimeout | E::FlushTimeout => Trouble::Silent,
        E::MqttState(state) => match state {
            S::Deserialization(_) | S::WrongPacket | S::Unsolicited(_) if handshake => {
                Trouble::NotMqtt
            }
            S::ConnectionAborted if handshake => Trouble::ClosedInHandshake,
            S::ConnectionAborted => Trouble::Closed,
            S::Io(io) if handshake => Trouble::Unreachable(io.to_string()),
            S::Io(io) => Trouble::Lost(io.to_string()),
            S::AwaitPingResp => Trouble::Silent,
            other => Trouble::Unreadable(other.to_string()),
        },
        other => Trouble::Other(other.to_string()),
    }
}

fn classify_v5(err: &v5::ConnectionError, handshake: bool) -> Trouble {
    use v5::{
        ConnectionError as E, StateError as S,
        mqttbytes::v5::{ConnectReturnCode as Code, DisconnectReasonCode as Reason},
    };
    let refused = |code: &Code| match code {
        Code::BadUserNamePassword | Code::NotAuthorized => Trouble::BadCredentials,
        Code::ClientIdentifierNotValid | Code::BadClientId => Trouble::BadClientId,
        Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion => Trouble::ProtocolRefused,
        code => Trouble::Refused(format!("{code:?}")),
    };
    match err {
        E::ConnectionRefused(code) => refused(code),
        E::Io(io) => Trouble::Unreachable(io.to_string()),
        #[cfg(feature = "tls")]
        E::Tls(err) => Trouble::Tls(err.to_string()),
        E::NotConnAck(_) => Trouble::NotMqtt,
        E::Timeout(_) if handshake => Trouble::NoAnswer,
        E::Timeout(_) => Trouble::Silent,
        E::MqttState(state) => match state {
            S::ConnFail { reason } => refused(reason),
            S::ServerDisconnect {
                reason_code: Reason::SessionTakenOver,
                ..
            } => Trouble::SessionTakenOver,
            S::ServerDisconnect {
                reason_code,
                reason_string,
            } => Trouble::Disconnected(match reason_string {
                Some(why) => format!("{reason_code:?}: {why}"),
                None => format!("{reason_code:?}"),
            }),
            S::Deserialization(_) | S::WrongPacket | S::Unsolicited(_) if handshake => {
                Trouble::NotMqtt
            }
            S::ConnectionAborted if handshake => Trouble::ClosedInHandshake,
            S::ConnectionAborted => Trouble::Closed,
            S::Io(io) if handshake => Trouble::Unreachable(io.to_string()),
            S::Io(io) => Trouble::Lost(io.to_string()),
            S::AwaitPingResp => Trouble::Silent,
            other => Trouble::Unreadable(other.to_string()),
        },
        other => Trouble::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(failure: Failure, protocol: Protocol, handshake: bool) -> String {
        let at = Circumstances {
            server: "broker:1883",
            protocol,
            handshake,
        };
        describe(&failure, &at)
    }

    /// Issue 10, item 11: garbage in answer to CONNECT (an HTTP server)
    /// is "does not speak MQTT", never rumqttc's words.
    #[test]
    fn garbage_during_the_handshake_is_not_mqtt() {
        let boundary =
            || rumqttc::StateError::Deserialization(rumqttc::Error::BoundaryCrossed(17487));
        let text = line(
            Failure::V311(rumqttc::ConnectionError::MqttState(boundary())),
            Protocol::V311,
            true,
        );
        assert_eq!(
            text,
            "the server at broker:1883 does not speak MQTT (is this the right port? a TLS \
             port needs mqtts://)"
        );
        let v5_garbage = v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::MalformedPacket,
        ));
        assert!(line(Failure::V5(v5_garbage), Protocol::V5, true).contains("does not speak MQTT"));
        // The same error from a broker that accepted us is the broker's.
        let text = line(
            Failure::V311(rumqttc::ConnectionError::MqttState(boundary())),
            Protocol::V311,
            false,
        );
        assert!(text.contains("sent a packet propmon cannot read"), "{text}");
    }

    #[test]
    fn refusals_say_what_to_change() {
        use rumqttc::ConnectReturnCode as Code;
        let refused = |code| Failure::V311(rumqttc::ConnectionError::ConnectionRefused(code));
        assert!(
            line(refused(Code::BadUserNamePassword), Protocol::V311, true)
                .contains("bad user name or password")
        );
        assert!(
            line(refused(Code::BadClientId), Protocol::V311, true).contains("--mqtt-client-id")
        );
        let v5_refused = Failure::V5(v5::ConnectionError::ConnectionRefused(
            v5::mqttbytes::v5::ConnectReturnCode::UnsupportedProtocolVersion,
        ));
        assert!(line(v5_refused, Protocol::V5, true).ends_with("pass --mqtt-protocol 3.1.1"));
        let taken = Failure::V5(v5::ConnectionError::MqttState(
            v5::StateError::ServerDisconnect {
                reason_code: v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver,
                reason_string: None,
            },
        ));
        assert!(line(taken, Protocol::V5, false).contains("same client id"));
    }

    #[test]
    fn network_troubles_name_the_server() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = line(
            Failure::V5(v5::ConnectionError::Io(refused)),
            Protocol::V5,
            true,
        );
        assert!(
            text.starts_with("cannot connect to broker:1883: "),
            "{text}"
        );
        let closed = Failure::V5(v5::ConnectionError::MqttState(
            v5::StateError::ConnectionAborted,
        ));
        assert!(line(closed, Protocol::V5, true).contains("--mqtt-protocol 3.1.1"));
        let timeout = Failure::V311(rumqttc::ConnectionError::NetworkTimeout);
        assert!(line(timeout, Protocol::V311, true).starts_with("no MQTT answer from broker:1883"));
    }
}
