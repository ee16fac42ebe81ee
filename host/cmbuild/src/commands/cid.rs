use std::path::PathBuf;
use std::process::ExitCode;

/// Print the IPFS content ID of each file, like sha256sum prints digests.
///
/// The CID is the CIDv1 that `ipfs add --cid-version=1 --raw-leaves` prints for the same
/// bytes (256 KiB chunks, balanced layout, 174 links per node, sha2-256): a raw leaf
/// (`bafkrei...`) up to 262144 bytes, a dag-pb UnixFS root (`bafybei...`) above.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to hash; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn exec(_args: Args) -> anyhow::Result<ExitCode> {
    super::not_implemented("cmbuild cid")
}
