//! `cmbuild compare A B`: is one build inside the other, byte for byte?
//!
//! Each side is a directory with `manifest.json` (and usually `machine.json`), treated as
//! untrusted. The smaller set of artifacts must be contained in the larger (a build of one
//! triple checks against a build of all three). For every shared artifact the comparison
//! separates *input drift* — the two builds did not start from the same inputs (crate,
//! version, Cargo.lock hash, toolchain), so a different output proves nothing — from
//! *output drift* — same inputs, different bytes: a reproducibility failure. Every hash a
//! manifest claims is recomputed from the file it names; a claim that does not match its
//! file fails the check whatever the other side says.
//!
//! The machine records are part of the check: a side without `machine.json`, or without
//! artifacts, fails; every machine of the smaller build must have a counterpart in the other
//! that built exactly the same targets and ended in the same state; and the records' inputs
//! (image pins, source and vendor CIDs) and machine settings are compared as input drift.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cmbuild_store::cid::Cid;
use cmbuild_store::sha256::Sha256;
use sha2::Digest;

use crate::manifest::{self, Artifact, ArtifactKey, MachineRecord, Manifest, RecordError};
use crate::untrusted;

/// Errors that stop a comparison before it can conclude.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A build record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A manifest lists the same artifact twice.
    #[error("{side}: manifest lists {key} twice")]
    DuplicateArtifact {
        /// The build directory.
        side: String,
        /// The artifact.
        key: ArtifactKey,
    },
}

/// One finding of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// An artifact of the smaller build is missing from the larger.
    Missing {
        /// The artifact.
        key: ArtifactKey,
        /// The build that lacks it.
        in_side: String,
    },
    /// The two builds started from different inputs for this artifact.
    InputDrift {
        /// The artifact.
        key: ArtifactKey,
        /// The input that differs.
        field: &'static str,
        /// Its value in the first build.
        a: String,
        /// Its value in the second build.
        b: String,
    },
    /// Same inputs, different output bytes.
    OutputDrift {
        /// The artifact.
        key: ArtifactKey,
        /// The output hash that differs.
        field: &'static str,
        /// Its value in the first build.
        a: String,
        /// Its value in the second build.
        b: String,
    },
    /// A manifest's claim does not match the file it names, or the file is unusable.
    BadArtifact {
        /// The build directory.
        side: String,
        /// The artifact.
        key: ArtifactKey,
        /// What is wrong.
        problem: String,
    },
    /// A build lists no artifacts: it proves nothing.
    NoArtifacts {
        /// The build directory.
        side: String,
    },
    /// A build has no `machine.json`: its machines' final states cannot be checked.
    NoMachineRecord {
        /// The build directory.
        side: String,
    },
    /// A machine of one build has no counterpart that built the same targets in the other
    /// (the builds grouped their targets differently).
    MachineMissing {
        /// The machine's targets, comma-separated.
        targets: String,
        /// The build that lacks it.
        in_side: String,
    },
    /// The machines started from different inputs (`machine.json` inputs or settings).
    MachineInputDrift {
        /// The input (`SOURCE_CID`, `GUEST_ROOTFS_CID`, `config`, ...).
        input: String,
        /// Its value in the first build.
        a: String,
        /// Its value in the second build.
        b: String,
    },
    /// The builds are of different releases: another commit or tag name.
    ReleaseDrift {
        /// `commit` or `release`.
        field: &'static str,
        /// The first build's value.
        a: String,
        /// The second build's value.
        b: String,
    },
    /// The machines' final state hashes (or their mcycle or exit code) differ.
    MachineDrift {
        /// Which machine (its targets) and which property, or the hash scheme.
        what: String,
        /// The first build's value.
        a: String,
        /// The second build's value.
        b: String,
    },
}

