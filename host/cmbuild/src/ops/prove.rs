//! `cmbuild prove` and `cmbuild verify-proof`: artifact proofs (see
//! [`cmbuild_trust::artifact`]).

use std::path::PathBuf;

use cmbuild_trust::artifact::{self, ArtifactProof, ArtifactProofError, ArtifactVerdict};
use cmbuild_trust::keys::{read_public_key, read_trusted_keys, KeyError};
use cmbuild_trust::tlog::{Log, LogError};

/// Why an artifact proof could not be made or checked (a proof that does not convince is a
/// failed [`ArtifactVerdict`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// A key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The proof could not be made, read or checked.
    #[error(transparent)]
    Proof(#[from] ArtifactProofError),
    /// The artifact file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What `cmbuild prove` is asked to do.
#[derive(Clone, Debug)]
pub struct ProveOptions {
    /// The build directory.
    pub build_dir: PathBuf,
    /// `<triple>/<bin>`.
    pub artifact: String,
    /// Where the envelopes are (default: the build directory).
    pub attestations: Option<PathBuf>,
    /// A transparency log to take inclusion proofs from.
    pub log: Option<PathBuf>,
}

/// Makes an artifact proof.
pub fn prove(opts: &ProveOptions) -> Result<ArtifactProof, ProveError> {
    let log = opts.log.as_deref().map(Log::open).transpose()?;
    let dir = opts.attestations.as_ref().unwrap_or(&opts.build_dir);
    Ok(artifact::prove(
        &opts.build_dir,
        &opts.artifact,
        dir,
        log.as_ref(),
    )?)
}

/// What `cmbuild verify-proof` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyProofOptions {
    /// The proof file.
    pub proof: PathBuf,
    /// The binary, if at hand.
    pub artifact: Option<PathBuf>,
    /// The trusted-keys file.
    pub trusted_keys: PathBuf,
    /// K.
    pub threshold: usize,
    /// The log's public key, to count only logged attestations.
    pub log_key: Option<PathBuf>,
}

/// Checks an artifact proof; returns the proof (for its artifact's name) and the verdict.
pub fn verify_proof(
    opts: &VerifyProofOptions,
) -> Result<(ArtifactProof, ArtifactVerdict), ProveError> {
    let proof = ArtifactProof::read(&opts.proof)?;
    let trusted = read_trusted_keys(&opts.trusted_keys)?;
    let log_key = opts.log_key.as_deref().map(read_public_key).transpose()?;
    let artifact = opts
        .artifact
        .as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|source| ProveError::Read {
                path: p.display().to_string(),
                source,
            })
        })
        .transpose()?;
    let verdict = proof.verify(
        artifact.as_deref(),
        &trusted,
        opts.threshold,
        log_key.as_ref(),
    )?;
    Ok((proof, verdict))
}
