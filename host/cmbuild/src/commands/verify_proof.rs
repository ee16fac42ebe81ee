use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild_trust::artifact::StateCheck;

/// Check an artifact proof offline: do K trusted keys attest this binary?
///
/// Passes when at least K distinct keys of --trusted-keys attest the same build and that
/// build lists the proof's artifact with its sha256; with --artifact, the binary must hash to
/// it; with --log-key, only attestations with a valid inclusion proof under a tree head signed
/// by that log are counted. When the proof carries a state proof and --artifact is given, the
/// binary's bytes must also hash, through the output drive's pages and the machine's state
/// tree, to the root hash the counted attestations give for the machine that built it
/// (nothing is rerun). Ends with `Attestation check PASSED` (exit 0) or `Attestation check
/// FAILED` (exit 1).
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
    let (proof, verdict) =
        cmbuild::ops::prove::verify_proof(&cmbuild::ops::prove::VerifyProofOptions {
            proof: args.proof,
            artifact: args.artifact,
            trusted_keys: args.trusted_keys,
            threshold: args.threshold,
            log_key: args.log_key,
        })?;
    // Everything below quotes the proof's contents: untrusted.
    let mut text = format!(
        "artifact {} sha256 {}\n",
        proof.artifact.name, proof.artifact.sha256
    );
    for why in &verdict.excluded {
        text.push_str(&format!("  excluded: {why}\n"));
    }
    text.push_str(&match &verdict.state {
        StateCheck::Absent => "  state proof: none in this proof\n".to_owned(),
        StateCheck::NotChecked => "  state proof: not checked (give --artifact)\n".to_owned(),
        StateCheck::Verified { machine, root_hash } => format!(
            "  state proof: the bytes lie on the output drive of {machine}, state hash {root_hash}\n"
        ),
        StateCheck::Failed(why) => format!("  state proof FAILED: {why}\n"),
    });
    let report = verdict.report.render();
    if verdict.passed {
        text.push_str(&report);
    } else {
        // The report's verdict may be PASSED for a build that does not list this artifact;
        // end with the proof's own verdict.
        text.push_str(&report.replace("Attestation check PASSED\n", ""));
        if verdict.report.passed && !matches!(verdict.state, StateCheck::Failed(_)) {
            text.push_str("  the attested build does not list this artifact with this sha256\n");
        }
        text.push_str("Attestation check FAILED\n");
    }
    print!("{}", cmbuild::terminal::sanitize(&text));
    Ok(if verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