impl Finding {
    /// Whether the finding is about the builds' inputs rather than their reproducibility.
    pub fn is_input_drift(&self) -> bool {
        matches!(
            self,
            Finding::InputDrift { .. }
                | Finding::MachineInputDrift { .. }
                | Finding::ReleaseDrift { .. }
        )
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing { key, in_side } => write!(f, "missing: {key} is not in {in_side}"),
            Finding::InputDrift { key, field, a, b } => {
                write!(f, "input drift: {key}: {field} differs: {a} != {b}")
            }
            Finding::OutputDrift { key, field, a, b } => {
                write!(f, "output drift: {key}: {field} differs: {a} != {b}")
            }
            Finding::BadArtifact { side, key, problem } => {
                write!(f, "bad artifact: {side}: {key}: {problem}")
            }
            Finding::NoArtifacts { side } => {
                write!(f, "empty build: {side} lists no artifacts")
            }
            Finding::NoMachineRecord { side } => write!(
                f,
                "missing record: {side} has no machine.json, so its machines cannot be compared"
            ),
            Finding::MachineMissing { targets, in_side } => write!(
                f,
                "missing machine: no machine of {in_side} built exactly [{targets}] \
                 (the builds grouped their targets differently)"
            ),
            Finding::MachineInputDrift { input, a, b } => {
                write!(f, "input drift: machine input {input} differs: {a} != {b}")
            }
            Finding::ReleaseDrift { field, a, b } => {
                write!(f, "input drift: the builds' {field} differs: {a} != {b}")
            }
            Finding::MachineDrift { what, a, b } => {
                write!(f, "output drift: machine {what} differs: {a} != {b}")
            }
        }
    }
}

/// The result of comparing two builds.
#[derive(Debug, Default)]
pub struct Report {
    /// Artifacts present (and checked) on both sides.
    pub compared: Vec<ArtifactKey>,
    /// Everything that went wrong, in a stable order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when the smaller build is reproduced exactly inside the larger.
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Computes the IPFS CID of a file; supplied by the caller so this module stays independent
/// of how CIDs are computed.
pub type CidOfFile = dyn Fn(&Path) -> std::io::Result<Cid>;

/// Loaded, untrusted side of a comparison.
struct Side {
    name: String,
    dir: PathBuf,
    commit: String,
    release: String,
    artifacts: BTreeMap<ArtifactKey, Artifact>,
    machine: Option<MachineRecord>,
}

fn load_side(dir: &Path) -> Result<Side, CompareError> {
    let name = dir.display().to_string();
    let manifest: Manifest = manifest::read_manifest(&dir.join("manifest.json"))?;
    let machine_path = dir.join("machine.json");
    let machine = if machine_path.exists() {
        Some(manifest::read_machine_record(&machine_path)?)
    } else {
        None
    };
    let (commit, release) = (manifest.commit, manifest.release);
    let mut artifacts = BTreeMap::new();
    for artifact in manifest.artifacts {
        let key = artifact.key();
        if artifacts.insert(key.clone(), artifact).is_some() {
            return Err(CompareError::DuplicateArtifact { side: name, key });
        }
    }
    Ok(Side {
        name,
        dir: dir.to_path_buf(),
        commit,
        release,
        artifacts,
        machine,
    })
}

fn sha256_file(path: &Path) -> std::io::Result<Sha256> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256::from_bytes(hasher.finalize().into()))
}

