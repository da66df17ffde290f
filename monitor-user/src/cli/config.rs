//! The optional TOML configuration file of `propmon agent`.
//!
//! Keys are the long flag names with `_` for `-`; flags and environment
//! variables take precedence over the file. Example:
//!
//! ```toml
//! proplet_id = "edge-7"
//! backend = "auto"
//! metrics_interval = "30s"
//! enable_monitoring = true
//! profile = "standard"
//! attach = ["web=1234,profile=real_time_api"]
//! ```

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::collect::BackendChoice;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub backend: Option<BackendChoice>,
    pub proplet_id: Option<String>,
    pub namespace: Option<String>,
    /// Seconds or a duration such as "30s".
    pub metrics_interval: Option<toml::Value>,
    pub enable_monitoring: Option<bool>,
    /// Default profile name of attached tasks.
    pub profile: Option<String>,
    /// Default profile of attached tasks, as JSON.
    pub profile_json: Option<String>,
    /// `TASK_ID=PID[,profile=NAME][,daemon=true]` entries.
    #[serde(default)]
    pub attach: Vec<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("invalid configuration")
    }

    /// `metrics_interval` as the text the flag would take.
    pub fn metrics_interval_text(&self) -> Option<String> {
        self.metrics_interval.as_ref().map(|value| match value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let config = ConfigFile::parse(
            r#"
            backend = "sysinfo"
            proplet_id = "edge-7"
            namespace = "ns"
            metrics_interval = 30
            enable_monitoring = false
            profile = "minimal"
            attach = ["a=1", "b=2,profile=intensive"]
            "#,
        )
        .unwrap();
        assert_eq!(config.backend, Some(BackendChoice::Sysinfo));
        assert_eq!(config.metrics_interval_text().as_deref(), Some("30"));
        assert_eq!(config.enable_monitoring, Some(false));
        assert_eq!(config.attach.len(), 2);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = ConfigFile::parse("proplet = 1").unwrap_err();
        assert!(format!("{err:#}").contains("proplet"), "{err:#}");
    }
}
