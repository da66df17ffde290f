//! Propeller's monitoring profiles: what to collect for a task, and how often.
//!
//! The seven presets and their values are those of Propeller's proplets
//! (`../shared/reference/propeller-interop.md`), and profiles given as JSON
//! are read the way both of Propeller's dialects write them:
//!
//! - the object may be bare or wrapped in `monitoring_profile` or
//!   `monitoringProfile`; the wrapper may also hold a preset's name;
//! - every field is optional: a missing field takes the `standard` preset's
//!   value;
//! - `interval` is a number or a string. A number below 1,000,000 is seconds
//!   (the Rust proplet writes `10`), a number at or above it is nanoseconds
//!   (a Go `time.Duration`, `5000000000`); a string is a duration such as
//!   `"5s"` or `"500ms"`. It must lie between 10 ms and 24 h;
//! - `history_size` is a whole number up to 1,000,000, and is used only
//!   when `retain_history` is true.

use std::{fmt, time::Duration};

use serde::Serialize;
use serde_json::Value;

use crate::duration::{MAX_INTERVAL, MIN_INTERVAL, is_valid_interval};

/// What to collect for one task and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MonitoringProfile {
    /// `false` means no sampling and no messages at all.
    pub enabled: bool,
    /// Time between two messages of the task.
    #[serde(serialize_with = "serialize_seconds")]
    pub interval: Duration,
    pub collect_cpu: bool,
    pub collect_memory: bool,
    pub collect_disk_io: bool,
    pub collect_network_io: bool,
    pub collect_threads: bool,
    pub collect_file_descriptors: bool,
    pub export_to_mqtt: bool,
    pub retain_history: bool,
    pub history_size: usize,
}

fn serialize_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The named presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Standard,
    Minimal,
    Intensive,
    BatchProcessing,
    RealTimeApi,
    LongRunningDaemon,
    Disabled,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; known profiles: {known}")]
    UnknownName { name: String, known: String },
    #[error("monitoring profile is not valid JSON: {0}")]
    Json(String),
    #[error("monitoring profile must be a JSON object, got {0}")]
    NotAnObject(String),
    #[error("monitoring profile field {field:?}: {reason}")]
    Field { field: &'static str, reason: String },
}

/// Interval numbers at or above this are nanoseconds, below it seconds.
pub const NANOSECONDS_FROM: f64 = 1_000_000.0;
/// Largest accepted `history_size`.
pub const MAX_HISTORY_SIZE: u64 = 1_000_000;

impl MonitoringProfile {
    /// Samples kept for aggregation (0 without `retain_history`).
    pub fn history_capacity(&self) -> usize {
        if self.retain_history {
            self.history_size
        } else {
            0
        }
    }
}

/// Parses a profile from JSON text (see the module doc for the rules).
pub fn parse_profile_json(text: &str) -> Result<MonitoringProfile, ProfileError> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| ProfileError::Json(err.to_string()))?;
    parse_profile_value(&value)
}

/// Parses a profile from a JSON value (see the module doc for the rules).
pub fn parse_profile_value(value: &Value) -> Result<MonitoringProfile, ProfileError> {
    let outer = match value {
        Value::Object(outer) => outer,
        Value::String(name) => return Ok(Preset::from_name(name)?.profile()),
        other => return Err(ProfileError::NotAnObject(kind_of(other))),
    };
    let wrapped = outer
        .get("monitoring_profile")
        .or_else(|| outer.get("monitoringProfile"));
    let fields = match wrapped {
        Some(Value::Object(inner)) => inner,
        Some(Value::String(name)) => return Ok(Preset::from_name(name)?.profile()),
        Some(other) => return Err(ProfileError::NotAnObject(kind_of(other))),
        None => outer,
    };
    let mut profile = Preset::Standard.profile();
    let flags: [(&'static str, &mut bool); 9] = [
        ("enabled", &mut profile.enabled),
        ("collect_cpu", &mut profile.collect_cpu),
        ("collect_memory", &mut profile.collect_memory),
        ("collect_disk_io", &mut profile.collect_disk_io),
        ("collect_network_io", &mut profile.collect_network_io),
        ("collect_threads", &mut profile.collect_threads),
        (
            "collect_file_descriptors",
            &mut profile.collect_file_descriptors,
        ),
        ("export_to_mqtt", &mut profile.export_to_mqtt),
        ("retain_history", &mut profile.retain_history),
    ];
    for (field, slot) in flags {
        match fields.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(flag)) => *slot = *flag,
            Some(other) => return Err(field_error(field, "expected true or false", other)),
        }
    }
    if let Some(interval) = fields.get("interval").filter(|v| !v.is_null()) {
        profile.interval = parse_interval_value(interval)?;
    }
    if let Some(size) = fields.get("history_size").filter(|v| !v.is_null()) {
        profile.history_size = size
            .as_u64()
            .filter(|&n| n <= MAX_HISTORY_SIZE)
            .ok_or_else(|| {
                field_error(
                    "history_size",
                    "expected a whole number from 0 to 1000000",
                    size,
                )
            })? as usize;
    }
    Ok(profile)
}

