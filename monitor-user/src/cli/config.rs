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
//! listen = "127.0.0.1:9464"
//! attach_cgroup = ["db=system.slice/postgresql.service"]
//! metrics_peers = true
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
    /// `TASK_ID=PATH` entries (a cgroup v2 path).
    #[serde(default)]
    pub attach_cgroup: Vec<String>,
    pub mqtt_url: Option<String>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_client_id: Option<String>,
    pub mqtt_ca_file: Option<std::path::PathBuf>,
    pub domain_id: Option<String>,
    pub channel_id: Option<String>,
    pub topic_style: Option<crate::export::mqtt::TopicStyle>,
    pub mqtt_queue_size: Option<usize>,
    pub mqtt_protocol: Option<crate::export::mqtt::Protocol>,
    /// Bytes (a number), or a string such as "32MiB".
    pub mqtt_max_message_size: Option<toml::Value>,
    pub propeller: Option<bool>,
    pub proplet_pid: Option<u32>,
    pub proplet_exe: Option<String>,
    /// A duration such as "1s".
    pub discovery_grace: Option<String>,
    /// A duration such as "60s".
    pub discovery_timeout: Option<String>,
    /// Where to keep tasks across restarts.
    pub state_dir: Option<std::path::PathBuf>,
    /// Tasks monitored at once.
    pub max_tasks: Option<u32>,
    /// Where to serve /metrics and /api/v1/tasks, e.g. "127.0.0.1:9464".
    pub listen: Option<String>,
    /// Allow `listen` on an address other than loopback.
    pub listen_non_loopback: Option<bool>,
    /// Per-peer series in /metrics.
    pub metrics_peers: Option<bool>,
}

impl ConfigFile {
    /// Fills the MQTT settings the flags and environment left unset.
    pub fn fill_mqtt(&self, mqtt: &mut super::MqttArgs) -> anyhow::Result<()> {
        fn fill<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
            if slot.is_none() {
                slot.clone_from(value);
            }
        }
        fill(&mut mqtt.mqtt_url, &self.mqtt_url);
        fill(&mut mqtt.mqtt_username, &self.mqtt_username);
        fill(&mut mqtt.mqtt_password, &self.mqtt_password);
        fill(&mut mqtt.mqtt_client_id, &self.mqtt_client_id);
        fill(&mut mqtt.mqtt_ca_file, &self.mqtt_ca_file);
        fill(&mut mqtt.domain_id, &self.domain_id);
        fill(&mut mqtt.channel_id, &self.channel_id);
        fill(&mut mqtt.topic_style, &self.topic_style);
        fill(&mut mqtt.mqtt_queue_size, &self.mqtt_queue_size);
        fill(&mut mqtt.mqtt_protocol, &self.mqtt_protocol);
        if mqtt.mqtt_max_message_size.is_none()
            && let Some(value) = &self.mqtt_max_message_size
        {
            let text = match value {
                toml::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let size = crate::export::mqtt::parse_message_size(&text)
                .map_err(|err| anyhow::anyhow!("configuration key mqtt_max_message_size: {err}"))?;
            mqtt.mqtt_max_message_size = Some(size);
        }
        Ok(())
    }
}

impl ConfigFile {
    /// Fills the listener settings the flags and environment left unset.
    pub fn fill_listen(&self, listen: &mut super::ListenArgs) -> anyhow::Result<()> {
        if listen.listen.is_none()
            && let Some(text) = &self.listen
        {
            // Checked here, so that a mistake names the key.
            crate::export::http::ListenAddr::parse(text)
                .map_err(anyhow::Error::msg)
                .context("configuration key listen")?;
            listen.listen = Some(text.clone());
        }
        if listen.listen_non_loopback.is_none() {
            listen.listen_non_loopback = self.listen_non_loopback;
        }
        if listen.metrics_peers.is_none() {
            listen.metrics_peers = self.metrics_peers;
        }
        Ok(())
    }

