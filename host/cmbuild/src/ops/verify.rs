//! `cmbuild verify PUBLISHED`: rebuild what a published manifest lists, on the machine its
//! `machine.json` describes, and compare the rebuild with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cmbuild_image::triple::Triple;

use crate::compare::{CompareError, Report};
use crate::guest::{MachineSettings, SettingsError};
use crate::manifest::{self, RecordError};
use crate::pins::Pins;
use crate::project::{self, ProjectError};
use crate::run::{run_release, Offload, Progress, RunError, RunOptions};

/// Why a verification could not conclude (a rebuild that differs is a failed
/// [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The published records are unreadable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The published manifest names a commit the project lacks.
    #[error("the published build is of commit {commit}")]
    Commit {
        /// The commit.
        commit: String,
        /// Why it could not be resolved.
        #[source]
        source: ProjectError,
    },
    /// The published manifest's commit is not a full object id.
    #[error(
        "the published manifest names commit {0:?}, which is not a full hexadecimal object id"
    )]
    BadCommit(String),
    /// The published manifest's release name is not a plain revision name.
    #[error("the published manifest names release {0:?}, which is not a plain tag or branch name")]
    BadRelease(String),
    /// The project lacks the published release name.
    #[error(
        "the published build is of release {release}, which this project does not have (fetch \
         its tags: git fetch --tags)"
    )]
    Release {
        /// The release name.
        release: String,
        /// Why it could not be resolved.
        #[source]
        source: ProjectError,
    },
    /// The project's release name points at another commit than the published build's.
    #[error(
        "release {release} is commit {here} in this project, but the published build is of \
         commit {published}"
    )]
    ReleaseMoved {
        /// The release name.
        release: String,
        /// What it names in the project.
        here: String,
        /// What the published manifest says it named.
        published: String,
    },
    /// The published manifest lists nothing.
    #[error("the published manifest lists no artifacts")]
    NoArtifacts,
    /// The published manifest names a target cmbuild does not build.
    #[error("the published manifest names target {0:?}, which cmbuild does not build")]
    BadTarget(String),
    /// The published machine settings are refused.
    #[error("the published machine.json: {0}")]
    Settings(#[from] SettingsError),
    /// A rebuild failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The comparison could not be made.
    #[error(transparent)]
    Compare(#[from] CompareError),
}

/// What `cmbuild verify` is asked to do.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The published build directory (untrusted).
    pub published: PathBuf,
    /// The project's source.
    pub project_dir: PathBuf,
    /// The content-addressed mirror.
    pub mirror_dir: PathBuf,
    /// Where `cmbuild image build` wrote the guest image.
    pub image_dir: Option<PathBuf>,
    /// Where the rebuild goes; default `builds/verify/<commit prefix>`.
    pub out: Option<PathBuf>,
    /// Machines run at once.
    pub jobs: usize,
    /// The pins to build with.
    pub pins: Pins,
    /// Compute every offloaded job of the rebuild in a sibling, whatever the mirror's
    /// cache holds (see [`RunOptions::recompute_jobs`]).
    pub recompute_jobs: bool,
}

/// The machine settings a published build records in its `machine.json` (checked), or the
/// defaults for a record from before cmbuild recorded them (or no record: the comparison
/// then fails on the missing `machine.json`).
pub fn published_settings(published: &Path) -> Result<MachineSettings, VerifyError> {
    let path = published.join("machine.json");
    let settings = if path.exists() {
        manifest::read_machine_record(&path)?
            .config
            .unwrap_or_default()
    } else {
        MachineSettings::default()
    };
    settings.validate()?;
    Ok(settings)
}

/// Whether the published build handed its rustc jobs to siblings (its `machine.json` says
/// so); a record without one was not offloaded.
pub fn published_offload(published: &Path) -> Result<bool, VerifyError> {
    let path = published.join("machine.json");
    Ok(path.exists() && manifest::read_machine_record(&path)?.offload.is_some())
}

/// The rebuilds of a verification: one per machine of the published `machine.json` (its
/// targets, each checked to be a supported triple), else one per target of the manifest.
/// A machine that built several targets is rebuilt as one machine building the project's
/// configured targets (`cmbuild run --single-machine`); the comparison tells whether
/// those were the same.
pub fn rebuild_groups(
    targets: &BTreeSet<Triple>,
    published: &Path,
) -> Result<Vec<Vec<Triple>>, VerifyError> {
    let path = published.join("machine.json");
    let machines = if path.exists() {
        manifest::read_machine_record(&path)?.machines
    } else {
        Vec::new()
    };
    if machines.is_empty() {
        return Ok(targets.iter().map(|t| vec![*t]).collect());
    }
    machines
        .iter()
        .map(|m| {
            m.targets
                .iter()
                .map(|t| t.parse().map_err(|_| VerifyError::BadTarget(t.clone())))
                .collect()
        })
        .collect()
}

