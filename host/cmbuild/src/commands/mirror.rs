use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::ops::mirror;
use cmbuild::terminal::sanitize;

use super::common::MirrorArg;

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
    Push(PushArgs),
    Pull(PullArgs),
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    mirror: MirrorArg,
}

/// Add and pin every blob of the mirror on an IPFS node.
///
/// Each blob is added with the parameters that make the node's CIDs equal to cmbuild's
/// (`cid-version=1`, `raw-leaves`, `chunker=size-262144`); a blob the node names differently
/// is not pinned, and the command fails naming it.
#[derive(Debug, clap::Args)]
struct PushArgs {
    /// The node's Kubo RPC API, e.g. http://127.0.0.1:5001
    #[arg(long, value_name = "URL")]
    ipfs_api: String,
    #[command(flatten)]
    mirror: MirrorArg,
}

/// Fetch, from an IPFS node, every blob the mirror index names but the mirror lacks.
///
/// Every blob is rehashed before it enters the mirror; bytes that do not hash to the CID the
/// index names are refused (exit 1, naming each refused blob).
#[derive(Debug, clap::Args)]
struct PullArgs {
    /// The node's Kubo RPC API, e.g. http://127.0.0.1:5001
    #[arg(long, value_name = "URL")]
    ipfs_api: String,
    #[command(flatten)]
    mirror: MirrorArg,
}

/// Write every blob of the mirror into a CARv1 archive (`ipfs dag import FILE` takes it).
///
/// The archive holds every block of each blob's UnixFS DAG, each block once; its roots are
/// the blob CIDs, sorted.
#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Where to write the archive.
    #[arg(long, value_name = "FILE")]
    car: PathBuf,
    #[command(flatten)]
    mirror: MirrorArg,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let mut note = |line: &str| eprintln!("{line}");
    match args.command {
        Command::Verify(args) => {
            let report = mirror::verify(&args.mirror.dir)?;
            for problem in &report.problems {
                println!("MISMATCH {}", sanitize(&problem.to_string()));
            }
            println!(
                "{}: {} blobs verified, {} problems",
                args.mirror.dir.display(),
                report.good,
                report.problems.len()
            );
            Ok(exit_if(report.problems.is_empty()))
        }
        Command::Push(args) => {
            let mirror = mirror::open_existing(&args.mirror.dir)?;
            println!("{}", mirror::push(&mirror, &args.ipfs_api, &mut note)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pull(args) => {
            let mirror = mirror::open_existing(&args.mirror.dir)?;
            let report = mirror::pull(&mirror, &args.ipfs_api, &mut note)?;
            println!(
                "pulled {} blobs ({} bytes) from {}; {} already present; {} refused",
                report.pulled,
                report.bytes,
                report.node,
                report.present,
                report.refused.len()
            );
            for refusal in &report.refused {
                eprintln!("refused {}", sanitize(&refusal.to_string()));
            }
            Ok(exit_if(report.refused.is_empty()))
        }
        Command::Export(args) => {
            let mirror = mirror::open_existing(&args.mirror.dir)?;
            let report = mirror::export_car(&mirror, &args.car, &mut note)?;
            println!(
                "wrote {}: {} roots, {} blocks, {} bytes",
                args.car.display(),
                report.roots,
                report.blocks,
                report.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
