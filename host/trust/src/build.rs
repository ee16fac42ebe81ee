//! What a build directory (`cmbuild run`'s output) says about itself, checked against its
//! files: the facts an attestation signs and a verifier compares.
//!
//! `manifest.json` and `machine.json` are read as untrusted input (size-capped, schema
//! checked, unknown fields ignored so that newer records still attest), every artifact path is
//! a plain relative `<triple>/<bin>` that goes through no symbolic link, and every artifact's
//! SHA-256 is recomputed from its file and must equal what the manifest claims.

use cmbuild_store::hex;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::files;

/// The manifest schema this crate reads.
pub const MANIFEST_SCHEMA: &str = "cmbuild-manifest-v1";
/// The machine record schema this crate reads.
pub const MACHINE_SCHEMA: &str = "cmbuild-machine-v1";
/// Largest manifest or machine record read.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;
/// Most artifacts or machines a record may list.
pub const MAX_ENTRIES: usize = 100_000;

/// Why a build directory could not be read or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file of the build could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A record is not JSON of the expected shape.
    #[error("{path} is not a valid build record: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A record names a schema this crate does not read.
    #[error("{path} has schema {found:?}; expected {expected:?}")]
    Schema {
        /// The file.
        path: String,
        /// The schema it names.
        found: String,
        /// The schema read.
        expected: &'static str,
    },
    /// A record lists more entries than are read.
    #[error("{0} lists more than {MAX_ENTRIES} entries")]
    TooMany(String),
    /// An artifact's target or bin name is not a plain name, or its path is not `<target>/<bin>`.
    #[error("artifact {0:?} has a target, bin name or path cmbuild never writes")]
    BadName(String),
    /// Two artifacts have the same `<target>/<bin>` name.
    #[error("artifact {0} is listed twice")]
    Duplicate(String),
    /// An artifact's file does not hash to what the manifest says.
    #[error("artifact {name}: the file's sha256 is {actual}, the manifest says {claimed}")]
    Mismatch {
        /// `<target>/<bin>`.
        name: String,
        /// What the manifest says.
        claimed: String,
        /// What the file hashes to.
        actual: String,
    },
}

#[derive(Deserialize)]
struct ManifestRecord {
    schema: String,
    release: String,
    commit: String,
    artifacts: Vec<ArtifactRecord>,
}

#[derive(Deserialize)]
struct ArtifactRecord {
    package: String,
    target: String,
    bin: String,
    bin_path: String,
    version: String,
    crate_lock_sha256: String,
    toolchain: String,
    sha256: String,
    cid: String,
}

#[derive(Deserialize)]
struct MachineRecordFile {
    schema: String,
    emulator_version: String,
    hash_scheme: String,
    inputs: BTreeMap<String, String>,
    machines: Vec<MachineRunRecord>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct MachineRunRecord {
    targets: Vec<String>,
    root_hash: String,
    mcycle: u64,
    exit_code: u32,
}

/// One artifact of a build, its hash recomputed from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactFact {
    /// `<target>/<bin>`: the attestation subject's name.
    pub name: String,
    /// The target triple.
    pub target: String,
    /// The Cargo package.
    pub package: String,
    /// The package version.
    pub version: String,
    /// SHA-256 of the binary, lowercase hex.
    pub sha256: String,
    /// IPFS CIDv1 of the binary, as the manifest gives it.
    pub cid: String,
    /// CID of the toolchain that built it.
    pub toolchain: String,
    /// SHA-256 of the Cargo.lock the build used.
    pub crate_lock_sha256: String,
}

/// One machine's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineFact {
    /// The triples it built.
    pub targets: Vec<String>,
    /// Its final state hash, `<scheme>:<hex>`.
    pub root_hash: String,
    /// Machine time at halt.
    pub mcycle: u64,
    /// The guest's exit code.
    pub exit_code: u32,
}

impl MachineFact {
    /// The machine's name in attestations: `machine/` and its targets joined by `,`.
    pub fn name(&self) -> String {
        format!("machine/{}", self.targets.join(","))
    }
}

/// Everything a build directory states, checked against its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildFacts {
    /// The revision asked for.
    pub release: String,
    /// The commit it resolved to.
    pub commit: String,
    /// Every artifact, in manifest order.
    pub artifacts: Vec<ArtifactFact>,
    /// The cmbuild version that ran the machines.
    pub emulator_version: String,
    /// The state-hash scheme.
    pub hash_scheme: String,
    /// Every machine input's CID, by name.
    pub inputs: BTreeMap<String, String>,
    /// Every machine run.
    pub machines: Vec<MachineFact>,
    /// String fields of `machine.json` whose names start with `template` (a machine
    /// template's hash, if the record has one).
    pub template: BTreeMap<String, String>,
    /// The machines' settings (`config` of `machine.json`: RAM, drive sizes, mcycle limit),
    /// when the record has them.
    pub machine_config: Option<BTreeMap<String, u64>>,
}