    /// Reads and parses the file (at most [`MAX_FILE_BYTES`](crate::input::MAX_FILE_BYTES)).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::input::read_text_file(path)
            .with_context(|| format!("--config: the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("--config {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|err| one_line(text, &err))
    }

    /// `metrics_interval` as the text the flag would take.
    pub fn metrics_interval_text(&self) -> Option<String> {
        self.metrics_interval.as_ref().map(|value| match value {
            toml::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }
}

/// toml's errors draw the offending line over several lines; a log or
/// terminal line wants `line L, column C: message`.
fn one_line(text: &str, err: &toml::de::Error) -> anyhow::Error {
    let message = err.message().trim().replace('\n', " ");
    let Some(at) = err.span().map(|span| span.start.min(text.len())) else {
        return anyhow::anyhow!("invalid configuration: {message}");
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    anyhow::anyhow!("invalid configuration at line {line}, column {column}: {message}")
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
            attach_cgroup = ["db=system.slice/db.service"]
            "#,
        )
        .unwrap();
        assert_eq!(config.backend, Some(BackendChoice::Sysinfo));
        assert_eq!(config.metrics_interval_text().as_deref(), Some("30"));
        assert_eq!(config.enable_monitoring, Some(false));
        assert_eq!(config.attach.len(), 2);
        assert_eq!(config.attach_cgroup, ["db=system.slice/db.service"]);
    }

    #[test]
    fn mqtt_keys_fill_what_flags_left_unset() {
        let config = ConfigFile::parse(
            r#"
            mqtt_protocol = "3.1.1"
            mqtt_max_message_size = "2MiB"
            "#,
        )
        .unwrap();
        let mut mqtt = super::super::MqttArgs::default();
        config.fill_mqtt(&mut mqtt).unwrap();
        assert_eq!(
            mqtt.mqtt_protocol,
            Some(crate::export::mqtt::Protocol::V311)
        );
        assert_eq!(mqtt.mqtt_max_message_size, Some(2 << 20));
        let bad = ConfigFile::parse("mqtt_max_message_size = 12").unwrap();
        let err = bad
            .fill_mqtt(&mut super::super::MqttArgs::default())
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn listen_keys_fill_what_flags_left_unset() {
        let listen = |text: &str| {
            let mut listen = super::super::ListenArgs::default();
            ConfigFile::parse(text)?.fill_listen(&mut listen)?;
            listen.settings()
        };
        let addr = listen("listen = \"[::1]:9464\"").unwrap().unwrap();
        assert_eq!(addr.to_string(), "[::1]:9464");
        assert!(listen("").unwrap().is_none(), "off unless asked for");
        let err = format!("{:#}", listen("listen = \":9464\"").unwrap_err());
        assert!(
            err.starts_with("configuration key listen: \":9464\": expected"),
            "{err}"
        );
        // Beyond loopback only when asked for explicitly.
        let err = listen("listen = \"0.0.0.0:9464\"").unwrap_err().to_string();
        assert!(err.contains("add --listen-non-loopback"), "{err}");
        let open = listen("listen = \"0.0.0.0:9464\"\nlisten_non_loopback = true");
        assert!(open.unwrap().is_some());
    }

    #[test]
    fn metrics_peers_is_off_unless_asked_for_and_a_flag_wins() {
        let peers = |text: &str, flag: Option<bool>| {
            let mut listen = super::super::ListenArgs {
                metrics_peers: flag,
                ..Default::default()
            };
            ConfigFile::parse(text)
                .unwrap()
                .fill_listen(&mut listen)
                .unwrap();
            listen.peer_series(true)
        };
        assert!(!peers("listen = \"127.0.0.1:9464\"", None));
        assert!(peers("metrics_peers = true", None));
        assert!(!peers("metrics_peers = true", Some(false)));
        // Nothing to show them on: off.
        let listen = super::super::ListenArgs {
            metrics_peers: Some(true),
            ..Default::default()
        };
        assert!(!listen.peer_series(false));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = ConfigFile::parse("proplet = 1").unwrap_err();
        assert!(format!("{err:#}").contains("proplet"), "{err:#}");
    }

    /// Issue 10: errors are one line, with where the mistake is.
    #[test]
    fn errors_are_one_line_with_a_position() {
        for (text, expected) in [
            (
                "namespace = \"ns\"\n  proplet = 1",
                "invalid configuration at line 2, column 3: unknown field `proplet`",
            ),
            (
                "backend = 3",
                "invalid configuration at line 1, column 11: ",
            ),
            ("x = [", "invalid configuration at line 1"),
            ("\0\0\0", "invalid configuration at line 1, column "),
        ] {
            let err = format!("{:#}", ConfigFile::parse(text).unwrap_err());
            assert!(err.starts_with(expected), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{text:?}: {err}");
        }
    }
}
