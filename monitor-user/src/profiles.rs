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
//! - `history_size` is a whole number, used only when `retain_history` is
//!   true; a task keeps at most [`MAX_HISTORY_PER_TASK`] samples, and all
//!   tasks together at most [`HISTORY_BUDGET`] (see [`MonitoringProfile::fit_history`]);
//! - a field propmon does not know is ignored, with a note saying so (a
//!   typo such as `intervall` must not go unnoticed).

use std::{fmt, time::Duration};

use serde::Serialize;
use serde_json::Value;

use crate::{
    duration::{MAX_INTERVAL, MIN_INTERVAL, is_valid_interval},
    input::untrusted,
};

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
    /// Remote endpoints listed in `details.network.peers` (the busiest by
    /// bytes; the rest are summed in one `other` entry); propmon's own
    /// field, not Propeller's.
    pub max_peers: usize,
}

/// Default `max_peers`.
pub const DEFAULT_MAX_PEERS: usize = 16;
/// Largest `max_peers`.
pub const MAX_PEERS: usize = 256;

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
/// Most samples one task keeps: a window of 10,000 is almost 3 hours at
/// 1 s, and about 1 MB.
pub const MAX_HISTORY_PER_TASK: usize = 10_000;
/// Most samples all of an agent's tasks keep together (about 100 MB at
/// most), so that start messages cannot buy unbounded memory.
pub const HISTORY_BUDGET: usize = 1_000_000;
/// The fields of a profile, in Propeller's order.
pub const FIELDS: [&str; 12] = [
    "enabled",
    "interval",
    "collect_cpu",
    "collect_memory",
    "collect_disk_io",
    "collect_network_io",
    "collect_threads",
    "collect_file_descriptors",
    "export_to_mqtt",
    "retain_history",
    "history_size",
    "max_peers",
];
/// Unknown field names listed in one warning; the rest are counted.
const UNKNOWN_SHOWN: usize = 5;

impl MonitoringProfile {
    /// Samples kept for aggregation: 0 without `retain_history`, never
    /// more than [`MAX_HISTORY_PER_TASK`].
    pub fn history_capacity(&self) -> usize {
        if self.retain_history {
            self.history_size.min(MAX_HISTORY_PER_TASK)
        } else {
            0
        }
    }

    /// Cuts the history window of a new task to the limits, given the
    /// samples the agent's other tasks keep: at most
    /// [`MAX_HISTORY_PER_TASK`], and what is left of [`HISTORY_BUDGET`].
    /// Returns what was cut, for a warning naming the task.
    pub fn fit_history(&mut self, kept_by_others: usize) -> Option<HistoryCut> {
        if !self.retain_history {
            return None;
        }
        let left = HISTORY_BUDGET.saturating_sub(kept_by_others);
        let granted = self.history_capacity().min(left);
        if granted == self.history_size {
            return None;
        }
        let cut = HistoryCut {
            asked: self.history_size,
            granted,
        };
        self.history_size = granted;
        Some(cut)
    }
}

/// A history window smaller than asked (see [`MonitoringProfile::fit_history`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryCut {
    pub asked: usize,
    pub granted: usize,
}

impl fmt::Display for HistoryCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history_size {} cut to {} samples (limits: {MAX_HISTORY_PER_TASK} per task, \
             {HISTORY_BUDGET} for all tasks together)",
            self.asked, self.granted
        )
    }
}

/// A profile read from JSON, and what was ignored or adjusted in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedProfile {
    pub profile: MonitoringProfile,
    pub notes: Vec<ProfileNote>,
}

/// Something in a profile that was ignored or adjusted: one warning line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileNote {
    /// Fields that are not profile fields (a typo?), ignored.
    UnknownFields(Vec<String>),
    /// An interval below the floor of the task's origin, raised to it.
    IntervalRaised { asked: Duration, floor: Duration },
}