/// Rebuilds every target of the published manifest (one run per published machine, see
/// [`rebuild_groups`], on the machine settings the published `machine.json` records, else
/// the defaults) and compares.
pub fn verify(
    opts: &VerifyOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, VerifyError> {
    let published_manifest = opts.published.join("manifest.json");
    if manifest::record_schema(&published_manifest)? == crate::container::MANIFEST_SCHEMA {
        return verify_container(opts, progress);
    }
    let manifest = manifest::read_manifest(&published_manifest)?;
    // Every name taken from the published (untrusted) records is checked before it reaches
    // git or a path: the commit is a full hex object id (not an option, not a revision
    // expression), every target is a supported triple (so `OUT/<target>` stays in OUT).
    check_commit(&manifest.commit)?;
    let mut targets = BTreeSet::new();
    for artifact in &manifest.artifacts {
        let triple: Triple = artifact
            .target
            .parse()
            .map_err(|_| VerifyError::BadTarget(artifact.target.clone()))?;
        targets.insert(triple);
    }
    if targets.is_empty() {
        return Err(VerifyError::NoArtifacts);
    }
    let settings = published_settings(&opts.published)?;
    let offload = published_offload(&opts.published)?;
    let groups = rebuild_groups(&targets, &opts.published)?;
    let (release, out) = rebuild_of(opts, &manifest.commit, &manifest.release)?;
    let mut combined = Report::default();
    for group in groups {
        // One run per machine of the published build, so that each machine's identity is
        // the published one's: a single target alone, or the project's targets together.
        let names: Vec<&str> = group.iter().map(|t| t.as_str()).collect();
        let single = group.len() == 1;
        let run = RunOptions {
            project_dir: opts.project_dir.clone(),
            // Under the published name, so the rebuild's manifest names the same release.
            rev: release.clone(),
            target: single.then(|| group[0].to_string()),
            profile: None,
            // Triples only: the directory stays inside `out`.
            out_dir: out.join(names.join("+")),
            mirror_dir: opts.mirror_dir.clone(),
            image_dir: opts.image_dir.clone(),
            jobs: opts.jobs,
            machine: settings,
            machine_per_target: single,
            pins: opts.pins.clone(),
            // The toolchain the published build recorded (older manifests: the commit's
            // own choice).
            toolchain: manifest
                .artifacts
                .first()
                .and_then(|a| a.toolchain_version.clone()),
            stall_seconds: crate::watchdog::DEFAULT_STALL_SECONDS,
            perf_map: false,
            // Offloaded as the published build was: its build machines ran on the board
            // with the channel, so only that rebuild can reach its root hashes.
            offload: match offload {
                true => Offload::On,
                false => Offload::Off,
            },
            recompute_jobs: opts.recompute_jobs,
            scout: true,
        };
        let summary = run_release(&run, progress)?;
        // One verdict over every target's comparison.
        let report = super::compare::compare(&summary.dir, &opts.published)?;
        combined.compared.extend(report.compared);
        combined.findings.extend(report.findings);
    }
    Ok(combined)
}

/// The published `commit` in the project, the name to rebuild it under (the published
/// `release`, checked by [`release_revision`]) and where the rebuild goes (`--out`, else
/// `builds/verify/<commit prefix>`).
fn rebuild_of(
    opts: &VerifyOptions,
    commit: &str,
    release: &str,
) -> Result<(String, PathBuf), VerifyError> {
    let rev = project::resolve_revision(&opts.project_dir, commit).map_err(|source| {
        VerifyError::Commit {
            commit: commit.to_owned(),
            source,
        }
    })?;
    let release = release_revision(&opts.project_dir, release, &rev.commit)?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("builds/verify").join(&rev.commit[..12]));
    Ok((release, out))
}

/// A published commit must be a full hex object id (not an option, not a revision
/// expression) before it reaches git.
fn check_commit(commit: &str) -> Result<(), VerifyError> {
    let ok = matches!(commit.len(), 40 | 64)
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match ok {
        true => Ok(()),
        false => Err(VerifyError::BadCommit(commit.to_owned())),
    }
}

