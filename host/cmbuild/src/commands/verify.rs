use std::path::PathBuf;
use std::process::ExitCode;

/// Rebuild what a published manifest lists and compare the result with it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory holding the published manifest.json, machine.json and artifacts.
    published: PathBuf,
}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_implemented("cmbuild verify")
}
