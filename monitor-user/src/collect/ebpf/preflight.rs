//! Why eBPF cannot be used here, in one line a user can act on.
//!
//! Checked before loading so that the common failures (not root, kernel
//! without BTF) get a precise message instead of a verifier errno.

use std::{fs, path::Path};

use super::btf::VMLINUX_BTF;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Missing {
    #[error(
        "missing capability {0} (run propmon as root, or grant CAP_BPF and CAP_PERFMON: \
         setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep propmon)"
    )]
    Capability(&'static str),
    #[error(
        "kernel BTF not found at {VMLINUX_BTF}: the kernel must be built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.5+)"
    )]
    KernelBtf,
}

/// Checks the privileges and kernel features the programs need.
pub fn check() -> Result<(), Missing> {
    check_capabilities(effective_capabilities())?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Missing::KernelBtf);
    }
    Ok(())
}

/// CapEff of this process (0 if unreadable: then nothing is assumed).
fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

fn check_capabilities(effective: u64) -> Result<(), Missing> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    // CAP_SYS_ADMIN covers both on kernels older than 5.8 and still does.
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    if !has(CAP_BPF) {
        return Err(Missing::Capability("CAP_BPF"));
    }
    if !has(CAP_PERFMON) {
        return Err(Missing::Capability("CAP_PERFMON"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn names_the_missing_capability() {
        assert_eq!(check_capabilities(1 << CAP_SYS_ADMIN), Ok(()));
        assert_eq!(
            check_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)),
            Ok(())
        );
        assert_eq!(check_capabilities(0), Err(Missing::Capability("CAP_BPF")));
        assert_eq!(
            check_capabilities(1 << CAP_BPF),
            Err(Missing::Capability("CAP_PERFMON"))
        );
        let line = Missing::Capability("CAP_BPF").to_string();
        assert!(!line.contains('\n') && line.contains("root"), "{line}");
    }
}
