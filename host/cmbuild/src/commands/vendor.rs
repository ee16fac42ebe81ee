use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::ops::vendor::{vendor, VendorOptions, CRATES_URL};
use indicatif::HumanBytes;

use super::common::MirrorArg;

/// Fetch every input of a build into the mirror (online, once).
///
/// Reads the project's Cargo.lock, downloads every crates.io package it lists, checks each
/// against the lock's checksum and stores it under its content ID; then fetches every
/// Debian package of the guest-image lock. Re-running downloads nothing already present.
/// Git dependencies, other registries and path dependencies outside the workspace are
/// refused, naming them. On any failure nothing partial is left in the mirror.
///
/// With `--cargo-config OUT.toml`, also unpacks the crates into the directory source
/// `OUT.crates/` next to OUT.toml and writes OUT.toml so that
/// `cargo build --offline --locked --config OUT.toml` builds from the mirror alone.
/// `CMBUILD_CRATES_URL` replaces the download base (default https://static.crates.io/crates).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The project's Cargo.toml (its workspace's Cargo.lock is read).
    #[arg(long, value_name = "PATH", default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    #[command(flatten)]
    mirror: MirrorArg,
    /// Write a cargo config for offline builds from the mirror (and OUT.crates/ beside it).
    #[arg(long, value_name = "OUT.toml")]
    cargo_config: Option<PathBuf>,
    /// Vendor only the project's crates, not the guest image's Debian packages (enough for
    /// `cargo build --offline`; `cmbuild run` needs both).
    #[arg(long)]
    crates_only: bool,
    /// Then add and pin every blob of the mirror on this IPFS node (its Kubo RPC API, e.g.
    /// http://127.0.0.1:5001), refusing any blob the node names differently from cmbuild.
    #[arg(long, value_name = "URL")]
    ipfs_api: Option<String>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = VendorOptions {
        manifest_path: args.manifest_path,
        mirror_dir: args.mirror.dir.clone(),
        cargo_config: args.cargo_config.clone(),
        crates_only: args.crates_only,
        ipfs_api: args.ipfs_api,
        crates_url: std::env::var("CMBUILD_CRATES_URL").unwrap_or_else(|_| CRATES_URL.to_owned()),
    };
    let report = vendor(&opts)?;
    if let (Some(config), Some(dir)) = (&args.cargo_config, &report.directory_source) {
        eprintln!(
            "cmbuild vendor: wrote {} (directory source {})",
            config.display(),
            dir.display()
        );
    }
    if let Some(push) = &report.push {
        eprintln!("cmbuild vendor: {push}");
    }
    eprintln!(
        "cmbuild vendor: {} crates from {}: {} downloaded ({}), {} already in {}",
        report.crates,
        report.lock_path.display(),
        report.fetch.downloaded,
        HumanBytes(report.fetch.bytes),
        report.fetch.present,
        args.mirror.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
