use std::path::PathBuf;
use std::process::ExitCode;

/// Compare two build outputs: the smaller set of artifacts must be inside the larger.
///
/// Reports input drift (crate, version, lock hash, toolchain) apart from output drift
/// (artifact hashes, machine root hashes); recomputes every hash; ends with
/// `Reproducibility check PASSED` (exit 0) or `Reproducibility check FAILED` (exit 1).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// First build directory (containing manifest.json).
    a: PathBuf,
    /// Second build directory.
    b: PathBuf,
}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_implemented("cmbuild compare")
}
