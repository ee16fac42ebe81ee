use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Check an artifact proof offline: do K trusted keys attest this binary?
///
/// Passes when at least K distinct keys of --trusted-keys attest the same build and that
/// build lists the proof's artifact with its sha256; with --artifact, the binary must hash to
/// it; with --log-key, only attestations with a valid inclusion proof under a tree head signed
/// by that log are counted. Ends with `Attestation check PASSED` (exit 0) or `Attestation
/// check FAILED` (exit 1).
///
/// Example: cmbuild verify-proof hello.proof.json --artifact ./hello --trusted-keys trusted.txt --threshold 2 --log-key log.pub
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The proof file (`cmbuild prove` writes one).
    proof: PathBuf,
    /// The binary the proof is about.
    #[arg(long, value_name = "FILE")]
    artifact: Option<PathBuf>,
    /// The trusted public keys, one per line.
    #[arg(long, value_name = "FILE")]
    trusted_keys: PathBuf,
    /// How many distinct trusted keys must agree.
    #[arg(long, value_name = "K")]
    threshold: usize,
    /// Count only attestations logged in the log with this public key.
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let proof = cmbuild_trust::artifact::ArtifactProof::read(&args.proof)
        .with_context(|| format!("reading {}", args.proof.display()))?;
    let trusted = cmbuild_trust::keys::read_trusted_keys(&args.trusted_keys)
        .with_context(|| format!("reading {}", args.trusted_keys.display()))?;
    let log_key = args
        .log_key
        .as_deref()
        .map(cmbuild_trust::keys::read_public_key)
        .transpose()?;
    let artifact = args
        .artifact
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    println!(
        "artifact {} sha256 {}",
        proof.artifact.name, proof.artifact.sha256
    );
    let verdict = proof.verify(
        artifact.as_deref(),
        &trusted,
        args.threshold,
        log_key.as_ref(),
    )?;
    for why in &verdict.excluded {
        println!("  excluded: {why}");
    }
    let text = verdict.report.render();
    if verdict.passed {
        print!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        // The report's own verdict line may say PASSED for a build that does not list this
        // artifact; end with the proof's verdict.
        print!("{}", text.replace("Attestation check PASSED\n", ""));
        if verdict.report.passed {
            println!("  the attested build does not list this artifact with this sha256");
        }
        println!("Attestation check FAILED");
        Ok(ExitCode::from(1))
    }
}
