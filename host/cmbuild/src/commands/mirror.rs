use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cmbuild_store::mirror::{Mirror, DEFAULT_DIR};

/// Inspect and maintain the content-addressed vendor mirror.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rehash every blob of the mirror; exit 1 naming each blob whose bytes do not match its CID.
    ///
    /// Also names files under blobs/ that are not CIDs and index entries whose blob is missing.
    Verify(VerifyArgs),
    Push(super::mirror_ipfs::PushArgs),
    Pull(super::mirror_ipfs::PullArgs),
    Export(super::mirror_ipfs::ExportArgs),
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Verify(args) => exec_verify(args),
        Command::Push(args) => super::mirror_ipfs::exec_push(args),
        Command::Pull(args) => super::mirror_ipfs::exec_pull(args),
        Command::Export(args) => super::mirror_ipfs::exec_export(args),
    }
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The mirror directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
}

fn exec_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if !args.mirror.is_dir() {
        anyhow::bail!(
            "no mirror at {} (`cmbuild vendor` makes one)",
            args.mirror.display()
        );
    }
    let mirror = Mirror::open(&args.mirror)
        .with_context(|| format!("opening the mirror {}", args.mirror.display()))?;
    let report = mirror.verify_all()?;
    for problem in &report.problems {
        println!("MISMATCH {problem}");
    }
    println!(
        "{}: {} blobs verified, {} problems",
        args.mirror.display(),
        report.good,
        report.problems.len()
    );
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
