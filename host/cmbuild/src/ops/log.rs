//! `cmbuild log append|head|prove|verify`: the transparency log kept as files (see
//! [`cmbuild_trust::tlog`]).

use std::path::{Path, PathBuf};

use cmbuild_trust::dsse::MAX_ENVELOPE_BYTES;
use cmbuild_trust::keys::{read_public_key, KeyError, SecretKey};
use cmbuild_trust::tlog::{ConsistencyProof, InclusionProof, Log, LogError, TreeHead};

/// Why a log operation could not run (a proof or log that does not verify is a failed
/// [`LogVerdict`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum LogOpError {
    /// A key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The log, a head or a proof could not be read, or a proof could not be made.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An attestation file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Offline verification needs the log's public key.
    #[error("--log-key FILE is needed to verify a proof without the log directory")]
    NoLogKey,
}

fn read_attestation(path: &Path) -> Result<Vec<u8>, LogOpError> {
    let err = |reason: String| LogOpError::Read {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_ENVELOPE_BYTES {
        return Err(err(format!(
            "larger than the {MAX_ENVELOPE_BYTES} bytes an attestation may have"
        )));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// Appends attestation files to the log in `dir` (created if absent) and signs a new head.
pub fn append(dir: &Path, key: &Path, attestations: &[PathBuf]) -> Result<TreeHead, LogOpError> {
    let key = SecretKey::read(key)?;
    let files = attestations
        .iter()
        .map(|p| read_attestation(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut log = Log::open_or_create(dir, &key)?;
    Ok(log.append(&key, &files)?)
}

/// The current signed head (`None` for an empty log), checked against the entries.
pub fn head(dir: &Path) -> Result<Option<TreeHead>, LogOpError> {
    Ok(Log::open(dir)?.head()?)
}

/// What proof `cmbuild log prove` makes.
#[derive(Clone, Debug)]
pub enum ProveRequest {
    /// That this attestation file is in the head of this size (default: current).
    Inclusion {
        /// The attestation file.
        attestation: PathBuf,
        /// The head's size.
        size: Option<u64>,
    },
    /// That the head of `from` entries is a prefix of the head of `to` (default: current).
    Consistency {
        /// The older size.
        from: u64,
        /// The newer size.
        to: Option<u64>,
    },
}

/// Makes a proof; returns the proof file's bytes.
pub fn prove(dir: &Path, request: &ProveRequest) -> Result<Vec<u8>, LogOpError> {
    let log = Log::open(dir)?;
    Ok(match request {
        ProveRequest::Inclusion { attestation, size } => log
            .prove_inclusion(&read_attestation(attestation)?, *size)?
            .to_file_bytes()?,
        ProveRequest::Consistency { from, to } => {
            log.prove_consistency(*from, *to)?.to_file_bytes()?
        }
    })
}

/// What `cmbuild log verify` checks.
#[derive(Clone, Debug)]
pub enum VerifyRequest {
    /// An inclusion proof, optionally of this attestation file and at this trusted head.
    Inclusion {
        /// The proof file.
        proof: PathBuf,
        /// The attestation file.
        attestation: Option<PathBuf>,
        /// A trusted head file.
        head: Option<PathBuf>,
    },
    /// A consistency proof, optionally from this older head seen published.
    Consistency {
        /// The proof file.
        proof: PathBuf,
        /// The older head file.
        old_head: Option<PathBuf>,
    },
    /// Every signed head of the log directory against its entries.
    Audit,
}

/// What `cmbuild log verify` found.
#[derive(Clone, Debug)]
pub struct LogVerdict {
    /// Whether everything verified.
    pub passed: bool,
    /// What was shown, or why it was refused.
    pub message: String,
}

/// Verifies a proof offline (with `log_key`, or the `log.pub` of `log_dir`) or audits
/// `log_dir`.
pub fn verify(
    log_dir: Option<&Path>,
    log_key: Option<&Path>,
    request: &VerifyRequest,
) -> Result<LogVerdict, LogOpError> {
    let key = match (log_key, log_dir) {
        (Some(path), _) => read_public_key(path)?,
        (None, Some(dir)) => read_public_key(&dir.join("log.pub"))?,
        (None, None) => return Err(LogOpError::NoLogKey),
    };
    let outcome: Result<String, LogError> = match request {
        VerifyRequest::Inclusion {
            proof,
            attestation,
            head,
        } => {
            let proof = InclusionProof::read(proof)?;
            let attestation = attestation.as_deref().map(read_attestation).transpose()?;
            let head = head.as_deref().map(TreeHead::read).transpose()?;
            proof
                .verify(&key, attestation.as_deref(), head.as_ref())
                .map(|()| {
                    format!(
                        "entry {} is at index {} of the log's signed head of size {}",
                        proof.entry, proof.leaf_index, proof.tree_head.tree_size
                    )
                })
        }
        VerifyRequest::Consistency { proof, old_head } => {
            let proof = ConsistencyProof::read(proof)?;
            let old = old_head.as_deref().map(TreeHead::read).transpose()?;
            let from = old.as_ref().unwrap_or(&proof.from_head).tree_size;
            proof.verify(&key, old.as_ref()).map(|()| {
                format!(
                    "the log's head of size {} extends its head of size {from}",
                    proof.to_head.tree_size
                )
            })
        }
        VerifyRequest::Audit => {
            let dir = log_dir.ok_or(LogOpError::NoLogKey)?;
            Log::open(dir).and_then(|log| {
                if log.key() != key {
                    return Err(LogError::WrongKey {
                        given: key.keyid(),
                        log: log.key().keyid(),
                    });
                }
                let sizes = log.audit()?;
                Ok(format!(
                    "{}: {} signed head(s) match the entries",
                    dir.display(),
                    sizes.len()
                ))
            })
        }
    };
    Ok(match outcome {
        Ok(message) => LogVerdict {
            passed: true,
            message,
        },
        Err(e) => LogVerdict {
            passed: false,
            message: e.to_string(),
        },
    })
}
