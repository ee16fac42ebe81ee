use std::path::PathBuf;
use std::process::ExitCode;

/// Check that at least K trusted builders attest the same build (k-of-n).
///
/// Reads every *.json DSSE envelope in --attestations DIR (a build directory's
/// manifest.json and machine.json are skipped, so attestations can sit next to the
/// artifacts), keeps the signatures made by keys of --trusted-keys FILE (one public key per
/// line, hex or base64 of the 32 raw bytes, `#` comments), and groups the signers by what
/// they attest: the commit, every artifact's sha256 and every machine's root hash. Passes
/// when at least K distinct trusted keys attest the same thing and no other claim about the
/// same commit also reaches K; given BUILD_DIR, that thing must be BUILD_DIR itself (its
/// artifacts are rehashed). A key that signed two different claims about one commit counts
/// for none; attestations of other commits are listed and ignored. Names every key that
/// disagrees and on what, every signature that does not verify and every file that was not
/// counted. Ends with `Attestation check PASSED` (exit 0) or `Attestation check FAILED`
/// (exit 1).
///
/// (`cmbuild verify` rebuilds a published release; this command checks signatures only.)
///
/// Example: cmbuild verify-attestations --attestations atts/ --trusted-keys trusted.txt --threshold 2 builds/v0.1.0
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A build directory that must match what the attestations say.
    build_dir: Option<PathBuf>,
    /// The directory of attestation envelopes (*.json); default: BUILD_DIR.
    #[arg(long, value_name = "DIR", required_unless_present = "build_dir")]
    attestations: Option<PathBuf>,
    /// The trusted public keys, one per line.
    #[arg(long, value_name = "FILE")]
    trusted_keys: PathBuf,
    /// How many distinct trusted keys must agree.
    #[arg(long, value_name = "K")]
    threshold: usize,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    use cmbuild::ops::verify_attestations::{verify_attestations, VerifyAttestationsOptions};
    let Some(attestations) = args.attestations.or_else(|| args.build_dir.clone()) else {
        anyhow::bail!("--attestations DIR or a BUILD_DIR holding the attestations is needed");
    };
    let report = verify_attestations(&VerifyAttestationsOptions {
        attestations,
        trusted_keys: args.trusted_keys,
        threshold: args.threshold,
        build_dir: args.build_dir,
    })?;
    // The report quotes attested data (commits, artifact names, file names): untrusted.
    print!("{}", cmbuild::terminal::sanitize(&report.render()));
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
