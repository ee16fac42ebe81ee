//! `cmbuild verify-attestations`: k-of-n agreement of trusted builders (see
//! [`cmbuild_trust::threshold`]).

use std::path::PathBuf;

use cmbuild_trust::build::{read_build_dir, BuildError};
use cmbuild_trust::keys::{read_trusted_keys, KeyError};
use cmbuild_trust::threshold::{evaluate, read_attestation_dir, ThresholdError, ThresholdReport};

/// Why the attestations could not be evaluated (a check that ran and failed is a failed
/// [`ThresholdReport`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyAttestationsError {
    /// The trusted keys could not be read.
    #[error("reading the trusted keys: {0}")]
    Keys(#[from] KeyError),
    /// The build directory could not be read or does not hold together.
    #[error("reading the build: {0}")]
    Build(#[from] BuildError),
    /// The attestations could not be read, or the threshold is impossible.
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
}

/// What `cmbuild verify-attestations` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyAttestationsOptions {
    /// The directory of envelopes.
    pub attestations: PathBuf,
    /// The trusted-keys file.
    pub trusted_keys: PathBuf,
    /// K.
    pub threshold: usize,
    /// A build directory the attestations must match.
    pub build_dir: Option<PathBuf>,
}

/// Evaluates the attestations.
pub fn verify_attestations(
    opts: &VerifyAttestationsOptions,
) -> Result<ThresholdReport, VerifyAttestationsError> {
    let trusted = read_trusted_keys(&opts.trusted_keys)?;
    let claim = match &opts.build_dir {
        Some(dir) => Some(read_build_dir(dir)?.claim()),
        None => None,
    };
    let files = read_attestation_dir(&opts.attestations)?;
    Ok(evaluate(&files, &trusted, opts.threshold, claim.as_ref())?)
}
