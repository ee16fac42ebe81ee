//! Artifact proofs: one small file that lets someone holding a single binary check, offline,
//! that at least K trusted builders attest it (and, optionally, that every counted attestation
//! is in a transparency log).
//!
//! When the build directory holds `proofs/<triple>/<bin>.json` (written by `cmbuild run`),
//! the proof also carries that state proof ([`crate::state_proof`]): the path from the
//! artifact's bytes through the output drive's page tree to the machine's state hash. The
//! verifier, given the artifact's bytes, recomputes that root hash and requires it to be the
//! one the counted attestations give for the machine that built the artifact's target.
//! Format, canonical JSON with a final newline:
//!
//! ```text
//! {"artifact": {"name": "<triple>/<bin>", "sha256": <hex>},
//!  "attestations": [{"envelope": <base64 of the attestation file's exact bytes>,
//!                    "inclusion": <inclusion proof, when the attestation is logged>}],
//!  "state": <state proof, when the build has one>,
//!  "type": "cmbuild-artifact-proof-v1"}
//! ```

use cmbuild_store::hex;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::build::{read_build_dir, BuildError};
use crate::canonical;
use crate::dsse::{Envelope, MAX_ENVELOPE_BYTES};
use crate::files;
use crate::keys::PublicKey;
use crate::state_proof::{StateProof, StateProofError};
use crate::statement::claim_of_statement;
use crate::threshold::{evaluate, ThresholdError, ThresholdReport};
use crate::tlog::{entry_of, InclusionProof, Log, LogError};

/// `type` of an artifact proof.
pub const ARTIFACT_PROOF_TYPE: &str = "cmbuild-artifact-proof-v1";
/// Largest artifact proof file read.
pub const MAX_ARTIFACT_PROOF_BYTES: u64 = 64 << 20;

/// Why an artifact proof could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactProofError {
    /// The build directory could not be read.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The build has no such artifact.
    #[error("the build has no artifact {0} (names are <triple>/<bin>)")]
    NoArtifact(String),
    /// No attestation names the artifact with its digest.
    #[error("no attestation in {dir} names {name} with sha256 {sha256}")]
    Unattested {
        /// The attestation directory.
        dir: String,
        /// The artifact.
        name: String,
        /// Its digest.
        sha256: String,
    },
    /// The log could not be read or proved.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The attestations could not be evaluated.
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The proof file is malformed.
    #[error("not an artifact proof: {0}")]
    Malformed(String),
    /// The artifact file given is not the one the proof is about.
    #[error("the artifact's sha256 is {actual}; the proof is about {claimed}")]
    WrongArtifact {
        /// What the proof names.
        claimed: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The proof could not be written canonically.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
    /// The build's state proof could not be read.
    #[error("the build's state proof: {0}")]
    State(#[from] StateProofError),
}

/// The artifact a proof is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenArtifact {
    /// `<triple>/<bin>`.
    pub name: String,
    /// SHA-256 of the binary, hex.
    pub sha256: String,
}

/// One attestation in an artifact proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofAttestation {
    /// Base64 of the attestation file's exact bytes.
    pub envelope: String,
    /// Its inclusion proof in a transparency log, if it is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<InclusionProof>,
}

/// An artifact proof file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactProof {
    /// Always [`ARTIFACT_PROOF_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The artifact.
    pub artifact: ProvenArtifact,
    /// Every attestation that names it.
    pub attestations: Vec<ProofAttestation>,
    /// The path from the artifact's bytes to its machine's state hash, when the build
    /// directory has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateProof>,
}

/// What became of an artifact proof's state proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateCheck {
    /// The proof carries none.
    Absent,
    /// Not checked: the artifact's bytes were not given.
    NotChecked,
    /// The bytes lie on the output drive of `machine`, whose root hash the counted
    /// attestations give as `root_hash`.
    Verified {
        /// `machine/<targets>`.
        machine: String,
        /// Its state hash.
        root_hash: String,
    },
    /// The state proof does not check, and why.
    Failed(String),
}

/// The outcome of checking an artifact proof.
#[derive(Debug)]
pub struct ArtifactVerdict {
    /// The k-of-n evaluation of the attestations that were counted.
    pub report: ThresholdReport,
    /// Attestations left out before counting (no valid log proof), and why.
    pub excluded: Vec<String>,
    /// The state proof's outcome.
    pub state: StateCheck,
    /// Whether K trusted keys attest this artifact with this digest (and, when the proof
    /// carries a state proof and the bytes were given, the bytes lie on the output drive of a
    /// machine whose root hash they attest).
    pub passed: bool,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Makes the proof for artifact `name` (`<triple>/<bin>`) of the build in `build_dir`:
/// every attestation file of `attestation_dir` whose statement names the artifact with the
/// build's digest, each with its inclusion proof in `log` when it is logged there.
///
/// Signatures are not checked here: the verifier does that against its own trusted keys.
pub fn prove(
    build_dir: &Path,
    name: &str,
    attestation_dir: &Path,
    log: Option<&Log>,
) -> Result<ArtifactProof, ArtifactProofError> {
    let facts = read_build_dir(build_dir)?;
    let artifact = facts
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ArtifactProofError::NoArtifact(name.to_owned()))?;
    let mut attestations = Vec::new();
    for (_, bytes) in crate::threshold::read_attestation_dir(attestation_dir)? {
        let names_it = Envelope::parse(&bytes)
            .ok()
            .and_then(|env| env.body().ok())
            .and_then(|body| claim_of_statement(&body).ok())
            .is_some_and(|(claim, _)| claim.subjects.get(name) == Some(&artifact.sha256));
        if !names_it {
            continue;
        }
        let inclusion = match log {
            Some(log) if log.index_of(&entry_of(&bytes)).is_some() => {
                Some(log.prove_inclusion(&bytes, None)?)
            }
            _ => None,
        };
        attestations.push(ProofAttestation {
            envelope: b64().encode(&bytes),
            inclusion,
        });
    }
    let state_path = build_dir
        .join("proofs")
        .join(format!("{}.json", artifact.name));
    let state = if state_path.is_file() {
        Some(StateProof::read(&state_path)?)
    } else {
        None
    };
    if attestations.is_empty() {
        return Err(ArtifactProofError::Unattested {
            dir: attestation_dir.display().to_string(),
            name: name.to_owned(),
            sha256: artifact.sha256.clone(),
        });
    }
    Ok(ArtifactProof {
        kind: ARTIFACT_PROOF_TYPE.to_owned(),
        artifact: ProvenArtifact {
            name: name.to_owned(),
            sha256: artifact.sha256.clone(),
        },
        attestations,
        state,
    })
}