/// Recomputes an artifact's hashes from its file; returns the problems found.
fn check_artifact(side: &Side, artifact: &Artifact, cid_of: &CidOfFile) -> Vec<String> {
    let mut problems = Vec::new();
    // Where run puts it: `<target>/<bin>` with the target's suffix (`.wasm`).
    let expected_path = match artifact.target.parse::<cmbuild_image::triple::Triple>() {
        Ok(triple) => format!("{triple}/{}", triple.artifact_name(&artifact.bin)),
        Err(_) => format!("{}/{}", artifact.target, artifact.bin),
    };
    if artifact.bin_path != expected_path {
        problems.push(format!(
            "bin_path {:?} is not {expected_path:?}",
            artifact.bin_path
        ));
    }
    let path = match untrusted::resolve_file(&side.dir, &artifact.bin_path) {
        Ok(path) => path,
        Err(e) => {
            problems.push(format!("bin_path refused: {e}"));
            return problems;
        }
    };
    match sha256_file(&path) {
        Ok(actual) if actual == artifact.sha256 => {}
        Ok(actual) => problems.push(format!(
            "manifest says sha256 {} but the file hashes to {actual}",
            artifact.sha256
        )),
        Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
    }
    match cid_of(&path) {
        Ok(actual) if actual == artifact.cid => {}
        Ok(actual) => problems.push(format!(
            "manifest says cid {} but the file is {actual}",
            artifact.cid
        )),
        Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
    }
    problems
}