/// [`verify`] of a build from a Dockerfile: the same Dockerfile and stage of the published
/// commit, built again on the published machine settings, then compared.
fn verify_container(
    opts: &VerifyOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, VerifyError> {
    use crate::container::{ContainerManifest, ContainerOptions};
    let manifest: ContainerManifest = manifest::read_record(&opts.published.join("manifest.json"))?;
    check_commit(&manifest.commit)?;
    let container = ContainerOptions {
        dockerfile: manifest.dockerfile.clone(),
        target_stage: manifest.target_stage.clone(),
    };
    // Checked before the names reach a path or a plan.
    crate::container::check_options(&container).map_err(RunError::from)?;
    let settings = published_settings(&opts.published)?;
    let (release, out) = rebuild_of(opts, &manifest.commit, &manifest.release)?;
    let run = RunOptions {
        project_dir: opts.project_dir.clone(),
        rev: release,
        target: None,
        profile: None,
        out_dir: out.join("image"),
        mirror_dir: opts.mirror_dir.clone(),
        image_dir: opts.image_dir.clone(),
        jobs: opts.jobs,
        machine: settings,
        machine_per_target: false,
        pins: opts.pins.clone(),
        toolchain: None,
        stall_seconds: crate::watchdog::DEFAULT_STALL_SECONDS,
        perf_map: false,
        offload: Offload::Off,
        recompute_jobs: false,
        scout: false,
    };
    let summary = crate::container::run_container_release(&run, &container, progress)?;
    Ok(super::compare::compare(&summary.dir, &opts.published)?)
}

/// The revision to rebuild under: the published release name (a build records the name it
/// was asked for, and `compare` requires the same), once it is checked to be a plain name
/// that names the published commit in this project.
fn release_revision(
    project_dir: &Path,
    release: &str,
    commit: &str,
) -> Result<String, VerifyError> {
    if release == commit {
        return Ok(commit.to_owned());
    }
    let plain = !release.is_empty()
        && release.len() <= 200
        && !release.starts_with(['-', '.', '/'])
        && !release.ends_with(['/', '.'])
        && !release.contains("..")
        && !release.contains("//")
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+/".contains(&b));
    if !plain {
        return Err(VerifyError::BadRelease(release.to_owned()));
    }
    let here =
        project::resolve_revision(project_dir, release).map_err(|source| VerifyError::Release {
            release: release.to_owned(),
            source,
        })?;
    if here.commit != commit {
        return Err(VerifyError::ReleaseMoved {
            release: release.to_owned(),
            here: here.commit,
            published: commit.to_owned(),
        });
    }
    Ok(release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{to_canonical_json, MachineRecord, MACHINE_SCHEMA};

    fn publish(dir: &Path, config: Option<MachineSettings>) {
        let record = MachineRecord {
            schema: MACHINE_SCHEMA.into(),
            emulator_version: "0".into(),
            hash_scheme: "h".into(),
            inputs: Default::default(),
            machines: vec![],
            config,
            template: None,
            offload: None,
        };
        std::fs::write(dir.join("machine.json"), to_canonical_json(&record)).unwrap();
    }

    fn manifest_with(dir: &Path, commit: &str, target: &str) {
        let manifest = crate::manifest::Manifest {
            schema: crate::manifest::MANIFEST_SCHEMA.into(),
            release: "v1".into(),
            commit: commit.into(),
            artifacts: vec![crate::manifest::Artifact {
                package: "p".into(),
                target: target.into(),
                bin: "p".into(),
                bin_path: format!("{target}/p"),
                krate: "p".into(),
                version: "1.0.0".into(),
                crate_lock_sha256: cmbuild_store::sha256::Sha256::from_bytes([0; 32]),
                toolchain: cmbuild_store::cid::cid_of_bytes(b"t"),
                sha256: cmbuild_store::sha256::Sha256::from_bytes([0; 32]),
                cid: cmbuild_store::cid::cid_of_bytes(b"c"),
                abi: None,
                glibc_floor: None,
                toolchain_version: None,
            }],
        };
        std::fs::write(dir.join("manifest.json"), to_canonical_json(&manifest)).unwrap();
    }

    #[test]
    fn published_names_are_validated_before_they_reach_a_path_or_git() {
        let root = tempfile::tempdir().unwrap();
        let published = root.path().join("published");
        std::fs::create_dir(&published).unwrap();
        // A real project holding the commit, so that only the names can stop the rebuild.
        let project = root.path().join("project");
        std::fs::create_dir(&project).unwrap();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(&project)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["commit", "-q", "--allow-empty", "-m", "c"]);
        let head = std::process::Command::new("git")
            .arg("-C")
            .arg(&project)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        let commit = String::from_utf8(head.stdout).unwrap().trim().to_owned();
        let commit = commit.as_str();
        let out = root.path().join("deep/out");
        let opts = VerifyOptions {
            published: published.clone(),
            project_dir: project.clone(),
            mirror_dir: root.path().join("no-mirror"),
            image_dir: None,
            out: Some(out.clone()),
            jobs: 1,
            pins: Default::default(),
            recompute_jobs: false,
        };
        for target in [
            "../../escape",
            "/tmp/abs",
            "x86_64-unknown-linux-gnu/../../x",
        ] {
            manifest_with(&published, commit, target);
            let err = verify(&opts, &|_| {}).unwrap_err();
            assert!(matches!(err, VerifyError::BadTarget(_)), "{target}: {err}");
        }
        for bad in ["--output=/tmp/x", "HEAD~1", "0123"] {
            manifest_with(&published, bad, "x86_64-unknown-linux-gnu");
            let err = verify(&opts, &|_| {}).unwrap_err();
            assert!(matches!(err, VerifyError::BadCommit(_)), "{bad}: {err}");
        }
        // Nothing was created anywhere: not under --out, not beside it.
        let mut seen: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        seen.sort();
        assert_eq!(seen, ["project", "published"]);
    }

    #[test]
    fn the_rebuild_takes_the_published_release_name_only_where_it_names_the_commit() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(project)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        git(&["init", "-q"]);
        git(&["commit", "-q", "--allow-empty", "-m", "one"]);
        let first = git(&["rev-parse", "HEAD"]);
        git(&["tag", "v0.1.0"]);
        git(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let second = git(&["rev-parse", "HEAD"]);
        git(&["tag", "v0.2.0"]);

        // A tag-named build is rebuilt under its tag (so the manifests name the same release).
        assert_eq!(
            release_revision(project, "v0.1.0", &first).unwrap(),
            "v0.1.0"
        );
        // A build named by its commit stays so.
        assert_eq!(release_revision(project, &second, &second).unwrap(), second);
        // A tag that names another commit here is refused, naming both.
        let err = release_revision(project, "v0.2.0", &first).unwrap_err();
        assert!(
            matches!(&err, VerifyError::ReleaseMoved { here, published, .. }
                if *here == second && *published == first),
            "{err}"
        );
        // A name the project lacks says how to get it.
        let err = release_revision(project, "v9", &first).unwrap_err();
        assert!(matches!(err, VerifyError::Release { .. }), "{err}");
        assert!(err.to_string().contains("git fetch --tags"), "{err}");
        // Names that are options, revision expressions or paths never reach git.
        for bad in [
            "--output=/tmp/x",
            "HEAD~1",
            "v1^{tree}",
            "../x",
            "",
            "a..b",
            "v1 x",
        ] {
            let err = release_revision(project, bad, &first).unwrap_err();
            assert!(matches!(err, VerifyError::BadRelease(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rebuilds_follow_the_published_machines() {
        let dir = tempfile::tempdir().unwrap();
        let [x86, arm, riscv, ..] = Triple::ALL;
        let targets: BTreeSet<Triple> = [x86, arm].into();
        // No record: one rebuild per target.
        assert_eq!(
            rebuild_groups(&targets, dir.path()).unwrap(),
            vec![vec![arm], vec![x86]]
        );
        // A record: its machines, in its order.
        publish(dir.path(), None);
        let mut record = manifest::read_machine_record(&dir.path().join("machine.json")).unwrap();
        let run = |targets: &[Triple]| crate::manifest::MachineRun {
            targets: targets.iter().map(|t| t.to_string()).collect(),
            root_hash: "h".into(),
            mcycle: 1,
            exit_code: 0,
            jobs: Vec::new(),
        };
        record.machines = vec![run(&[x86, arm, riscv])];
        std::fs::write(dir.path().join("machine.json"), to_canonical_json(&record)).unwrap();
        assert_eq!(
            rebuild_groups(&targets, dir.path()).unwrap(),
            vec![vec![x86, arm, riscv]]
        );
        // A hostile target name in the record is refused.
        record.machines[0].targets.push("../../x".into());
        std::fs::write(dir.path().join("machine.json"), to_canonical_json(&record)).unwrap();
        assert!(matches!(
            rebuild_groups(&targets, dir.path()),
            Err(VerifyError::BadTarget(_))
        ));
    }

    #[test]
    fn the_rebuild_uses_the_published_machine_settings() {
        let dir = tempfile::tempdir().unwrap();
        let big = MachineSettings {
            ram_length: 8192 << 20,
            ..MachineSettings::default()
        };
        publish(dir.path(), Some(big));
        assert_eq!(published_settings(dir.path()).unwrap(), big);
        // A record from before the settings were recorded: the defaults it was built with.
        publish(dir.path(), None);
        assert_eq!(
            published_settings(dir.path()).unwrap(),
            MachineSettings::default()
        );
        // Hostile settings are refused before any machine is built.
        publish(
            dir.path(),
            Some(MachineSettings {
                ram_length: 1 << 50,
                ..MachineSettings::default()
            }),
        );
        assert!(matches!(
            published_settings(dir.path()),
            Err(VerifyError::Settings(_))
        ));
    }
}