/// What a set of attestations must agree on: the commit, every subject's SHA-256 and every
/// machine's root hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    /// The commit built.
    pub commit: String,
    /// `<target>/<bin>` to SHA-256 (hex).
    pub subjects: BTreeMap<String, String>,
    /// `machine/<targets>` to root hash (`<scheme>:<hex>`).
    pub roots: BTreeMap<String, String>,
}

impl BuildFacts {
    /// The claim this build makes.
    pub fn claim(&self) -> Claim {
        Claim {
            commit: self.commit.clone(),
            subjects: self
                .artifacts
                .iter()
                .map(|a| (a.name.clone(), a.sha256.clone()))
                .collect(),
            roots: self
                .machines
                .iter()
                .map(|m| (m.name(), m.root_hash.clone()))
                .collect(),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, BuildError> {
    let shown = path.display().to_string();
    let bytes = files::read_capped(path, MAX_RECORD_BYTES).map_err(|source| BuildError::Io {
        path: shown.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| BuildError::Parse {
        path: shown,
        reason: e.to_string(),
    })
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\', '\0', ','])
        && !s.chars().any(char::is_control)
}

/// SHA-256 of a file below `dir` named by the untrusted relative path `rel` (already checked
/// to be `<plain>/<plain>`); no component may be a symbolic link.
fn hash_file_below(dir: &Path, rel: &str) -> std::io::Result<String> {
    let mut path = dir.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        if std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "goes through a symbolic link",
            ));
        }
    }
    if !std::fs::metadata(&path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    let mut file = File::open(&path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads `dir/manifest.json` and `dir/machine.json` and rehashes every artifact.
pub fn read_build_dir(dir: &Path) -> Result<BuildFacts, BuildError> {
    let manifest_path = dir.join("manifest.json");
    let manifest: ManifestRecord = read_json(&manifest_path)?;
    if manifest.schema != MANIFEST_SCHEMA {
        return Err(BuildError::Schema {
            path: manifest_path.display().to_string(),
            found: manifest.schema,
            expected: MANIFEST_SCHEMA,
        });
    }
    if manifest.artifacts.len() > MAX_ENTRIES {
        return Err(BuildError::TooMany(manifest_path.display().to_string()));
    }
    let machine_path = dir.join("machine.json");
    let machine: MachineRecordFile = read_json(&machine_path)?;
    if machine.schema != MACHINE_SCHEMA {
        return Err(BuildError::Schema {
            path: machine_path.display().to_string(),
            found: machine.schema,
            expected: MACHINE_SCHEMA,
        });
    }
    if machine.machines.len() > MAX_ENTRIES || machine.inputs.len() > MAX_ENTRIES {
        return Err(BuildError::TooMany(machine_path.display().to_string()));
    }
    let mut artifacts = Vec::with_capacity(manifest.artifacts.len());
    let mut seen = std::collections::BTreeSet::new();
    for a in manifest.artifacts {
        // `<target>/<bin>`, with the target's suffix (`.wasm`) where it has one.
        let name = match a.target.parse::<cmbuild_image::triple::Triple>() {
            Ok(triple) => format!("{triple}/{}", triple.artifact_name(&a.bin)),
            Err(_) => format!("{}/{}", a.target, a.bin),
        };
        if !plain_name(&a.target) || !plain_name(&a.bin) || a.bin_path != name {
            return Err(BuildError::BadName(a.bin_path));
        }
        if !seen.insert(name.clone()) {
            return Err(BuildError::Duplicate(name));
        }
        let actual = hash_file_below(dir, &name).map_err(|source| BuildError::Io {
            path: dir.join(&name).display().to_string(),
            source,
        })?;
        if actual != a.sha256 {
            return Err(BuildError::Mismatch {
                name,
                claimed: a.sha256,
                actual,
            });
        }
        artifacts.push(ArtifactFact {
            name,
            target: a.target,
            package: a.package,
            version: a.version,
            sha256: actual,
            cid: a.cid,
            toolchain: a.toolchain,
            crate_lock_sha256: a.crate_lock_sha256,
        });
    }
    let machine_config = match machine.rest.get("config") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<BTreeMap<String, u64>>(v.clone()).map_err(|e| {
                BuildError::Parse {
                    path: machine_path.display().to_string(),
                    reason: format!("config: {e}"),
                }
            })?,
        ),
    };
    let template = machine
        .rest
        .into_iter()
        .filter(|(k, _)| k.starts_with("template"))
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
        .collect();
    Ok(BuildFacts {
        release: manifest.release,
        commit: manifest.commit,
        artifacts,
        emulator_version: machine.emulator_version,
        hash_scheme: machine.hash_scheme,
        inputs: machine.inputs,
        machines: machine
            .machines
            .into_iter()
            .map(|m| MachineFact {
                targets: m.targets,
                root_hash: m.root_hash,
                mcycle: m.mcycle,
                exit_code: m.exit_code,
            })
            .collect(),
        template,
        machine_config,
    })
}
