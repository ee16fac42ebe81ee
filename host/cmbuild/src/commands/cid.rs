use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cmbuild_store::cid::cid_of_reader;

/// Print the IPFS content ID of each file, like sha256sum prints digests.
///
/// The CID is the CIDv1 that `ipfs add --cid-version=1 --raw-leaves` prints for the same
/// bytes (256 KiB chunks, balanced layout, 174 links per node, sha2-256): a raw leaf
/// (`bafkrei...`) up to 262144 bytes, a dag-pb UnixFS root (`bafybei...`) above.
/// Output lines are `<cid>  <path>`; files are streamed, so any size works in constant memory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to hash; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for path in &args.files {
        let (cid, _) = if path.as_os_str() == "-" {
            cid_of_reader(io::stdin().lock()).context("reading standard input")?
        } else {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            cid_of_reader(file).with_context(|| format!("reading {}", path.display()))?
        };
        writeln!(out, "{cid}  {}", path.display()).context("writing to standard output")?;
    }
    Ok(ExitCode::SUCCESS)
}
