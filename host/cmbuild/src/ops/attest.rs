//! `cmbuild attest BUILD_DIR`: sign an in-toto/SLSA provenance statement of a build directory
//! (see [`cmbuild_trust::statement`]).

use std::io::Write as _;
use std::path::PathBuf;

use cmbuild_trust::build::{read_build_dir, BuildError};
use cmbuild_trust::dsse::DsseError;
use cmbuild_trust::keys::{KeyError, SecretKey};
use cmbuild_trust::statement::{self, rfc3339_utc, StatementError};

/// Why an attestation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The key could not be read.
    #[error("reading the key: {0}")]
    Key(#[from] KeyError),
    /// The build directory could not be read or does not hold together.
    #[error("reading the build: {0}")]
    Build(#[from] BuildError),
    /// The statement could not be made.
    #[error(transparent)]
    Statement(#[from] StatementError),
    /// The envelope could not be serialised.
    #[error(transparent)]
    Dsse(#[from] DsseError),
    /// The system clock is before 1970 (asked for --timestamp).
    #[error("the system clock is before 1970")]
    Clock,
    /// The envelope could not be written (an existing file is never overwritten).
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What `cmbuild attest` is asked to do.
#[derive(Clone, Debug)]
pub struct AttestOptions {
    /// The build directory.
    pub build_dir: PathBuf,
    /// The secret key file.
    pub key: PathBuf,
    /// Where the envelope goes (default: `BUILD_DIR/attestation-<keyid[..16]>.json`).
    pub out: Option<PathBuf>,
    /// The builder ID (default: `urn:cmbuild:keyid:<keyid>`).
    pub builder_id: Option<String>,
    /// Record the current time as `runDetails.metadata.finishedOn`.
    pub timestamp: bool,
}

/// An attestation written.
#[derive(Clone, Debug)]
pub struct Attested {
    /// Where it went.
    pub out: PathBuf,
    /// The signing key's ID.
    pub keyid: String,
    /// The commit attested.
    pub commit: String,
    /// How many artifacts (subjects).
    pub artifacts: usize,
    /// How many machines (root hashes).
    pub machines: usize,
}

/// Attests a build directory.
pub fn attest(opts: &AttestOptions) -> Result<Attested, AttestError> {
    let key = SecretKey::read(&opts.key)?;
    let keyid = key.public().keyid();
    let facts = read_build_dir(&opts.build_dir)?;
    let timestamp = if opts.timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| AttestError::Clock)?;
        Some(rfc3339_utc(now.as_secs()))
    } else {
        None
    };
    let options = statement::AttestOptions {
        builder_id: opts
            .builder_id
            .clone()
            .unwrap_or_else(|| format!("urn:cmbuild:keyid:{keyid}")),
        cmbuild_version: env!("CARGO_PKG_VERSION").to_owned(),
        timestamp,
    };
    let bytes = statement::attest(&facts, &options, &key)?.to_file_bytes()?;
    let out = opts.out.clone().unwrap_or_else(|| {
        opts.build_dir
            .join(format!("attestation-{}.json", &keyid[..16]))
    });
    let write_err = |source| AttestError::Write {
        path: out.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .map_err(write_err)?;
    file.write_all(&bytes).map_err(write_err)?;
    Ok(Attested {
        out,
        keyid,
        commit: facts.commit,
        artifacts: facts.artifacts.len(),
        machines: facts.machines.len(),
    })
}
