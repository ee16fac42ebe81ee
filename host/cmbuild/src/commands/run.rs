use std::process::ExitCode;

/// Build a release of the project offline, inside the deterministic machine, for every triple.
///
/// Takes REV from the project's git, makes a deterministic source archive, boots the pinned
/// guest image with the vendored crates, runs `cargo build --release --locked --offline`
/// per target triple and writes `builds/REV/manifest.json`, `machine.json` and the binaries.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tag or commit to build.
    #[arg(long)]
    release: String,
}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_implemented("cmbuild run")
}
