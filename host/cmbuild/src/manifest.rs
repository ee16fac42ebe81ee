//! `manifest.json` and `machine.json`: what a release build produced and how.
//!
//! Both are written with sorted keys, two-space indentation, a final newline and no
//! timestamps, so that two identical builds give byte-identical files. Readers treat them as
//! untrusted input: see [`crate::untrusted`] for how paths inside them are resolved.

use std::collections::BTreeMap;
use std::path::Path;

use cmbuild_store::cid::Cid;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use crate::guest::MachineSettings;

/// Identifies the manifest format; bumped on any incompatible change.
pub const MANIFEST_SCHEMA: &str = "cmbuild-manifest-v1";
/// Identifies the machine record format.
pub const MACHINE_SCHEMA: &str = "cmbuild-machine-v1";
/// Largest manifest or machine record cmbuild agrees to parse.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

/// The list of artifacts of one release build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// The revision the user asked for (tag or commit).
    pub release: String,
    /// The commit that revision resolved to.
    pub commit: String,
    /// Every binary built, sorted by (target, package, bin).
    pub artifacts: Vec<Artifact>,
}

/// One binary built for one target triple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// The Cargo package the binary belongs to.
    pub package: String,
    /// The target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// The binary target's name.
    pub bin: String,
    /// Where the binary lies, relative to the manifest's directory (`<target>/<bin>`).
    pub bin_path: String,
    /// The crate (package) name as the lock file spells it.
    #[serde(rename = "crate")]
    pub krate: String,
    /// The package's version.
    pub version: String,
    /// SHA-256 of the Cargo.lock the build used.
    pub crate_lock_sha256: Sha256,
    /// Content ID of the toolchain (the rustc and std of this target) that built it.
    pub toolchain: Cid,
    /// The version of that toolchain's rustc, e.g. `1.85.1`. Absent from manifests written
    /// before cmbuild recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain_version: Option<String>,
    /// SHA-256 of the binary, lowercase hex.
    pub sha256: Sha256,
    /// IPFS CIDv1 of the binary.
    pub cid: Cid,
    /// What the binary needs of the C library (its linkage, the highest glibc symbol
    /// version it requires and the oldest glibc that implies): a fact of the output,
    /// read from its bytes. Absent from manifests written before cmbuild recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<crate::glibc::Abi>,
    /// The glibc floor it was linked against (`2.36`: that release's pinned C runtime, the
    /// project's `glibc` in `cmbuild.toml`), an input like the toolchain. Absent when it was
    /// linked against the guest's own C runtime (no floor, or a target without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glibc_floor: Option<String>,
}

impl Artifact {
    /// The identity of an artifact across two builds.
    pub fn key(&self) -> ArtifactKey {
        ArtifactKey {
            target: self.target.clone(),
            package: self.package.clone(),
            bin: self.bin.clone(),
        }
    }
}

/// What names "the same artifact" in two builds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArtifactKey {
    /// The target triple.
    pub target: String,
    /// The Cargo package.
    pub package: String,
    /// The binary.
    pub bin: String,
}

impl std::fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.target, self.bin, self.package)
    }
}

/// How the machine that built a release was set up, and where it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRecord {
    /// Always [`MACHINE_SCHEMA`].
    pub schema: String,
    /// `cmbuild` version that ran the machine.
    pub emulator_version: String,
    /// The state-hash scheme, e.g. `cmvm-sha256-v1`.
    pub hash_scheme: String,
    /// Content ID of every input of the run, by name (kernel, firmware, initrd, rootfs, source, ...).
    pub inputs: BTreeMap<String, Cid>,
    /// One entry per machine that ran (one per target triple, or one for all).
    pub machines: Vec<MachineRun>,
    /// The machines' settings (RAM, drive sizes, mcycle limit). Absent from records written
    /// before cmbuild recorded it; readers then assume [`MachineSettings::default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineSettings>,
    /// The template machine every machine of the run resumed from (`cmbuild::template`).
    /// Absent from records written before cmbuild had templates (their machines booted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateUse>,
    /// How the build machines handed rustc jobs to siblings (issue 13): absent when the
    /// build was not offloaded. The siblings resumed from `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadUse>,
}

/// The offload channel of a run's build machines (`docs/parallel-builds.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadUse {
    /// `L`: a job submitted at `T` whose sibling ran `C` instructions is visible at
    /// `T + L + C`.
    pub latency: u64,
    /// The template the build machines (the parents) resumed from: the image booted on the
    /// board with the channel.
    pub parent_template: TemplateUse,
    /// Content ID of `cmbuild-offload`, the guest's side of the channel (compiled in a
    /// machine of `template`), on every parent's and sibling's input drive.
    pub tool: Cid,
}

/// The template a run's machines resumed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateUse {
    /// The template hash: the state hash at the guest's ready point, `cmvm-sha256-v1:<hex>`.
    pub hash: String,
    /// Content ID of the template blob (the packed snapshot) in the mirror.
    pub cid: Cid,
    /// `mcycle` at the ready point; each machine's `mcycle` counts from reset, so it
    /// includes these.
    pub mcycle: u64,
}

/// One machine's run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRun {
    /// The triples this machine built.
    pub targets: Vec<String>,
    /// Final state hash, `cmvm-sha256-v1:<hex>`.
    pub root_hash: String,
    /// Instructions retired plus traps taken, i.e. machine time at halt.
    pub mcycle: u64,
    /// The guest's exit code.
    pub exit_code: u32,
    /// Every job the machine handed to a sibling, in delivery order; the journal in its
    /// state (hence `root_hash`) commits to each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::offload::parent::JobRecord>,
}

