use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Check that at least K trusted builders attest the same build (k-of-n).
///
/// Reads every *.json DSSE envelope in --attestations DIR (a build directory's manifest.json
/// and machine.json are skipped, so attestations can sit next to the artifacts), keeps the signatures made by keys
/// of --trusted-keys FILE (one public key per line, hex or base64 of the 32 raw bytes, `#`
/// comments), and groups the signers by what they attest: the commit, every artifact's
/// sha256 and every machine's root hash. Passes when at least K distinct trusted keys
/// attest the same thing and no other claim also reaches K; given BUILD_DIR, that thing must
/// be BUILD_DIR itself (its artifacts are rehashed). A key that signed two different claims
/// counts for none. Names every key that disagrees and on what, every signature that does
/// not verify and every file that was not counted. Ends with `Attestation check PASSED`
/// (exit 0) or `Attestation check FAILED` (exit 1).
///
/// (`cmbuild verify` rebuilds a published release; this command checks signatures only.)
///
/// Example: cmbuild verify-attestations --attestations atts/ --trusted-keys trusted.txt --threshold 2 builds/v0.1.0
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A build directory that must match what the attestations say.
    build_dir: Option<PathBuf>,
    /// The directory of attestation envelopes (*.json).
    #[arg(long, value_name = "DIR")]
    attestations: PathBuf,
    /// The trusted public keys, one per line.
    #[arg(long, value_name = "FILE")]
    trusted_keys: PathBuf,
    /// How many distinct trusted keys must agree.
    #[arg(long, value_name = "K")]
    threshold: usize,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let trusted = cmbuild_trust::keys::read_trusted_keys(&args.trusted_keys)
        .with_context(|| format!("reading {}", args.trusted_keys.display()))?;
    let claim = match &args.build_dir {
        Some(dir) => Some(
            cmbuild_trust::build::read_build_dir(dir)
                .with_context(|| format!("reading the build {}", dir.display()))?
                .claim(),
        ),
        None => None,
    };
    let files = cmbuild_trust::threshold::read_attestation_dir(&args.attestations)?;
    let report =
        cmbuild_trust::threshold::evaluate(&files, &trusted, args.threshold, claim.as_ref())?;
    print!("{}", report.render());
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