fn parse_interval_value(value: &Value) -> Result<Duration, ProfileError> {
    let duration = match value {
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(f64::NAN);
            if !(n.is_finite() && n > 0.0) {
                return Err(field_error("interval", "must be positive", value));
            }
            if n >= NANOSECONDS_FROM {
                Duration::from_nanos(n as u64)
            } else {
                Duration::try_from_secs_f64(n)
                    .map_err(|_| field_error("interval", "is out of range", value))?
            }
        }
        Value::String(text) => humantime::parse_duration(text.trim())
            .map_err(|err| field_error("interval", &format!("not a duration ({err})"), value))?,
        other => {
            return Err(field_error(
                "interval",
                "expected seconds, Go nanoseconds or a string such as \"5s\"",
                other,
            ));
        }
    };
    if !is_valid_interval(duration) {
        let range = format!(
            "must be between {} and {}",
            humantime::format_duration(MIN_INTERVAL),
            humantime::format_duration(MAX_INTERVAL)
        );
        return Err(field_error("interval", &range, value));
    }
    Ok(duration)
}

fn field_error(field: &'static str, expected: &str, got: &Value) -> ProfileError {
    let mut shown = got.to_string();
    if shown.len() > 40 {
        shown.truncate(40);
        shown.push_str("...");
    }
    ProfileError::Field {
        field,
        reason: format!("{expected}, got {shown}"),
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
    .to_owned()
}

impl Preset {
    pub const ALL: [Preset; 7] = [
        Preset::Standard,
        Preset::Minimal,
        Preset::Intensive,
        Preset::BatchProcessing,
        Preset::RealTimeApi,
        Preset::LongRunningDaemon,
        Preset::Disabled,
    ];

    /// The canonical (snake_case) name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Standard => "standard",
            Preset::Minimal => "minimal",
            Preset::Intensive => "intensive",
            Preset::BatchProcessing => "batch_processing",
            Preset::RealTimeApi => "real_time_api",
            Preset::LongRunningDaemon => "long_running_daemon",
            Preset::Disabled => "disabled",
        }
    }

    /// Looks a preset up by name; `real-time-api` and `Real_Time_API` work too.
    pub fn from_name(name: &str) -> Result<Self, ProfileError> {
        let normalized = name.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|preset| preset.name() == normalized)
            .ok_or_else(|| ProfileError::UnknownName {
                name: name.to_owned(),
                known: Self::ALL.map(Preset::name).join(", "),
            })
    }

    pub fn profile(self) -> MonitoringProfile {
        let all = |interval_secs: u64, history_size: usize| MonitoringProfile {
            enabled: true,
            interval: Duration::from_secs(interval_secs),
            collect_cpu: true,
            collect_memory: true,
            collect_disk_io: true,
            collect_network_io: true,
            collect_threads: true,
            collect_file_descriptors: true,
            export_to_mqtt: true,
            retain_history: history_size > 0,
            history_size,
        };
        match self {
            Preset::Standard => all(10, 100),
            Preset::Minimal => MonitoringProfile {
                collect_disk_io: false,
                collect_network_io: false,
                collect_threads: false,
                collect_file_descriptors: false,
                export_to_mqtt: false,
                ..all(60, 0)
            },
            Preset::Intensive => all(1, 1000),
            Preset::BatchProcessing => MonitoringProfile {
                collect_network_io: false,
                collect_threads: false,
                collect_file_descriptors: false,
                ..all(30, 200)
            },
            Preset::RealTimeApi => MonitoringProfile {
                collect_disk_io: false,
                ..all(5, 500)
            },
            Preset::LongRunningDaemon => all(120, 500),
            Preset::Disabled => MonitoringProfile {
                enabled: false,
                collect_cpu: false,
                collect_memory: false,
                collect_disk_io: false,
                collect_network_io: false,
                collect_threads: false,
                collect_file_descriptors: false,
                export_to_mqtt: false,
                ..all(10, 0)
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn accepted_profile_forms() {
        let standard = Preset::Standard.profile();
        let cases: &[(&str, MonitoringProfile)] = &[
            ("{}", standard.clone()),
            (r#"{"interval": 10}"#, standard.clone()),
            (
                r#"{"interval": 5000000000}"#,
                MonitoringProfile {
                    interval: secs(5),
                    ..standard.clone()
                },
            ),
            (
                r#"{"interval": 20000000}"#,
                MonitoringProfile {
                    interval: Duration::from_millis(20),
                    ..standard.clone()
                },
            ),
            (
                r#"{"interval": 0.5}"#,
                MonitoringProfile {
                    interval: Duration::from_millis(500),
                    ..standard.clone()
                },
            ),
            (
                r#"{"interval": "500ms"}"#,
                MonitoringProfile {
                    interval: Duration::from_millis(500),
                    ..standard.clone()
                },
            ),
            (
                r#"{"monitoring_profile": {"interval": "5s", "collect_disk_io": false}}"#,
                MonitoringProfile {
                    interval: secs(5),
                    collect_disk_io: false,
                    ..standard.clone()
                },
            ),
            (
                r#"{"monitoringProfile": {"interval": 30, "history_size": 7, "export_to_mqtt": false}}"#,
                MonitoringProfile {
                    interval: secs(30),
                    history_size: 7,
                    export_to_mqtt: false,
                    ..standard.clone()
                },
            ),
            (
                r#"{"monitoringProfile": "real-time-api"}"#,
                Preset::RealTimeApi.profile(),
            ),
            (
                r#"{"enabled": false, "interval": null}"#,
                MonitoringProfile {
                    enabled: false,
                    ..standard.clone()
                },
            ),
            (
                r#"{"enabled":true,"interval":120,"collect_cpu":true,"collect_memory":true,"collect_disk_io":true,"collect_network_io":true,"collect_threads":true,"collect_file_descriptors":true,"export_to_mqtt":true,"retain_history":true,"history_size":500,"unknown":1}"#,
                Preset::LongRunningDaemon.profile(),
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(parse_profile_json(json).as_ref(), Ok(expected), "{json}");
        }
    }

    #[test]
    fn rejected_profile_forms_name_the_field() {
        for (json, expected) in [
            ("{", "not valid JSON"),
            ("[1]", "must be a JSON object, got an array"),
            (
                r#"{"monitoring_profile": 3}"#,
                "must be a JSON object, got a number",
            ),
            (
                r#"{"interval": 0}"#,
                r#"field "interval": must be positive, got 0"#,
            ),
            (
                r#"{"interval": -5}"#,
                r#"field "interval": must be positive"#,
            ),
            (
                r#"{"interval": "0s"}"#,
                r#"field "interval": must be between 10ms and 1day"#,
            ),
            (
                r#"{"interval": 999999}"#,
                r#"field "interval": must be between"#,
            ),
            // 1,000,000 is nanoseconds: 1 ms, below the minimum.
            (
                r#"{"interval": 1000000}"#,
                r#"field "interval": must be between"#,
            ),
            (
                r#"{"interval": 1e30}"#,
                r#"field "interval": must be between"#,
            ),
            (
                r#"{"interval": "soon"}"#,
                r#"field "interval": not a duration"#,
            ),
            (
                r#"{"interval": true}"#,
                r#"field "interval": expected seconds"#,
            ),
            (
                r#"{"collect_cpu": "yes"}"#,
                r#"field "collect_cpu": expected true or false, got "yes""#,
            ),
            (
                r#"{"history_size": -1}"#,
                r#"field "history_size": expected a whole number"#,
            ),
            (r#"{"history_size": 2.5}"#, r#"field "history_size""#),
            (
                r#"{"monitoringProfile": {"enabled": 1}}"#,
                r#"field "enabled""#,
            ),
        ] {
            let err = parse_profile_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn history_is_kept_only_when_retained() {
        let profile =
            parse_profile_json(r#"{"retain_history": false, "history_size": 50}"#).unwrap();
        assert_eq!(profile.history_capacity(), 0);
        assert_eq!(Preset::Intensive.profile().history_capacity(), 1000);
    }

    #[test]
    fn names_accept_both_separators_and_any_case() {
        assert_eq!(Preset::from_name("real_time_api"), Ok(Preset::RealTimeApi));
        assert_eq!(Preset::from_name("real-time-api"), Ok(Preset::RealTimeApi));
        assert_eq!(Preset::from_name("Intensive"), Ok(Preset::Intensive));
        for preset in Preset::ALL {
            assert_eq!(Preset::from_name(preset.name()), Ok(preset));
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = Preset::from_name("turbo").unwrap_err().to_string();
        assert!(err.contains("\"turbo\""), "{err}");
        assert!(err.contains("long_running_daemon"), "{err}");
    }

    #[test]
    fn presets_match_the_propeller_table() {
        let secs = |p: Preset| p.profile().interval.as_secs();
        assert_eq!(
            Preset::ALL.map(secs),
            [10, 60, 1, 30, 5, 120, 10],
            "intervals in table order"
        );
        let sizes = Preset::ALL.map(|p| p.profile().history_size);
        assert_eq!(sizes, [100, 0, 1000, 200, 500, 500, 0]);
        let minimal = Preset::Minimal.profile();
        assert!(minimal.collect_cpu && minimal.collect_memory && !minimal.collect_disk_io);
        assert!(!minimal.export_to_mqtt && !minimal.retain_history);
        let batch = Preset::BatchProcessing.profile();
        assert!(batch.collect_disk_io && !batch.collect_network_io && !batch.collect_threads);
        let api = Preset::RealTimeApi.profile();
        assert!(!api.collect_disk_io && api.collect_network_io && api.collect_file_descriptors);
        let disabled = Preset::Disabled.profile();
        assert!(!disabled.enabled && !disabled.collect_cpu && !disabled.export_to_mqtt);
    }
}
