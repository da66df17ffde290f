//! The Manager's control messages, as Propeller sends them
//! (`../shared/reference/propeller-interop.md`): a start registers a task,
//! a stop ends it. Both the snake_case and the older camelCase spellings
//! are read. A message for another proplet, not broadcast, is not ours.

use serde::Deserialize;
use serde_json::Value;

use crate::profiles::{MonitoringProfile, Preset, parse_profile_value};

/// Topic paths (after `m/{domain}/c/{channel}/`).
pub const START_PATH: &str = "control/manager/start";
pub const STOP_PATH: &str = "control/manager/stop";

/// What the agent must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    Start(StartTask),
    Stop { task_id: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct StartTask {
    pub task_id: String,
    pub name: Option<String>,
    pub daemon: bool,
    /// The message's profile, or Propeller's default for the task.
    pub profile: MonitoringProfile,
}

#[derive(Deserialize)]
struct RawStart {
    id: String,
    #[serde(default, alias = "functionName")]
    name: Option<String>,
    #[serde(default)]
    daemon: bool,
    #[serde(default, alias = "propletId")]
    proplet_id: Option<String>,
    #[serde(default)]
    broadcast: bool,
    #[serde(default, alias = "monitoringProfile")]
    monitoring_profile: Option<Value>,
}

#[derive(Deserialize)]
struct RawStop {
    id: String,
    #[serde(default, alias = "propletId")]
    proplet_id: Option<String>,
    #[serde(default)]
    broadcast: bool,
}

/// Why a control message was not acted upon.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Skipped {
    #[error("addressed to proplet {0:?}, not to us")]
    NotOurs(String),
    #[error("invalid {kind} message: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// Parses a message received on `path` for proplet `ours`.
pub fn parse(path: &str, payload: &[u8], ours: &str) -> Result<Control, Skipped> {
    if path.ends_with(START_PATH) {
        parse_start(payload, ours).map(Control::Start)
    } else if path.ends_with(STOP_PATH) {
        let raw: RawStop = from_json("stop", payload)?;
        addressed_to_us(raw.proplet_id.as_deref(), raw.broadcast, ours)?;
        Ok(Control::Stop {
            task_id: non_empty("stop", raw.id)?,
        })
    } else {
        Err(Skipped::Invalid {
            kind: "control",
            reason: format!("unexpected topic {path}"),
        })
    }
}

fn parse_start(payload: &[u8], ours: &str) -> Result<StartTask, Skipped> {
    let raw: RawStart = from_json("start", payload)?;
    addressed_to_us(raw.proplet_id.as_deref(), raw.broadcast, ours)?;
    let profile = match raw.monitoring_profile {
        None | Some(Value::Null) if raw.daemon => Preset::LongRunningDaemon.profile(),
        None | Some(Value::Null) => Preset::Standard.profile(),
        Some(value) => parse_profile_value(&value).map_err(|err| Skipped::Invalid {
            kind: "start",
            reason: err.to_string(),
        })?,
    };
    Ok(StartTask {
        task_id: non_empty("start", raw.id)?,
        name: raw.name,
        daemon: raw.daemon,
        profile,
    })
}

fn from_json<'a, T: Deserialize<'a>>(kind: &'static str, payload: &'a [u8]) -> Result<T, Skipped> {
    serde_json::from_slice(payload).map_err(|err| Skipped::Invalid {
        kind,
        reason: err.to_string(),
    })
}

fn addressed_to_us(target: Option<&str>, broadcast: bool, ours: &str) -> Result<(), Skipped> {
    match target {
        _ if broadcast => Ok(()),
        Some(target) if target == ours => Ok(()),
        Some(target) => Err(Skipped::NotOurs(target.to_owned())),
        None => Err(Skipped::NotOurs(String::new())),
    }
}

fn non_empty(kind: &'static str, id: String) -> Result<String, Skipped> {
    if id.trim().is_empty() {
        return Err(Skipped::Invalid {
            kind,
            reason: "empty task id".to_owned(),
        });
    }
    Ok(id.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "m/d/c/ch/control/manager/start";
    const STOP: &str = "m/d/c/ch/control/manager/stop";

    #[test]
    fn starts_in_both_spellings() {
        let snake = r#"{"id":"t1","name":"add","file":"AGFzbQ==","inputs":[1,2],"daemon":false,
            "proplet_id":"p1","monitoring_profile":{"interval":5000000000,"collect_disk_io":false}}"#;
        let Control::Start(start) = parse(START, snake.as_bytes(), "p1").unwrap() else {
            panic!("not a start")
        };
        assert_eq!(start.task_id, "t1");
        assert_eq!(start.profile.interval.as_secs(), 5);
        assert!(!start.profile.collect_disk_io && start.profile.collect_cpu);
        let camel = r#"{"id":"t2","functionName":"mul","propletId":"p1","daemon":true,
            "monitoringProfile":{"interval":10}}"#;
        let Control::Start(start) = parse(START, camel.as_bytes(), "p1").unwrap() else {
            panic!("not a start")
        };
        assert_eq!(start.name.as_deref(), Some("mul"));
        assert!(start.daemon);
        assert_eq!(start.profile.interval.as_secs(), 10);
    }

    #[test]
    fn default_profiles_follow_the_daemon_flag() {
        let parse_profile = |json: &str| match parse(START, json.as_bytes(), "p") {
            Ok(Control::Start(start)) => start.profile,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parse_profile(r#"{"id":"a","proplet_id":"p","daemon":true}"#),
            Preset::LongRunningDaemon.profile()
        );
        assert_eq!(
            parse_profile(r#"{"id":"a","proplet_id":"p","monitoring_profile":null}"#),
            Preset::Standard.profile()
        );
    }

    #[test]
    fn other_proplets_and_broadcasts() {
        let other = r#"{"id":"t","proplet_id":"p2"}"#;
        assert_eq!(
            parse(START, other.as_bytes(), "p1"),
            Err(Skipped::NotOurs("p2".into()))
        );
        let broadcast = r#"{"id":"t","proplet_id":"p2","broadcast":true}"#;
        assert!(parse(START, broadcast.as_bytes(), "p1").is_ok());
        let stop = r#"{"id":"t","proplet_id":"p1","broadcast":false}"#;
        assert_eq!(
            parse(STOP, stop.as_bytes(), "p1"),
            Ok(Control::Stop {
                task_id: "t".into()
            })
        );
    }

    #[test]
    fn bad_messages_say_why() {
        for (payload, expected) in [
            (r#"{"id":"t","proplet_id":"p""#.to_owned(), "EOF"),
            (r#"{"id":5,"proplet_id":"p"}"#.to_owned(), "invalid type"),
            (
                r#"{"id":"t","proplet_id":"p","daemon":"yes"}"#.to_owned(),
                "invalid type",
            ),
            (r#"{"id":"","proplet_id":"p"}"#.to_owned(), "empty task id"),
            (
                r#"{"id":"t","proplet_id":"p","monitoring_profile":{"interval":0}}"#.to_owned(),
                "field \"interval\"",
            ),
            (
                r#"{"id":"t","proplet_id":"p","monitoring_profile":"turbo"}"#.to_owned(),
                "unknown profile",
            ),
            (
                r#"{"id":"t","proplet_id":"p","monitoring_profile":[1]}"#.to_owned(),
                "must be a JSON object",
            ),
            ("x".repeat(1 << 20), "expected value"),
        ] {
            let err = parse(START, payload.as_bytes(), "p")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.len() < 300, "one short line: {err}");
        }
    }
}