impl fmt::Display for ProfileNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileNote::UnknownFields(names) => {
                let plural = if names.len() == 1 { "" } else { "s" };
                write!(f, "monitoring profile: unknown field{plural} ")?;
                for (index, name) in names.iter().take(UNKNOWN_SHOWN).enumerate() {
                    let comma = if index == 0 { "" } else { ", " };
                    write!(f, "{comma}\"{}\"", untrusted(name))?;
                }
                if names.len() > UNKNOWN_SHOWN {
                    write!(f, " and {} more", names.len() - UNKNOWN_SHOWN)?;
                }
                write!(f, " ignored (known fields: {})", FIELDS.join(", "))
            }
            ProfileNote::IntervalRaised { asked, floor } => write!(
                f,
                "monitoring profile: interval {} raised to {}, the shortest the agent \
                 takes from the Manager",
                humantime::format_duration(*asked),
                humantime::format_duration(*floor)
            ),
        }
    }
}

/// Parses a profile from JSON text (see the module doc for the rules).
pub fn parse_profile_json(text: &str) -> Result<ParsedProfile, ProfileError> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| ProfileError::Json(err.to_string()))?;
    parse_profile_value(&value)
}

/// Parses a profile from a JSON value (see the module doc for the rules).
pub fn parse_profile_value(value: &Value) -> Result<ParsedProfile, ProfileError> {
    let preset = |name: &str| {
        Ok(ParsedProfile {
            profile: Preset::from_name(name)?.profile(),
            notes: Vec::new(),
        })
    };
    let outer = match value {
        Value::Object(outer) => outer,
        Value::String(name) => return preset(name),
        other => return Err(ProfileError::NotAnObject(kind_of(other))),
    };
    let wrapper = ["monitoring_profile", "monitoringProfile"]
        .into_iter()
        .find(|key| outer.contains_key(*key));
    let fields = match wrapper.map(|key| &outer[key]) {
        Some(Value::Object(inner)) => inner,
        Some(Value::String(name)) => return preset(name),
        Some(other) => return Err(ProfileError::NotAnObject(kind_of(other))),
        None => outer,
    };
    let mut unknown: Vec<String> = match wrapper {
        // Next to a wrapper, every other key is ignored.
        Some(wrapper) => outer
            .keys()
            .filter(|key| *key != wrapper)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    unknown.extend(
        fields
            .keys()
            .filter(|key| !FIELDS.contains(&key.as_str()))
            .cloned(),
    );
    let notes = if unknown.is_empty() {
        Vec::new()
    } else {
        vec![ProfileNote::UnknownFields(unknown)]
    };
    Ok(ParsedProfile {
        profile: read_fields(fields)?,
        notes,
    })
}

/// The profile the fields give, over the `standard` preset.
fn read_fields(fields: &serde_json::Map<String, Value>) -> Result<MonitoringProfile, ProfileError> {
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
        let size = size
            .as_u64()
            .ok_or_else(|| field_error("history_size", "expected a whole number", size))?;
        // Any size is accepted here; `fit_history` cuts it, with a warning.
        profile.history_size = usize::try_from(size).unwrap_or(usize::MAX);
    }
    if let Some(peers) = fields.get("max_peers").filter(|v| !v.is_null()) {
        let peers = peers
            .as_u64()
            .filter(|&n| n <= MAX_PEERS as u64)
            .ok_or_else(|| field_error("max_peers", "expected a whole number up to 256", peers))?;
        profile.max_peers = peers as usize;
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
    // By characters, not bytes: cutting inside a character would panic.
    let shown = crate::input::untrusted_up_to(&got.to_string(), 40).to_string();
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
            max_peers: DEFAULT_MAX_PEERS,
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
                r#"{"enabled":true,"interval":120,"collect_cpu":true,"collect_memory":true,"collect_disk_io":true,"collect_network_io":true,"collect_threads":true,"collect_file_descriptors":true,"export_to_mqtt":true,"retain_history":true,"history_size":500}"#,
                Preset::LongRunningDaemon.profile(),
            ),
        ];
        for (json, expected) in cases {
            let parsed = parse_profile_json(json).unwrap_or_else(|err| panic!("{json}: {err}"));
            assert_eq!(&parsed.profile, expected, "{json}");
            assert_eq!(parsed.notes, [], "{json}");
        }
    }

    /// Issue 10: a misspelt field used to be ignored silently.
    #[test]
    fn unknown_fields_are_ignored_with_a_note_naming_them() {
        let parsed = parse_profile_json(r#"{"intervall": 1, "interval": 5}"#).unwrap();
        assert_eq!(parsed.profile.interval, secs(5));
        assert_eq!(
            parsed.notes[0].to_string(),
            format!(
                "monitoring profile: unknown field \"intervall\" ignored (known fields: {})",
                FIELDS.join(", ")
            )
        );
        let wrapped =
            parse_profile_json(r#"{"monitoring_profile": {"colect_cpu": false}, "history": 5}"#)
                .unwrap();
        assert_eq!(
            wrapped.notes,
            [ProfileNote::UnknownFields(vec![
                "history".into(),
                "colect_cpu".into()
            ])]
        );
        let many: Vec<String> = (0..40).map(|n| format!("\"k{n}\\n\": 1")).collect();
        let note = parse_profile_json(&format!("{{{}}}", many.join(",")))
            .unwrap()
            .notes[0]
            .to_string();
        assert!(note.contains(r#"unknown fields "k0\n", "#), "{note}");
        assert!(note.contains(" and 35 more ignored"), "one line: {note}");
        assert!(!note.contains('\n'), "{note}");
    }

    /// README's Limits give the history's memory: at most 0.8 MB per task
    /// and 80 MB per agent.
    #[test]
    fn history_limits_cost_what_the_readme_says() {
        let sample = crate::history::MAX_BYTES_PER_SAMPLE;
        assert!(sample * MAX_HISTORY_PER_TASK <= 800 << 10, "{sample} bytes");
        assert!(sample * HISTORY_BUDGET <= 80 << 20, "{sample} bytes");
    }

    #[test]
    fn history_windows_fit_the_per_task_and_agent_limits() {
        let asking = |size: usize| MonitoringProfile {
            history_size: size,
            ..Preset::Standard.profile()
        };
        let mut profile = asking(500);
        assert_eq!(profile.fit_history(0), None);
        assert_eq!(profile.history_capacity(), 500);
        // Issue 10: a start message could ask for 1,000,000 samples per task.
        let mut huge = parse_profile_json(r#"{"history_size": 1000000}"#)
            .unwrap()
            .profile;
        assert_eq!(huge.history_capacity(), MAX_HISTORY_PER_TASK);
        let cut = huge.fit_history(0).unwrap();
        assert_eq!(
            cut,
            HistoryCut {
                asked: 1_000_000,
                granted: MAX_HISTORY_PER_TASK
            }
        );
        assert!(
            cut.to_string()
                .starts_with("history_size 1000000 cut to 10000 samples"),
            "{cut}"
        );
        assert_eq!(huge.history_capacity(), MAX_HISTORY_PER_TASK);
        let mut late = asking(5000);
        let cut = late.fit_history(HISTORY_BUDGET - 1200).unwrap();
        assert_eq!(cut.granted, 1200);
        assert_eq!(late.history_capacity(), 1200);
        let mut last = asking(100);
        assert_eq!(last.fit_history(HISTORY_BUDGET).unwrap().granted, 0);
        assert_eq!(last.history_capacity(), 0);
        let mut not_kept = MonitoringProfile {
            retain_history: false,
            ..asking(1_000_000)
        };
        assert_eq!(not_kept.fit_history(HISTORY_BUDGET), None);
        let max = parse_profile_json(r#"{"history_size": 18446744073709551615}"#).unwrap();
        assert_eq!(max.profile.history_capacity(), MAX_HISTORY_PER_TASK);
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
            // Used to panic: the value was cut inside a character.
            (
                &format!(r#"{{"collect_cpu": "{}"}}"#, "é".repeat(40)),
                r#"field "collect_cpu": expected true or false, got "ééé"#,
            ),
            (
                &format!(r#"{{"collect_cpu": "{}\n"}}"#, "x".repeat(10_000)),
                "… (10004 bytes)",
            ),
        ] {
            let err = parse_profile_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
            assert!(err.len() < 200, "one short line: {err}");
        }
    }

    #[test]
    fn history_is_kept_only_when_retained() {
        let parsed =
            parse_profile_json(r#"{"retain_history": false, "history_size": 50}"#).unwrap();
        assert_eq!(parsed.profile.history_capacity(), 0);
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
