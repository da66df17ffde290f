//! The Manager's control messages, as Propeller sends them
//! (`../shared/reference/propeller-interop.md`): a start registers a task,
//! a stop ends it. Both the snake_case and the older camelCase spellings
//! are read. A message for another proplet, not broadcast, is not ours.
//!
//! Everything in a message is untrusted: task ids are checked as they
//! enter, text quoted in errors is escaped and truncated, and a profile's
//! interval is raised to [`MIN_MANAGER_INTERVAL`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::{
    input::{check_task_id, untrusted, untrusted_up_to},
    profiles::{MonitoringProfile, Preset, ProfileNote, parse_profile_value},
};

/// Topic paths (after `m/{domain}/c/{channel}/`).
pub const START_PATH: &str = "control/manager/start";
pub const STOP_PATH: &str = "control/manager/stop";
/// Shortest interval of a task the Manager starts: thousands of tasks at
/// 10 ms would take the agent's whole CPU. Operators' own tasks may go
/// down to 10 ms.
pub const MIN_MANAGER_INTERVAL: Duration = Duration::from_millis(100);
/// Characters of a parser's error message kept in a log line: enough for
/// the reason and position, not for a whole quoted payload.
const REASON_CHARS: usize = 160;

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
    /// What was ignored or adjusted in the profile, to log with the task id.
    pub notes: Vec<ProfileNote>,
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
    #[error("addressed to proplet \"{}\", not to us", untrusted(.0))]
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
            task_id: task_id("stop", &raw.id)?,
        })
    } else {
        Err(Skipped::Invalid {
            kind: "control",
            reason: format!("unexpected topic {}", untrusted(path)),
        })
    }
}

fn parse_start(payload: &[u8], ours: &str) -> Result<StartTask, Skipped> {
    let raw: RawStart = from_json("start", payload)?;
    addressed_to_us(raw.proplet_id.as_deref(), raw.broadcast, ours)?;
    let task_id = task_id("start", &raw.id)?;
    let (mut profile, mut notes) = match raw.monitoring_profile {
        None | Some(Value::Null) if raw.daemon => (Preset::LongRunningDaemon.profile(), vec![]),
        None | Some(Value::Null) => (Preset::Standard.profile(), vec![]),
        Some(value) => {
            let parsed = parse_profile_value(&value).map_err(|err| invalid("start", &err))?;
            (parsed.profile, parsed.notes)
        }
    };
    if profile.interval < MIN_MANAGER_INTERVAL {
        notes.push(ProfileNote::IntervalRaised {
            asked: profile.interval,
            floor: MIN_MANAGER_INTERVAL,
        });
        profile.interval = MIN_MANAGER_INTERVAL;
    }
    Ok(StartTask {
        task_id,
        name: raw.name,
        daemon: raw.daemon,
        profile,
        notes,
    })
}

fn from_json<'a, T: Deserialize<'a>>(kind: &'static str, payload: &'a [u8]) -> Result<T, Skipped> {
    serde_json::from_slice(payload).map_err(|err| invalid(kind, &err))
}

/// Parsers quote the input in their errors (`invalid type: string "..."`).
fn invalid(kind: &'static str, err: &dyn std::fmt::Display) -> Skipped {
    Skipped::Invalid {
        kind,
        reason: untrusted_up_to(&err.to_string(), REASON_CHARS).to_string(),
    }
}

fn addressed_to_us(target: Option<&str>, broadcast: bool, ours: &str) -> Result<(), Skipped> {
    match target {
        _ if broadcast => Ok(()),
        Some(target) if target == ours => Ok(()),
        Some(target) => Err(Skipped::NotOurs(target.to_owned())),
        None => Err(Skipped::NotOurs(String::new())),
    }
}

fn task_id(kind: &'static str, id: &str) -> Result<String, Skipped> {
    match check_task_id("task id", id) {
        Ok(id) => Ok(id.to_owned()),
        // Already escaped and short: escaping it again would double the `\`.
        Err(err) => Err(Skipped::Invalid {
            kind,
            reason: err.to_string(),
        }),
    }
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
            (
                r#"{"id":"","proplet_id":"p"}"#.to_owned(),
                "task id is empty",
            ),
            (
                r#"{"id":"a\nb","proplet_id":"p"}"#.to_owned(),
                r#"task id "a\nb" contains a control character"#,
            ),
            (
                format!(r#"{{"id":"{}","proplet_id":"p"}}"#, "t".repeat(256)),
                "task id is 256 bytes long; the limit is 255",
            ),
            (
                format!(
                    r#"{{"id":"t","proplet_id":"p","daemon":"{}\u0000"}}"#,
                    "y".repeat(10_000)
                ),
                r#"invalid type: string "yyy"#,
            ),
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
            assert!(!err.contains(['\n', '\0']), "escaped: {err}");
        }
    }

    #[test]
    fn stops_check_the_task_id_too() {
        let stop = "{\"id\":\"t\\u001b[2J\",\"proplet_id\":\"p\"}";
        let err = parse(STOP, stop.as_bytes(), "p").unwrap_err().to_string();
        assert!(err.contains(r"t\u{1b}[2J"), "{err}");
        let other = format!(r#"{{"id":"t","proplet_id":"{}\n"}}"#, "q".repeat(5000));
        let err = parse(STOP, other.as_bytes(), "p").unwrap_err().to_string();
        assert!(err.len() < 120 && !err.contains('\n'), "{err}");
    }

    #[test]
    fn profile_notes_come_with_the_start() {
        let start =
            r#"{"id":"t","proplet_id":"p","monitoring_profile":{"intervall":1,"interval":"10ms"}}"#;
        let Ok(Control::Start(start)) = parse(START, start.as_bytes(), "p") else {
            panic!("not a start")
        };
        assert_eq!(start.profile.interval, MIN_MANAGER_INTERVAL);
        let notes: Vec<String> = start.notes.iter().map(ToString::to_string).collect();
        assert!(
            notes[0].contains(r#"unknown field "intervall" ignored"#),
            "{notes:?}"
        );
        assert_eq!(
            notes[1],
            "monitoring profile: interval 10ms raised to 100ms, the shortest the agent takes \
             from the Manager"
        );
        assert_eq!(notes.len(), 2);
    }
}
