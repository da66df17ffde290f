//! `propmon forget-state`: undoes what an agent kept with `--state-dir`.

use std::process::ExitCode;

use super::ForgetStateArgs;
use crate::state::StateDir;

pub fn run(args: ForgetStateArgs) -> anyhow::Result<ExitCode> {
    // The lock fails while an agent uses the directory.
    let state = StateDir::open(&args.state_dir)?;
    state.clear()?;
    #[cfg(target_os = "linux")]
    crate::collect::ebpf::pins::Pins::remove(&state.kernel_state_name())
        .map_err(|err| anyhow::anyhow!("removing the pinned kernel state: {err}"))?;
    eprintln!(
        "propmon: forgot the tasks kept in {}; their programs are detached",
        args.state_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
