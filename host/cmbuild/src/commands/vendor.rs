use std::process::ExitCode;

/// Fetch every input of a build into the mirror (online, once).
///
/// Reads the project's Cargo.lock, downloads every crates.io package it lists, checks each
/// against the lock's checksum and stores it under its content ID; then fetches every
/// Debian package of the guest-image lock. Re-running downloads nothing already present.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_implemented("cmbuild vendor")
}
