//! Builds the kernel programs (`monitor-ebpf`) for the BPF target with
//! aya-build, so that `propmon` embeds them and ships as one file.

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "monitor-ebpf";

fn main() -> anyhow::Result<()> {
    // Only Linux runs eBPF; other targets build the agent without it.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
}