/// Errors reading or writing build records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Could not read a build record.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The record's path.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A build record is larger than cmbuild accepts.
    #[error(
        "{path} is {size} bytes, more than the {MAX_RECORD_BYTES} bytes a build record may have"
    )]
    TooLarge {
        /// The record's path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A build record is not valid JSON of the expected shape.
    #[error("{path} is not a valid build record: {source}")]
    Parse {
        /// The record's path.
        path: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// A build record names a schema this cmbuild does not know.
    #[error("{path} has schema {found:?}; this cmbuild reads {expected:?}")]
    Schema {
        /// The record's path.
        path: String,
        /// The schema it names.
        found: String,
        /// The schema this cmbuild reads.
        expected: &'static str,
    },
}

/// Serialises a record as cmbuild writes it: sorted keys, 2-space indent, final newline.
pub fn to_canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // serde_json::Value keeps object keys in a BTreeMap (no `preserve_order` feature), so
    // going through it sorts every object's keys, nested ones included.
    let value = serde_json::to_value(value).expect("records always serialise");
    let mut out = serde_json::to_vec_pretty(&value).expect("values always serialise");
    out.push(b'\n');
    out
}

/// Reads a JSON build record (`manifest.json`, `machine.json`, or another kind's), size
/// capped, untrusted.
pub fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RecordError> {
    let shown = path.display().to_string();
    let bytes = crate::untrusted::read_capped(path, MAX_RECORD_BYTES).map_err(|e| match e {
        crate::untrusted::ReadError::TooLarge(size) => RecordError::TooLarge {
            path: shown.clone(),
            size,
        },
        crate::untrusted::ReadError::Io(source) => RecordError::Read {
            path: shown.clone(),
            source,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RecordError::Parse {
        path: shown,
        source,
    })
}

/// The `schema` a record at `path` declares (read size capped; nothing else is checked).
pub fn record_schema(path: &Path) -> Result<String, RecordError> {
    #[derive(Deserialize)]
    struct Schema {
        schema: String,
    }
    Ok(read_record::<Schema>(path)?.schema)
}

/// Reads `manifest.json`, checking its size and schema.
pub fn read_manifest(path: &Path) -> Result<Manifest, RecordError> {
    let manifest: Manifest = read_record(path)?;
    if manifest.schema != MANIFEST_SCHEMA {
        return Err(RecordError::Schema {
            path: path.display().to_string(),
            found: manifest.schema,
            expected: MANIFEST_SCHEMA,
        });
    }
    Ok(manifest)
}

/// Reads `machine.json`, checking its size and schema.
pub fn read_machine_record(path: &Path) -> Result<MachineRecord, RecordError> {
    let record: MachineRecord = read_record(path)?;
    if record.schema != MACHINE_SCHEMA {
        return Err(RecordError::Schema {
            path: path.display().to_string(),
            found: record.schema,
            expected: MACHINE_SCHEMA,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> Artifact {
        Artifact {
            package: "hello".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            bin: "hello".into(),
            bin_path: "x86_64-unknown-linux-gnu/hello".into(),
            krate: "hello".into(),
            version: "0.1.0".into(),
            crate_lock_sha256: Sha256::from_bytes([0; 32]),
            toolchain: cmbuild_store::cid::cid_of_bytes(b"toolchain"),
            sha256: Sha256::from_bytes([0x11; 32]),
            cid: cmbuild_store::cid::cid_of_bytes(b"bin"),
            abi: None,
            glibc_floor: None,
            toolchain_version: None,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_round_trips() {
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.into(),
            release: "v0.1.0".into(),
            commit: "ab".repeat(20),
            artifacts: vec![artifact()],
        };
        let bytes = to_canonical_json(&manifest);
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Keys of the artifact object appear in lexicographic order.
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("      \""))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(keys.contains(&"crate"));
        assert!(text.ends_with("}\n"));
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(to_canonical_json(&back), bytes);
    }

    #[test]
    fn junk_hashes_and_cids_are_refused_when_read() {
        let good = serde_json::to_string(&artifact()).unwrap();
        assert_eq!(serde_json::from_str::<Artifact>(&good).unwrap(), artifact());
        let cid = artifact().cid.to_string();
        let sha = artifact().sha256.to_string();
        for bad in [
            good.replace(&cid, "bafkreibin"),
            good.replace(&cid, "Qmfoo"),
            good.replace(&sha, "11"),
            good.replace(&sha, &"zz".repeat(32)),
        ] {
            assert_ne!(bad, good);
            assert!(serde_json::from_str::<Artifact>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_and_foreign_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, br#"{"schema":"cmbuild-manifest-v1","release":"r","commit":"c","artifacts":[],"extra":1}"#).unwrap();
        assert!(matches!(
            read_manifest(&path),
            Err(RecordError::Parse { .. })
        ));
        std::fs::write(
            &path,
            br#"{"schema":"other","release":"r","commit":"c","artifacts":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            read_manifest(&path),
            Err(RecordError::Schema { .. })
        ));
        std::fs::write(
            &path,
            br#"{"schema":"cmbuild-manifest-v1","release":"r","commit":"c","artifacts":[]}"#,
        )
        .unwrap();
        assert_eq!(read_manifest(&path).unwrap().artifacts.len(), 0);
    }
}
