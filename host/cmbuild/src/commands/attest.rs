use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::terminal::sanitize;

/// Sign what a build directory holds: an in-toto statement with SLSA provenance, in DSSE.
///
/// Reads BUILD_DIR/manifest.json and machine.json (as untrusted input), rehashes every
/// artifact, and signs with KEY an in-toto Statement v1 with one subject per artifact
/// (`<triple>/<bin>`, sha256) and a SLSA Provenance v1 predicate: the commit, release,
/// targets, toolchains and pins; every machine input by CID (and sha256 where the CID gives
/// it); the builder ID, the cmbuild version and each machine's root hash and mcycle. The
/// statement is canonical JSON with no timestamp (unless --timestamp), so attesting the same
/// build with the same key twice gives the same bytes.
///
/// Example: cmbuild attest builds/v0.1.0 --key ~/.config/cmbuild/builder.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The build directory (holding manifest.json and machine.json), e.g. builds/v0.1.0.
    build_dir: PathBuf,
    /// The secret key file (`cmbuild key generate` makes one).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Where the DSSE envelope goes; default: BUILD_DIR/attestation-<first 16 digits of the
    /// key ID>.json. An existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The builder ID recorded in the provenance (a URI naming you); default:
    /// `urn:cmbuild:keyid:<key ID>`.
    #[arg(long, value_name = "URI")]
    builder_id: Option<String>,
    /// Record the current time (UTC) as runDetails.metadata.finishedOn.
    #[arg(long)]
    timestamp: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let done = cmbuild::ops::attest::attest(&cmbuild::ops::attest::AttestOptions {
        build_dir: args.build_dir,
        key: args.key,
        out: args.out,
        builder_id: args.builder_id,
        timestamp: args.timestamp,
    })?;
    println!(
        "attested {} artifact(s) and {} machine(s) of commit {} with key {}",
        done.artifacts,
        done.machines,
        sanitize(&done.commit),
        done.keyid
    );
    println!("wrote {}", done.out.display());
    Ok(ExitCode::SUCCESS)
}
