use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Write an artifact proof: the attestations of one binary, for checking it offline.
///
/// Collects every attestation (in --attestations DIR, default BUILD_DIR) whose statement
/// names ARTIFACT (`<triple>/<bin>`) with the digest BUILD_DIR has for it, and, with --log,
/// each one's inclusion proof in that transparency log, and the build's state proof
/// (BUILD_DIR/proofs/<triple>/<bin>.json, written by `cmbuild run`): the path from the
/// binary's bytes through the output drive's pages to the machine's state hash. Ship the
/// file next to the binary; `cmbuild verify-proof` checks it against the user's trusted keys.
///
/// Example: cmbuild prove builds/v0.1.0 x86_64-unknown-linux-gnu/hello --log log --out hello.proof.json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The build directory (holding manifest.json and machine.json).
    build_dir: PathBuf,
    /// The artifact, as `<triple>/<bin>`.
    artifact: String,
    /// Where the attestation envelopes are (default: BUILD_DIR).
    #[arg(long, value_name = "DIR")]
    attestations: Option<PathBuf>,
    /// A transparency log to take inclusion proofs from.
    #[arg(long, value_name = "DIR")]
    log: Option<PathBuf>,
    /// Where the proof goes (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let proof = cmbuild::ops::prove::prove(&cmbuild::ops::prove::ProveOptions {
        build_dir: args.build_dir,
        artifact: args.artifact,
        attestations: args.attestations,
        log: args.log,
    })?;
    let bytes = proof.to_file_bytes()?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            let logged = proof
                .attestations
                .iter()
                .filter(|a| a.inclusion.is_some())
                .count();
            println!(
                "wrote {} ({} attestation(s), {logged} with a log inclusion proof, {})",
                path.display(),
                proof.attestations.len(),
                if proof.state.is_some() {
                    "with a state proof"
                } else {
                    "no state proof in the build directory"
                }
            );
        }
        None => print!("{}", String::from_utf8(bytes)?),
    }
    Ok(ExitCode::SUCCESS)
}
