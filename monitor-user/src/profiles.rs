//! Propeller's monitoring profiles: what to collect for a task, and how often.
//!
//! The seven presets and their values are those of Propeller's proplets
//! (`../shared/reference/propeller-interop.md`).

use std::{fmt, time::Duration};

use serde::Serialize;

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
