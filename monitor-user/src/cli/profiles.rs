//! `propmon profiles`: the presets, as a table or as JSON.

use std::process::ExitCode;

use super::ProfilesArgs;
use crate::profiles::Preset;

pub fn run(args: ProfilesArgs) -> anyhow::Result<ExitCode> {
    if args.json {
        let profiles: serde_json::Map<String, serde_json::Value> = Preset::ALL
            .into_iter()
            .map(|preset| {
                Ok((
                    preset.name().to_owned(),
                    serde_json::to_value(preset.profile())?,
                ))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&profiles)?);
    } else {
        print!("{}", table());
    }
    Ok(ExitCode::SUCCESS)
}

fn table() -> String {
    let yes_no = |flag: bool| if flag { "yes" } else { "-" };
    let mut out = format!(
        "{:<20} {:>8}  {:<4} {:<4} {:<4} {:<4} {:<7} {:<4} {:<6} {:>7}\n",
        "PROFILE", "INTERVAL", "CPU", "MEM", "DISK", "NET", "THREADS", "FDS", "EXPORT", "HISTORY"
    );
    for preset in Preset::ALL {
        let p = preset.profile();
        let interval = if p.enabled {
            humantime::format_duration(p.interval).to_string()
        } else {
            "off".to_owned()
        };
        out.push_str(&format!(
            "{:<20} {:>8}  {:<4} {:<4} {:<4} {:<4} {:<7} {:<4} {:<6} {:>7}\n",
            preset.name(),
            interval,
            yes_no(p.collect_cpu),
            yes_no(p.collect_memory),
            yes_no(p.collect_disk_io),
            yes_no(p.collect_network_io),
            yes_no(p.collect_threads),
            yes_no(p.collect_file_descriptors),
            yes_no(p.export_to_mqtt),
            p.history_capacity(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_lists_every_preset_once() {
        let table = super::table();
        assert_eq!(table.lines().count(), 8);
        assert!(table.contains("real_time_api"));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("disabled") && l.contains("off"))
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("intensive") && l.contains(" 1s "))
        );
    }
}