/// Compares build directories `a` and `b`.
pub fn compare_builds(a: &Path, b: &Path, cid_of: &CidOfFile) -> Result<Report, CompareError> {
    // A build from a Dockerfile has its own manifest: one image, not per-triple binaries.
    let container = crate::container::MANIFEST_SCHEMA;
    if manifest::record_schema(&a.join("manifest.json"))? == container
        || manifest::record_schema(&b.join("manifest.json"))? == container
    {
        return crate::container::compare(a, b, cid_of);
    }
    let a = load_side(a)?;
    let b = load_side(b)?;
    let mut report = Report::default();

    // Every claim on both sides is checked against its file, shared or not.
    for side in [&a, &b] {
        for (key, artifact) in &side.artifacts {
            for problem in check_artifact(side, artifact, cid_of) {
                report.findings.push(Finding::BadArtifact {
                    side: side.name.clone(),
                    key: key.clone(),
                    problem,
                });
            }
        }
    }

    // Both must be builds of the same release: the same commit under the same tag.
    for (field, x, y) in [
        ("commit", &a.commit, &b.commit),
        ("release", &a.release, &b.release),
    ] {
        if x != y {
            report.findings.push(Finding::ReleaseDrift {
                field,
                a: crate::terminal::sanitize(x),
                b: crate::terminal::sanitize(y),
            });
        }
    }

    // The smaller set must lie inside the larger; with equal sizes, they must be equal.
    let (small, large) = if a.artifacts.len() <= b.artifacts.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    for key in small.artifacts.keys() {
        if !large.artifacts.contains_key(key) {
            report.findings.push(Finding::Missing {
                key: key.clone(),
                in_side: large.name.clone(),
            });
        }
    }
    if a.artifacts.len() == b.artifacts.len() {
        for key in large.artifacts.keys() {
            if !small.artifacts.contains_key(key) {
                report.findings.push(Finding::Missing {
                    key: key.clone(),
                    in_side: small.name.clone(),
                });
            }
        }
    }

    for (key, x) in &a.artifacts {
        let Some(y) = b.artifacts.get(key) else {
            continue;
        };
        report.compared.push(key.clone());
        // Typed equality decides; the texts are only for the report.
        let texts = |p: &dyn ToString, q: &dyn ToString| (p.to_string(), q.to_string());
        let floor_text = |f: &Option<String>| f.clone().unwrap_or_else(|| "none".to_owned());
        let inputs: [(&'static str, bool, (String, String)); 6] = [
            ("crate", x.krate == y.krate, texts(&x.krate, &y.krate)),
            (
                "version",
                x.version == y.version,
                texts(&x.version, &y.version),
            ),
            (
                "crate_lock_sha256",
                x.crate_lock_sha256 == y.crate_lock_sha256,
                texts(&x.crate_lock_sha256, &y.crate_lock_sha256),
            ),
            (
                "toolchain",
                x.toolchain == y.toolchain,
                texts(&x.toolchain, &y.toolchain),
            ),
            // Compared when both manifests record it (older ones do not).
            (
                "toolchain_version",
                x.toolchain_version.is_none()
                    || y.toolchain_version.is_none()
                    || x.toolchain_version == y.toolchain_version,
                (
                    x.toolchain_version.clone().unwrap_or_default(),
                    y.toolchain_version.clone().unwrap_or_default(),
                ),
            ),
            // The C runtime linked against (a project's glibc floor, or the guest's own).
            (
                "glibc_floor",
                x.glibc_floor == y.glibc_floor,
                (floor_text(&x.glibc_floor), floor_text(&y.glibc_floor)),
            ),
        ];
        for (field, same, (a, b)) in inputs {
            if !same {
                report.findings.push(Finding::InputDrift {
                    key: key.clone(),
                    field,
                    a,
                    b,
                });
            }
        }
        // What an artifact needs of the C library is read from its bytes: an output fact,
        // compared only when both manifests record it (older ones do not).
        let abi_text = |abi: &Option<crate::glibc::Abi>| match abi {
            Some(abi) => abi.summary(),
            None => "not recorded".to_owned(),
        };
        let same_abi = x.abi.is_none() || y.abi.is_none() || x.abi == y.abi;
        let outputs: [(&'static str, bool, (String, String)); 3] = [
            ("sha256", x.sha256 == y.sha256, texts(&x.sha256, &y.sha256)),
            ("cid", x.cid == y.cid, texts(&x.cid, &y.cid)),
            ("abi", same_abi, (abi_text(&x.abi), abi_text(&y.abi))),
        ];
        for (field, same, (a, b)) in outputs {
            if !same {
                report.findings.push(Finding::OutputDrift {
                    key: key.clone(),
                    field,
                    a,
                    b,
                });
            }
        }
    }

    // An empty build proves nothing, and a build without its machine record cannot be
    // checked where it matters most: the machines' final states.
    for side in [&a, &b] {
        if side.artifacts.is_empty() {
            report.findings.push(Finding::NoArtifacts {
                side: side.name.clone(),
            });
        }
        if side.machine.is_none() {
            report.findings.push(Finding::NoMachineRecord {
                side: side.name.clone(),
            });
        }
    }
    if let (Some(ma), Some(mb)) = (&a.machine, &b.machine) {
        let a_is_small = a.artifacts.len() <= b.artifacts.len();
        let both_ways = a.artifacts.len() == b.artifacts.len();
        compare_machines(&a.name, ma, &b.name, mb, a_is_small, both_ways, &mut report);
    }
    Ok(report)
}

/// Compares two machine records: their inputs and settings (input drift), and the final
/// state of every machine of the smaller build (both builds' when they are the same size),
/// which must have a counterpart that built exactly the same targets in the other.
/// Compares two builds' machine records (inputs, settings, template, and each machine's
/// final state), adding the findings to `report`; `a_is_small` and `both_ways` say which
/// side's machines need a counterpart in the other.
pub(crate) fn compare_machines(
    a_name: &str,
    ma: &MachineRecord,
    b_name: &str,
    mb: &MachineRecord,
    a_is_small: bool,
    both_ways: bool,
    report: &mut Report,
) {
    if ma.hash_scheme != mb.hash_scheme {
        report.findings.push(Finding::MachineDrift {
            what: "hash scheme".into(),
            a: ma.hash_scheme.clone(),
            b: mb.hash_scheme.clone(),
        });
        return;
    }
    let keys: BTreeSet<&String> = ma.inputs.keys().chain(mb.inputs.keys()).collect();
    for key in keys {
        let (x, y) = (ma.inputs.get(key), mb.inputs.get(key));
        if x != y {
            report.findings.push(Finding::MachineInputDrift {
                input: key.clone(),
                a: x.map_or_else(|| "(absent)".into(), Cid::to_string),
                b: y.map_or_else(|| "(absent)".into(), Cid::to_string),
            });
        }
    }
    let (ca, cb) = (ma.config.unwrap_or_default(), mb.config.unwrap_or_default());
    if ca != cb {
        let show = |c: &crate::guest::MachineSettings| {
            serde_json::to_string(c).unwrap_or_else(|_| format!("{c:?}"))
        };
        report.findings.push(Finding::MachineInputDrift {
            input: "config".into(),
            a: show(&ca),
            b: show(&cb),
        });
    }
    // The template the machines resumed from is an input too (it covers the image and the
    // settings, and the guest's whole boot).
    let template_hash = |m: &MachineRecord| {
        m.template
            .as_ref()
            .map_or_else(|| "(absent)".to_owned(), |t| t.hash.clone())
    };
    if template_hash(ma) != template_hash(mb) {
        report.findings.push(Finding::MachineInputDrift {
            input: "template".into(),
            a: template_hash(ma),
            b: template_hash(mb),
        });
    }
    // (the record whose machines need a counterpart, its name, the other record, its name,
    // whether the first is side a)
    let mut directions = Vec::new();
    if a_is_small || both_ways {
        directions.push((ma, mb, b_name, true));
    }
    if !a_is_small || both_ways {
        directions.push((mb, ma, a_name, false));
    }
    for (from, to, to_name, from_is_a) in directions {
        for run in &from.machines {
            match to.machines.iter().find(|o| o.targets == run.targets) {
                None => report.findings.push(Finding::MachineMissing {
                    targets: run.targets.join(","),
                    in_side: to_name.to_owned(),
                }),
                // Report each pair once, a's values first: the final state, and what the
                // records claim of how the machine got there.
                Some(other) if from_is_a || !both_ways => {
                    let (x, y) = if from_is_a {
                        (run, other)
                    } else {
                        (other, run)
                    };
                    let claims = [
                        ("root hash", x.root_hash.clone(), y.root_hash.clone()),
                        ("mcycle", x.mcycle.to_string(), y.mcycle.to_string()),
                        (
                            "exit code",
                            x.exit_code.to_string(),
                            y.exit_code.to_string(),
                        ),
                    ];
                    for (property, a, b) in claims {
                        if a != b {
                            report.findings.push(Finding::MachineDrift {
                                what: format!("[{}] {property}", run.targets.join(",")),
                                a,
                                b,
                            });
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{to_canonical_json, MachineRun, MACHINE_SCHEMA, MANIFEST_SCHEMA};
    use std::fs;

    fn fake_cid(path: &Path) -> std::io::Result<Cid> {
        cmbuild_store::cid::cid_of_file(path)
    }

    fn write_build(dir: &Path, bins: &[(&str, &[u8])], lock: &str) {
        fs::create_dir_all(dir).unwrap();
        let mut artifacts = Vec::new();
        for (target, bytes) in bins {
            fs::create_dir_all(dir.join(target)).unwrap();
            let path = dir.join(target).join("hello");
            fs::write(&path, bytes).unwrap();
            artifacts.push(Artifact {
                package: "hello".into(),
                target: (*target).into(),
                bin: "hello".into(),
                bin_path: format!("{target}/hello"),
                krate: "hello".into(),
                version: "0.1.0".into(),
                crate_lock_sha256: Sha256::of(lock),
                toolchain: cmbuild_store::cid::cid_of_bytes(b"tc"),
                sha256: sha256_file(&path).unwrap(),
                cid: fake_cid(&path).unwrap(),
                abi: Some(crate::glibc::Abi::of(bytes)),
                glibc_floor: None,
                toolchain_version: Some("1.85.1".into()),
            });
        }
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA.into(),
            release: "v0.1.0".into(),
            commit: "c".into(),
            artifacts,
        };
        fs::write(dir.join("manifest.json"), to_canonical_json(&manifest)).unwrap();
        // One machine per target, as `cmbuild run` does by default.
        let groups = bins.iter().map(|(t, _)| vec![*t]).collect();
        write_machines(dir, groups, "src");
    }

    fn write_machines(dir: &Path, groups: Vec<Vec<&str>>, source: &str) {
        let record = MachineRecord {
            schema: MACHINE_SCHEMA.into(),
            emulator_version: "0".into(),
            hash_scheme: "cmvm-sha256-v1".into(),
            inputs: [(
                "SOURCE_CID".to_string(),
                cmbuild_store::cid::cid_of_bytes(source.as_bytes()),
            )]
            .into(),
            machines: groups
                .into_iter()
                .map(|targets| MachineRun {
                    root_hash: format!("hash-{}", targets.join("+")),
                    targets: targets.into_iter().map(String::from).collect(),
                    mcycle: 1,
                    exit_code: 0,
                    jobs: Vec::new(),
                })
                .collect(),
            config: None,
            template: None,
            offload: None,
        };
        fs::write(dir.join("machine.json"), to_canonical_json(&record)).unwrap();
    }

    #[test]
    fn an_empty_build_fails() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[], "L");
        write_build(&b, &[], "L");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(!report.passed());
        assert!(matches!(report.findings[0], Finding::NoArtifacts { .. }));
    }

    #[test]
    fn a_missing_machine_record_fails() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        fs::remove_file(b.join("machine.json")).unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(!report.passed());
        assert!(matches!(
            &report.findings[..],
            [Finding::NoMachineRecord { side }] if side.ends_with("b")
        ));
    }

    #[test]
    fn a_different_grouping_fails_instead_of_skipping_the_root_hashes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one"), ("aarch64", b"two")], "L");
        write_build(&b, &[("x86_64", b"one"), ("aarch64", b"two")], "L");
        write_machines(&b, vec![vec!["x86_64", "aarch64"]], "src");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(!report.passed());
        let missing = report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::MachineMissing { .. }))
            .count();
        assert_eq!(missing, 3, "{:?}", report.findings);
        // A subset built in its own machine is inside a build of one machine per target.
        let c = t.path().join("c");
        write_build(&c, &[("x86_64", b"one")], "L");
        assert!(compare_builds(&c, &a, &fake_cid).unwrap().passed());
        // A different final state is output drift, reported once.
        write_machines(&c, vec![vec!["x86_64"]], "src");
        let mut record = crate::manifest::read_machine_record(&c.join("machine.json")).unwrap();
        record.machines[0].root_hash = "other".into();
        fs::write(c.join("machine.json"), to_canonical_json(&record)).unwrap();
        let report = compare_builds(&c, &a, &fake_cid).unwrap();
        assert!(matches!(
            &report.findings[..],
            [Finding::MachineDrift { a, .. }] if a == "other"
        ));
    }

    #[test]
    fn machine_inputs_are_compared() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        write_machines(&b, vec![vec!["x86_64"]], "other-src");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(matches!(
            &report.findings[..],
            [Finding::MachineInputDrift { input, .. }] if input == "SOURCE_CID"
        ));
        assert!(report.findings[0].is_input_drift());
        let mut record = crate::manifest::read_machine_record(&b.join("machine.json")).unwrap();
        record.inputs = [(
            "SOURCE_CID".to_string(),
            cmbuild_store::cid::cid_of_bytes(b"src"),
        )]
        .into();
        record.config = Some(crate::guest::MachineSettings {
            ram_length: 8192 << 20,
            ..Default::default()
        });
        fs::write(b.join("machine.json"), to_canonical_json(&record)).unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(matches!(
            &report.findings[..],
            [Finding::MachineInputDrift { input, .. }] if input == "config"
        ));
        record.config = None;
        record.template = Some(crate::manifest::TemplateUse {
            hash: "cmvm-sha256-v1:aa".into(),
            cid: cmbuild_store::cid::cid_of_bytes(b"template"),
            mcycle: 1,
        });
        fs::write(b.join("machine.json"), to_canonical_json(&record)).unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(matches!(
            &report.findings[..],
            [Finding::MachineInputDrift { input, .. }] if input == "template"
        ));
    }

    #[test]
    fn identical_builds_pass_and_subsets_are_inside() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one"), ("aarch64", b"two")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(report.passed(), "{:?}", report.findings);
        assert_eq!(report.compared.len(), 1);
    }

    #[test]
    fn flipped_byte_is_output_drift() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"onf")], "L");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(!report.passed());
        assert!(report.findings.iter().any(|f| matches!(
            f,
            Finding::OutputDrift {
                field: "sha256",
                ..
            }
        )));
        assert!(!report.findings.iter().any(Finding::is_input_drift));
    }

    /// Rewrites one side's recorded ABI of its first artifact.
    fn set_abi(dir: &Path, abi: Option<crate::glibc::Abi>) {
        let path = dir.join("manifest.json");
        let mut manifest: Manifest = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        manifest.artifacts[0].abi = abi;
        fs::write(&path, to_canonical_json(&manifest)).unwrap();
    }

    #[test]
    fn the_recorded_abi_is_an_output_fact() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        // A manifest written before cmbuild recorded it still compares.
        set_abi(&b, None);
        assert!(compare_builds(&a, &b, &fake_cid).unwrap().passed());
        set_abi(
            &b,
            Some(crate::glibc::Abi {
                linkage: "dynamic".into(),
                glibc_symbol: Some("GLIBC_2.39".into()),
                glibc_min: Some("2.39".into()),
            }),
        );
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(!report.passed());
        assert!(matches!(
            &report.findings[..],
            [Finding::OutputDrift { field: "abi", b, .. }] if b.contains("2.39")
        ));
    }

    #[test]
    fn another_toolchain_version_is_input_drift() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        let path = b.join("manifest.json");
        let mut manifest: Manifest = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        manifest.artifacts[0].toolchain_version = None;
        fs::write(&path, to_canonical_json(&manifest)).unwrap();
        assert!(compare_builds(&a, &b, &fake_cid).unwrap().passed());
        manifest.artifacts[0].toolchain_version = Some("1.96.0".into());
        fs::write(&path, to_canonical_json(&manifest)).unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(matches!(
            &report.findings[..],
            [Finding::InputDrift { field: "toolchain_version", a, b, .. }]
                if a == "1.85.1" && b == "1.96.0"
        ));
    }

    #[test]
    fn changed_lock_is_input_drift() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L1");
        write_build(&b, &[("x86_64", b"one")], "L2");
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert_eq!(report.findings.len(), 1);
        assert!(matches!(
            report.findings[0],
            Finding::InputDrift {
                field: "crate_lock_sha256",
                ..
            }
        ));
    }

    #[test]
    fn tampered_file_and_missing_artifact_fail() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one"), ("aarch64", b"two")], "L");
        write_build(&b, &[("x86_64", b"one"), ("riscv64", b"three")], "L");
        // A file changed after its manifest was written.
        fs::write(a.join("x86_64/hello"), b"ONE").unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        let bad = report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::BadArtifact { .. }))
            .count();
        assert_eq!(
            bad, 2,
            "sha256 and cid claims both fail: {:?}",
            report.findings
        );
        let missing = report
            .findings
            .iter()
            .filter(|f| matches!(f, Finding::Missing { .. }))
            .count();
        assert_eq!(missing, 2, "{:?}", report.findings);
    }

    #[test]
    fn symlinked_artifact_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_build(&a, &[("x86_64", b"one")], "L");
        write_build(&b, &[("x86_64", b"one")], "L");
        fs::remove_file(b.join("x86_64/hello")).unwrap();
        std::os::unix::fs::symlink(a.join("x86_64/hello"), b.join("x86_64/hello")).unwrap();
        let report = compare_builds(&a, &b, &fake_cid).unwrap();
        assert!(report.findings.iter().any(|f| matches!(
            f,
            Finding::BadArtifact { problem, .. } if problem.contains("symbolic link")
        )));
    }
}