impl ArtifactProof {
    /// Canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, ArtifactProofError> {
        let mut out = canonical::to_vec_of(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Reads a proof file (size-capped).
    pub fn read(path: &Path) -> Result<ArtifactProof, ArtifactProofError> {
        let bytes = files::read_capped(path, MAX_ARTIFACT_PROOF_BYTES).map_err(|source| {
            ArtifactProofError::Io {
                path: path.display().to_string(),
                source,
            }
        })?;
        let proof: ArtifactProof = serde_json::from_slice(&bytes)
            .map_err(|e| ArtifactProofError::Malformed(e.to_string()))?;
        if proof.kind != ARTIFACT_PROOF_TYPE {
            return Err(ArtifactProofError::Malformed(format!(
                "type is not {ARTIFACT_PROOF_TYPE}"
            )));
        }
        Ok(proof)
    }

    /// Checks the proof: `artifact` (the binary's bytes, when given) is the one named; at
    /// least `threshold` of the `trusted` keys attest the same build, whose subjects include
    /// the artifact with this digest; with `log_key`, only attestations with a valid
    /// inclusion proof signed by that log are counted.
    pub fn verify(
        &self,
        artifact: Option<&[u8]>,
        trusted: &[PublicKey],
        threshold: usize,
        log_key: Option<&PublicKey>,
    ) -> Result<ArtifactVerdict, ArtifactProofError> {
        if let Some(bytes) = artifact {
            let actual = hex::encode(entry_of(bytes));
            if actual != self.artifact.sha256 {
                return Err(ArtifactProofError::WrongArtifact {
                    claimed: self.artifact.sha256.clone(),
                    actual,
                });
            }
        }
        let mut counted = Vec::new();
        let mut excluded = Vec::new();
        for (i, att) in self.attestations.iter().enumerate() {
            let label = format!("attestation #{}", i + 1);
            let Ok(bytes) = b64().decode(&att.envelope) else {
                excluded.push(format!("{label}: the envelope is not base64"));
                continue;
            };
            if bytes.len() as u64 > MAX_ENVELOPE_BYTES {
                excluded.push(format!("{label}: larger than an attestation may be"));
                continue;
            }
            if let Some(key) = log_key {
                let logged = match &att.inclusion {
                    None => Err("it has no inclusion proof".to_owned()),
                    Some(p) => p.verify(key, Some(&bytes), None).map_err(|e| e.to_string()),
                };
                if let Err(why) = logged {
                    excluded.push(format!(
                        "{label}: not counted, not shown to be logged: {why}"
                    ));
                    continue;
                }
            }
            counted.push((label, bytes));
        }
        let report = evaluate(&counted, trusted, threshold, None)?;
        let names_it = report.reference.as_ref().is_some_and(|r| {
            r.claim.subjects.get(&self.artifact.name) == Some(&self.artifact.sha256)
        });
        let state = match (&self.state, artifact) {
            (None, _) => StateCheck::Absent,
            (Some(_), None) => StateCheck::NotChecked,
            (Some(proof), Some(bytes)) => self.check_state(proof, bytes, &report),
        };
        Ok(ArtifactVerdict {
            passed: report.passed && names_it && !matches!(state, StateCheck::Failed(_)),
            report,
            excluded,
            state,
        })
    }

    /// Recomputes the state hash from `bytes` and requires it to be the root hash the
    /// reference claim gives for the proof's machine, a machine that built this artifact's
    /// target.
    fn check_state(
        &self,
        proof: &StateProof,
        bytes: &[u8],
        report: &ThresholdReport,
    ) -> StateCheck {
        let triple = self.artifact.name.split('/').next().unwrap_or_default();
        let builds_it = proof
            .machine
            .strip_prefix("machine/")
            .is_some_and(|targets| targets.split(',').any(|t| t == triple));
        if !builds_it {
            return StateCheck::Failed(format!(
                "the state proof is about {}, which does not build {triple}",
                proof.machine
            ));
        }
        let root_hash = match proof.root_hash(bytes) {
            Ok(root) => root,
            Err(e) => return StateCheck::Failed(e.to_string()),
        };
        let attested = report
            .reference
            .as_ref()
            .and_then(|r| r.claim.roots.get(&proof.machine));
        match attested {
            Some(root) if *root == root_hash => StateCheck::Verified {
                machine: proof.machine.clone(),
                root_hash,
            },
            Some(root) => StateCheck::Failed(format!(
                "the bytes give {} the root hash {root_hash}; the attestations say {root}",
                proof.machine
            )),
            None => StateCheck::Failed(format!(
                "no counted attestation gives a root hash for {}",
                proof.machine
            )),
        }
    }
}
