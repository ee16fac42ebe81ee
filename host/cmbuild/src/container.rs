//! A release built from a Dockerfile (issue 15): `cmbuild run --release REV --dockerfile
//! PATH [--target-stage S]` builds the commit's Dockerfile with buildah inside the
//! deterministic machine, offline, and exports the image as an OCI image layout archive.
//!
//! The flow: the commit's tree (the build context) and its Dockerfile, read confined to
//! the tree; every base image the Dockerfile names must be pinned by digest and vendored
//! (`cmbuild vendor --dockerfile`), and is linux/riscv64 by construction (vendoring refuses
//! any other); the container layer ([`cmbuild_image::containers`]) is assembled on first
//! use like the rest of the image. One machine resumes from the template of the container
//! settings ([`settings`]: a larger scratch drive, so its own template, derived on first
//! use), with the tree, the base images as OCI layouts and the hook
//! (`guest-image/containers-build.sh`) on its input drive and the layer on its scratch
//! drive ([`cmbuild_image::containers::scratch_drive`]). The guest writes the image as an
//! OCI layout; the host checks every blob of it against its digest, packs it into
//! `image.tar` (a deterministic tar: sorted, fixed owner and times), and writes
//! `manifest.json` (the image's digest and the archive's CID) and `machine.json`.
//!
//! Determinism comes from the machine, as for a Rust build: buildah's own choices (layer
//! tar order, times, random ids) are the machine's, so the same inputs give the same
//! image, digest and root hash on every host; `--timestamp SOURCE_DATE_EPOCH` makes the
//! times meaningful ones (the commit's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cmbuild_image::rootfs::Tree;
use cmbuild_store::cid::{cid_of_bytes, Cid};
use cmbuild_store::dockerfile::{self, BaseImage};
use cmbuild_store::mirror::Mirror;
use cmbuild_store::oci::{self, ImageRecord, ManifestDoc, OciDigest};
use serde::{Deserialize, Serialize};

use crate::guest::{drive_bytes, Drive, MachineSettings};
use crate::manifest::{to_canonical_json, MachineRecord, MachineRun, TemplateUse};
use crate::mapped::DriveImage;
use crate::run::{Progress, RunError, RunOptions};
use crate::staging;
use crate::{pins, untrusted};

/// The hook a container build's input drive carries as `containers/build.sh`.
pub const BUILD_SCRIPT: &str = include_str!("../../../guest-image/containers-build.sh");

/// The schema of a container build's `manifest.json`.
pub const MANIFEST_SCHEMA: &str = "cmbuild-container-manifest-v1";

/// The image archive's name in the release directory.
pub const ARCHIVE: &str = "image.tar";

/// The scratch drive of a container build: the layer, then container storage.
pub const SCRATCH_LENGTH: u64 = 4 << 30;

/// Largest Dockerfile read from the commit.
const MAX_DOCKERFILE: u64 = dockerfile::MAX_DOCKERFILE_SIZE as u64;

/// Largest image the host reads back from the output drive.
const MAX_IMAGE_BYTES: u64 = 2 << 30;

/// The input drive's volume UUID (fixed: the drive is a function of its files).
const INPUT_UUID: [u8; 16] = *b"cmbuild-ctr-in-1";

/// Why a container build failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `--dockerfile` is not a plain relative path inside the project.
    #[error("--dockerfile {0:?}: give a path relative to the project, inside it (no `..`)")]
    DockerfilePath(String),
    /// `--target-stage` is not a stage name.
    #[error("--target-stage {0:?} is not a stage name (letters, digits, `-`, `_`, `.`)")]
    Stage(String),
    /// The commit has no such Dockerfile.
    #[error("{rev} has no {path} (the Dockerfile is read from the commit, not the work tree)")]
    NoDockerfile {
        /// The revision.
        rev: String,
        /// The path asked for.
        path: String,
    },
    /// The Dockerfile could not be read from the commit.
    #[error("reading {path} from the commit")]
    ReadDockerfile {
        /// The path.
        path: String,
        /// What failed.
        #[source]
        source: untrusted::ReadError,
    },
    /// The Dockerfile names an image that is not pinned by digest (or cannot be parsed).
    #[error(transparent)]
    Dockerfile(#[from] dockerfile::DockerfileError),
    /// A base image is not in the mirror.
    #[error(
        "the base image {reference} ({file} line {line}) is not in the mirror {mirror}; run \
         `cmbuild vendor --dockerfile {file}` first"
    )]
    NotVendored {
        /// The reference.
        reference: String,
        /// The Dockerfile.
        file: String,
        /// Its line.
        line: usize,
        /// The mirror.
        mirror: String,
    },
    /// A vendored base image is not linux/riscv64.
    #[error(
        "the base image {reference} is {platform}; the machine builds linux/riscv64 images only"
    )]
    Foreign {
        /// The reference.
        reference: String,
        /// Its platform.
        platform: String,
    },
    /// The mirror failed.
    #[error("the mirror: {0}")]
    Mirror(String),
    /// The container layer could not be assembled or read.
    #[error("the container layer: {0}")]
    Layer(String),
    /// The guest's build failed; its first error and log tail are shown.
    #[error("the container build failed ({what}); the end of its log:\n{log}")]
    Failed {
        /// The step that failed (`build`, `base-image`, ...).
        what: String,
        /// The end of the log.
        log: String,
    },
    /// The image the guest wrote is refused.
    #[error("the image the machine wrote is refused: {0}")]
    Image(String),
    /// The two builds of `--test-reproduce` differ.
    #[error("not reproduced: run 1 gave image {first} (root {first_root}), run 2 image {second} (root {second_root})")]
    NotReproduced {
        /// Run 1's image digest.
        first: OciDigest,
        /// Run 1's root hash.
        first_root: String,
        /// Run 2's image digest.
        second: OciDigest,
        /// Run 2's root hash.
        second_root: String,
    },
}

impl From<ContainerError> for RunError {
    fn from(e: ContainerError) -> RunError {
        RunError::Container(Box::new(e))
    }
}

/// What to build from a Dockerfile.
#[derive(Clone, Debug)]
pub struct ContainerOptions {
    /// The Dockerfile, relative to the project directory.
    pub dockerfile: String,
    /// The stage to build (`--target`), else the last.
    pub target_stage: Option<String>,
}

/// `manifest.json` of a container build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerManifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// The revision asked for.
    pub release: String,
    /// The commit it resolved to.
    pub commit: String,
    /// `SOURCE_DATE_EPOCH`: the commit time, every time in the image.
    pub source_date_epoch: u64,
    /// The Dockerfile, relative to the project.
    pub dockerfile: String,
    /// The stage built, when not the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_stage: Option<String>,
    /// The image built.
    pub image: BuiltImage,
    /// The base images, as the Dockerfile names them, with the linux/riscv64 manifest used.
    pub base_images: Vec<BaseUse>,
}

/// The image a container build produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltImage {
    /// The image manifest's digest: what `docker pull REPO@DIGEST` names.
    pub digest: OciDigest,
    /// The config's digest (the image id).
    pub config: OciDigest,
    /// The platform (`linux/riscv64`).
    pub platform: String,
    /// The OCI image layout archive, relative to the manifest's directory.
    pub archive: String,
    /// Its content ID.
    pub archive_cid: Cid,
    /// Its size in bytes.
    pub archive_size: u64,
}

/// One base image of a container build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseUse {
    /// The reference, as vendored.
    pub reference: String,
    /// The linux/riscv64 manifest's digest.
    pub manifest: OciDigest,
}

/// What a container build left.
#[derive(Debug)]
pub struct ContainerSummary {
    /// `OUT/REV`.
    pub dir: PathBuf,
    /// Its `manifest.json`.
    pub manifest: ContainerManifest,
    /// Its `machine.json`.
    pub machine: MachineRecord,
}

/// The machine settings of a container build: `base`'s, with the scratch drive that holds
/// the layer and the storage.
pub fn settings(base: &MachineSettings) -> MachineSettings {
    MachineSettings {
        scratch_length: SCRATCH_LENGTH,
        ..*base
    }
}

/// Checks `--dockerfile` and `--target-stage` before anything is read.
pub fn check_options(opts: &ContainerOptions) -> Result<(), ContainerError> {
    let path = &opts.dockerfile;
    let plain = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+'));
    if !plain {
        return Err(ContainerError::DockerfilePath(path.clone()));
    }
    if let Some(stage) = &opts.target_stage {
        let ok = !stage.is_empty()
            && stage.len() <= 128
            && !stage.starts_with(['-', '.'])
            && stage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(ContainerError::Stage(stage.clone()));
        }
    }
    Ok(())
}

/// `plan.env` of a container build: the driver's plan version, the commit time, the
/// Dockerfile and stage, and the hook. Values are checked by [`check_options`] (no quote
/// can appear in them).
pub fn plan_env(opts: &ContainerOptions, source_date_epoch: u64) -> String {
    format!(
        "CMBUILD_PLAN_VERSION='2'\nSOURCE_DATE_EPOCH='{source_date_epoch}'\n\
         CONTAINER_DOCKERFILE='{}'\nCONTAINER_TARGET_STAGE='{}'\n\
         . /build/in/containers/build.sh\n",
        opts.dockerfile,
        opts.target_stage.as_deref().unwrap_or("")
    )
}

/// One base image on the input drive: its record and its blobs' bytes (read verified).
pub struct BaseLayout<'a> {
    /// The image's record.
    pub record: &'a ImageRecord,
    /// The name the guest gives it (`registry/repository`).
    pub repository: String,
}

/// The input drive of a container build: `plan.env`, the hook, the source tree under
/// `src/`, and each base image as an OCI image layout under `containers/images/N/`
/// (its index.json listing the document the reference names, index or manifest), with
/// `containers/images.list`.
pub fn input_drive(
    opts: &ContainerOptions,
    source_tar: &[u8],
    source_date_epoch: u64,
    bases: &[BaseLayout<'_>],
    blob: &dyn Fn(&Cid) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, ContainerError> {
    let input = |e: &dyn std::fmt::Display| ContainerError::Mirror(e.to_string());
    let mut tree = Tree::new();
    tree.add_file(
        "plan.env",
        0o644,
        plan_env(opts, source_date_epoch).into_bytes(),
    )
    .map_err(|e| input(&e))?;
    tree.add_file(
        "containers/build.sh",
        0o644,
        BUILD_SCRIPT.as_bytes().to_vec(),
    )
    .map_err(|e| input(&e))?;
    let mut list = String::new();
    for (n, base) in bases.iter().enumerate() {
        let dir = format!("containers/images/{n}");
        let record = base.record;
        let root = record.index.as_ref().unwrap_or(&record.manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": root.media_type,
                "digest": root.digest.to_string(),
                "size": root.size,
            }],
        });
        tree.add_file(
            &format!("{dir}/oci-layout"),
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )
        .map_err(|e| input(&e))?;
        tree.add_file(
            &format!("{dir}/index.json"),
            0o644,
            serde_json::to_vec(&index).expect("JSON values serialise"),
        )
        .map_err(|e| input(&e))?;
        for b in record.blobs() {
            let bytes = blob(&b.cid).map_err(|e| {
                ContainerError::Mirror(format!("blob {} of {}: {e}", b.digest, record.reference))
            })?;
            let path = format!("{dir}/blobs/sha256/{}", b.digest.sha256());
            if !tree.exists(&path) {
                tree.add_file(&path, 0o644, bytes).map_err(|e| input(&e))?;
            }
        }
        list.push_str(&format!("{n} {}\n", base.repository));
    }
    tree.add_file("containers/images.list", 0o644, list.into_bytes())
        .map_err(|e| input(&e))?;
    tree.add_dir("src", 0o755).map_err(|e| input(&e))?;
    let mut entries = cmbuild_image::deb::read_tar(source_tar).map_err(|e| input(&e))?;
    for entry in &mut entries {
        entry.path = format!("src/{}", entry.path);
        if let cmbuild_image::deb::Node::Hardlink(target) = &mut entry.node {
            *target = format!("src/{target}");
        }
    }
    tree.install(&entries).map_err(|e| input(&e))?;
    crate::plan::drive_image(&tree, INPUT_UUID, "cmbuild-ctr-input", source_date_epoch)
        .map_err(|e| input(&e))
}

/// An OCI image layout, read and checked ([`read_layout`]).
#[derive(Debug)]
pub struct Layout {
    /// The image manifest's digest.
    pub manifest: OciDigest,
    /// The config's digest.
    pub config: OciDigest,
    /// Every file of the layout (relative path, bytes), sorted by path.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The image the guest wrote under `dir` (an OCI image layout), checked: `index.json`
/// names one manifest, every blob the manifest reaches is present under its digest and
/// hashes to it, and the config is linux/riscv64.
pub fn read_layout(dir: &Path) -> Result<Layout, ContainerError> {
    let bad = |what: String| ContainerError::Image(what);
    let read = |rel: &str, max: u64| {
        untrusted::read_confined(dir, rel, max)
            .map_err(|e| bad(format!("{rel}: {e}")))?
            .ok_or_else(|| bad(format!("no {rel}")))
    };
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<oci::Descriptor>,
    }
    let index: Index = serde_json::from_slice(&read("index.json", 1 << 20)?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let [descriptor] = &index.manifests[..] else {
        return Err(bad(format!(
            "index.json lists {} manifests, not one",
            index.manifests.len()
        )));
    };
    let mut files = BTreeMap::new();
    files.insert("oci-layout".to_owned(), read("oci-layout", 4096)?);
    files.insert("index.json".to_owned(), read("index.json", 1 << 20)?);
    let mut blob = |digest: &OciDigest, size: u64| -> Result<Vec<u8>, ContainerError> {
        let rel = format!("blobs/sha256/{}", digest.sha256());
        let bytes = read(&rel, size.min(MAX_IMAGE_BYTES))?;
        if bytes.len() as u64 != size || OciDigest::of(&bytes) != *digest {
            return Err(bad(format!("{rel} does not match its descriptor")));
        }
        files.insert(rel, bytes.clone());
        Ok(bytes)
    };
    let manifest_bytes = blob(
        &descriptor.digest,
        descriptor.size.min(oci::MAX_MANIFEST_SIZE),
    )?;
    let ManifestDoc::Manifest(manifest) =
        ManifestDoc::parse(descriptor.digest, &manifest_bytes).map_err(|e| bad(e.to_string()))?
    else {
        return Err(bad(
            "index.json names an index, not an image manifest".into()
        ));
    };
    manifest
        .check(descriptor.digest)
        .map_err(|e| bad(e.to_string()))?;
    let config = blob(&manifest.config.digest, manifest.config.size)?;
    oci::check_config_platform(manifest.config.digest, &config).map_err(|e| bad(e.to_string()))?;
    let mut total = 0u64;
    for layer in &manifest.layers {
        total = total.saturating_add(layer.size);
        if total > MAX_IMAGE_BYTES {
            return Err(bad(format!("the layers exceed {MAX_IMAGE_BYTES} bytes")));
        }
        blob(&layer.digest, layer.size)?;
    }
    Ok(Layout {
        manifest: descriptor.digest,
        config: manifest.config.digest,
        files: files.into_iter().collect(),
    })
}

/// The OCI image layout archive of `files`: a deterministic tar (the given order, which
/// is sorted; owner 0, mode 0644, every time `mtime`).
pub fn layout_archive(files: &[(String, Vec<u8>)], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut tar = crate::plan::DeterministicTar::new(Vec::new(), mtime);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, bytes) in files {
        let mut parent = String::new();
        for component in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            parent = if parent.is_empty() {
                component.to_owned()
            } else {
                format!("{parent}/{component}")
            };
            if dirs.insert(parent.clone()) {
                tar.dir(&parent)?;
            }
        }
        tar.file(path, bytes, false)?;
    }
    tar.finish()
}

/// Builds the release's Dockerfile once (see the module's doc).
pub fn run_container_release(
    opts: &RunOptions,
    container: &ContainerOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ContainerSummary, RunError> {
    check_options(container)?;
    let settings = settings(&opts.machine);
    settings.validate()?;
    let crate::run::Checkout {
        rev,
        final_dir,
        work,
        source_tar,
        source_dir,
    } = crate::run::checkout(opts, progress)?;
    let text = untrusted::read_confined(&source_dir, &container.dockerfile, MAX_DOCKERFILE)
        .map_err(|source| ContainerError::ReadDockerfile {
            path: container.dockerfile.clone(),
            source,
        })?
        .ok_or_else(|| ContainerError::NoDockerfile {
            rev: opts.rev.clone(),
            path: container.dockerfile.clone(),
        })?;
    let text = String::from_utf8(text)
        .map_err(|_| ContainerError::Image(format!("{} is not UTF-8", container.dockerfile)))?;
    let bases =
        dockerfile::base_images(&container.dockerfile, &text).map_err(ContainerError::from)?;

    progress(Progress::Phase("checking inputs in the mirror".into()));
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|e| RunError::Mirror(e.to_string()))?;
    let records = base_records(&mirror, &opts.mirror_dir, &container.dockerfile, &bases)?;
    let toolchain = cmbuild_image::layers::shipped()?
        .default_version()
        .ok_or_else(|| ContainerError::Layer("no default toolchain is pinned".into()))?;
    crate::run::assemble_for_containers(&mirror, opts, toolchain, work.path(), progress)?;
    let image =
        crate::run::read_pinned_image(&mirror, &opts.pins, opts.image_dir.as_deref(), toolchain)?;
    let layer_cid = pins::require_cid(&opts.pins, cmbuild_image::containers::PIN)?;
    let layer = mirror
        .read_verified(&layer_cid)
        .map_err(|e| ContainerError::Layer(e.to_string()))?;
    let (scratch, _) = cmbuild_image::containers::scratch_drive(&layer, settings.scratch_length)
        .map_err(|e| ContainerError::Layer(e.to_string()))?;
    drop(layer);
    let layouts: Vec<BaseLayout<'_>> = records
        .iter()
        .map(|(base, record)| BaseLayout {
            record,
            repository: format!("{}/{}", base.image.registry, base.image.repository),
        })
        .collect();
    let input = input_drive(container, &source_tar, rev.commit_time, &layouts, &|cid| {
        mirror.read_verified(cid).map_err(|e| e.to_string())
    })?;
    let template =
        crate::run::obtain_template(&mirror, &opts.pins, &settings, &image, toolchain, progress)?;

    let mut cids: BTreeMap<String, Cid> = BTreeMap::new();
    for (key, _file) in pins::IMAGE_FILES {
        cids.insert((*key).to_owned(), pins::require_cid(&opts.pins, key)?);
    }
    let layer_key = crate::run::toolchain_layer_key(toolchain);
    cids.insert(
        layer_key.clone(),
        pins::require_cid(&opts.pins, &layer_key)?,
    );
    cids.insert(cmbuild_image::containers::PIN.to_owned(), layer_cid);
    cids.insert("SOURCE_CID".to_owned(), cid_of_bytes(&source_tar));
    for (n, (_, record)) in records.iter().enumerate() {
        cids.insert(
            format!("BASE_IMAGE_{n}_RECORD_CID"),
            cid_of_bytes(&record.to_bytes()),
        );
    }

    let name = "linux/riscv64 image".to_owned();
    let started = std::time::Instant::now();
    let (mut machine, snapshot_config) = template
        .resume(&image.rootfs, &image.toolchain)
        .map_err(|e| RunError::Machine(name.clone(), crate::terminal::error_chain(&e)))?;
    let fill = |e: crate::template::TemplateError| {
        RunError::Machine(name.clone(), crate::terminal::error_chain(&e))
    };
    crate::template::fill_input(&mut machine, &input).map_err(fill)?;
    crate::template::fill_scratch(&mut machine, &DriveImage::from(scratch)).map_err(fill)?;
    drop(input);

    progress(Progress::Phase(format!(
        "[{name}] resumed from the template at mcycle {} in {:.2?}",
        machine.mcycle(),
        started.elapsed()
    )));
    let exit_code =
        crate::run::run_one_to_halt(&mut machine, &snapshot_config, opts, &name, progress)?;
    let root_hash = machine.root_hash();
    let mcycle = machine.mcycle();
    let output = crate::guest::written_part(drive_bytes(&machine, Drive::Output)).to_vec();
    drop(machine);

    progress(Progress::Phase("checking the image".into()));
    let out = work.path().join("guest-out");
    std::fs::create_dir(&out)?;
    let limits = untrusted::TarLimits {
        max_file_bytes: MAX_IMAGE_BYTES,
        max_total_bytes: 2 * MAX_IMAGE_BYTES,
        ..untrusted::TarLimits::default()
    };
    let files = untrusted::extract_tar(&output[..], &out, limits)
        .map_err(|e| ContainerError::Image(format!("the output drive: {e}")))?;
    drop(output);
    if files.iter().any(|f| f == "error") {
        let what = untrusted::read_capped(&out.join("error"), 256).unwrap_or_default();
        let log = untrusted::read_capped(&out.join("build.log"), 16 << 20).unwrap_or_default();
        let log = crate::terminal::sanitize_bytes(&log[log.len().saturating_sub(4096)..]);
        return Err(ContainerError::Failed {
            what: crate::terminal::sanitize_bytes(&what).trim().to_owned(),
            log,
        }
        .into());
    }
    let Layout {
        manifest: digest,
        config,
        files: layout,
    } = read_layout(&out.join("image"))?;
    let archive = layout_archive(&layout, rev.commit_time)?;
    let staged = work.path().join("out");
    std::fs::create_dir(&staged)?;
    staging::write_synced(&staged.join(ARCHIVE), &archive, 0o644)?;
    if let Ok(log) = untrusted::read_capped(&out.join("build.log"), 64 << 20) {
        staging::write_synced(&staged.join("build.log"), &log, 0o644)?;
    }
    let manifest = ContainerManifest {
        schema: MANIFEST_SCHEMA.to_owned(),
        release: opts.rev.clone(),
        commit: rev.commit.clone(),
        source_date_epoch: rev.commit_time,
        dockerfile: container.dockerfile.clone(),
        target_stage: container.target_stage.clone(),
        image: BuiltImage {
            digest,
            config,
            platform: oci::PLATFORM.to_owned(),
            archive: ARCHIVE.to_owned(),
            archive_cid: cid_of_bytes(&archive),
            archive_size: archive.len() as u64,
        },
        base_images: records
            .iter()
            .map(|(_, record)| BaseUse {
                reference: record.reference.clone(),
                manifest: record.manifest.digest,
            })
            .collect(),
    };
    let machine = MachineRecord {
        schema: crate::manifest::MACHINE_SCHEMA.to_owned(),
        emulator_version: env!("CARGO_PKG_VERSION").to_owned(),
        hash_scheme: cmbuild_machine::machine::HASH_SCHEME.to_owned(),
        inputs: cids,
        machines: vec![MachineRun {
            targets: vec![name],
            root_hash,
            mcycle,
            exit_code: u32::try_from(exit_code).unwrap_or(u32::MAX),
            jobs: Vec::new(),
        }],
        config: Some(settings),
        template: Some(TemplateUse {
            hash: template.record.root_hash.clone(),
            cid: template.record.cid,
            mcycle: template.record.mcycle,
        }),
        offload: None,
    };
    staging::write_synced(
        &staged.join("manifest.json"),
        &to_canonical_json(&manifest),
        0o644,
    )?;
    staging::write_synced(
        &staged.join("machine.json"),
        &to_canonical_json(&machine),
        0o644,
    )?;
    staging::publish_dir(&staged, &final_dir)?;
    Ok(ContainerSummary {
        dir: final_dir,
        manifest,
        machine,
    })
}

/// Each base image's record from the mirror, in the Dockerfile's order (an image named
/// twice once), refusing one that is not vendored or not linux/riscv64.
fn base_records(
    mirror: &Mirror,
    mirror_dir: &Path,
    file: &str,
    bases: &[BaseImage],
) -> Result<Vec<(BaseImage, ImageRecord)>, ContainerError> {
    let mut out: Vec<(BaseImage, ImageRecord)> = Vec::new();
    for base in bases {
        if out.iter().any(|(b, _)| b.image == base.image) {
            continue;
        }
        let record = oci::find_image(mirror, &base.image.digest).map_err(|e| match e {
            oci::FindError::NotVendored(_) => ContainerError::NotVendored {
                reference: base.image.to_string(),
                file: file.to_owned(),
                line: base.line,
                mirror: mirror_dir.display().to_string(),
            },
            other => ContainerError::Mirror(other.to_string()),
        })?;
        if record.platform != oci::PLATFORM {
            return Err(ContainerError::Foreign {
                reference: base.image.to_string(),
                platform: record.platform,
            });
        }
        out.push((base.clone(), record));
    }
    Ok(out)
}

/// Builds twice (into `OUT/run1` and `OUT/run2`) and compares the image digests and root
/// hashes.
pub fn run_container_twice(
    opts: &RunOptions,
    container: &ContainerOptions,
    progress: &(dyn Fn(Progress) + Sync),
    on_run: &mut dyn FnMut(&str, Option<&ContainerSummary>),
) -> Result<(ContainerSummary, ContainerSummary), RunError> {
    let mut summaries = Vec::new();
    for name in ["run1", "run2"] {
        on_run(name, None);
        let summary = run_container_release(
            &RunOptions {
                out_dir: opts.out_dir.join(name),
                ..opts.clone()
            },
            container,
            progress,
        )?;
        on_run(name, Some(&summary));
        summaries.push(summary);
    }
    let second = summaries.pop().expect("two runs");
    let first = summaries.pop().expect("two runs");
    let root = |s: &ContainerSummary| s.machine.machines[0].root_hash.clone();
    if first.manifest.image != second.manifest.image || root(&first) != root(&second) {
        return Err(ContainerError::NotReproduced {
            first: first.manifest.image.digest,
            first_root: root(&first),
            second: second.manifest.image.digest,
            second_root: root(&second),
        }
        .into());
    }
    Ok((first, second))
}

/// `cmbuild compare A B` of two builds from a Dockerfile: every claim of each side is
/// checked against its files (the archive's CID and size; the layout inside it, read as
/// untrusted, must have the claimed manifest and config digests); then the releases,
/// the Dockerfile, stage, commit time and base images (input drift), the image (output
/// drift) and the machine records ([`crate::compare`]'s rules) are compared.
pub fn compare(
    a: &Path,
    b: &Path,
    cid_of: &crate::compare::CidOfFile,
) -> Result<crate::compare::Report, crate::compare::CompareError> {
    use crate::compare::{Finding, Report};
    use crate::manifest::{read_machine_record, read_record, ArtifactKey, RecordError};
    let load = |dir: &Path| -> Result<(ContainerManifest, Option<MachineRecord>), RecordError> {
        let path = dir.join("manifest.json");
        let manifest: ContainerManifest = read_record(&path)?;
        if manifest.schema != MANIFEST_SCHEMA {
            return Err(RecordError::Schema {
                path: path.display().to_string(),
                found: manifest.schema,
                expected: MANIFEST_SCHEMA,
            });
        }
        let machine = dir.join("machine.json");
        let machine = match machine.exists() {
            true => Some(read_machine_record(&machine)?),
            false => None,
        };
        Ok((manifest, machine))
    };
    let sides = [(a, load(a)?), (b, load(b)?)];
    let key = |m: &ContainerManifest| ArtifactKey {
        target: m.image.platform.clone(),
        package: m.dockerfile.clone(),
        bin: m.image.archive.clone(),
    };
    let mut report = Report {
        compared: vec![key(&sides[0].1 .0)],
        findings: Vec::new(),
    };
    for (dir, (manifest, machine)) in &sides {
        let side = dir.display().to_string();
        for problem in check_archive(dir, manifest, cid_of) {
            report.findings.push(Finding::BadArtifact {
                side: side.clone(),
                key: key(manifest),
                problem,
            });
        }
        if machine.is_none() {
            report.findings.push(Finding::NoMachineRecord { side });
        }
    }
    let ((_, (ma, ra)), (_, (mb, rb))) = (&sides[0], &sides[1]);
    let show = crate::terminal::sanitize;
    for (field, x, y) in [
        ("commit", &ma.commit, &mb.commit),
        ("release", &ma.release, &mb.release),
    ] {
        if x != y {
            report.findings.push(Finding::ReleaseDrift {
                field,
                a: show(x),
                b: show(y),
            });
        }
    }
    let bases = |m: &ContainerManifest| {
        let list: Vec<String> = m
            .base_images
            .iter()
            .map(|b| format!("{} ({})", b.reference, b.manifest))
            .collect();
        list.join(", ")
    };
    let inputs = [
        ("dockerfile", ma.dockerfile.clone(), mb.dockerfile.clone()),
        (
            "target_stage",
            ma.target_stage.clone().unwrap_or_default(),
            mb.target_stage.clone().unwrap_or_default(),
        ),
        (
            "source_date_epoch",
            ma.source_date_epoch.to_string(),
            mb.source_date_epoch.to_string(),
        ),
        ("base_images", bases(ma), bases(mb)),
    ];
    for (field, x, y) in inputs {
        if x != y {
            report.findings.push(Finding::InputDrift {
                key: key(ma),
                field,
                a: show(&x),
                b: show(&y),
            });
        }
    }
    let outputs = [
        (
            "image digest",
            ma.image.digest.to_string(),
            mb.image.digest.to_string(),
        ),
        (
            "config digest",
            ma.image.config.to_string(),
            mb.image.config.to_string(),
        ),
        (
            "archive cid",
            ma.image.archive_cid.to_string(),
            mb.image.archive_cid.to_string(),
        ),
    ];
    for (field, x, y) in outputs {
        if x != y {
            report.findings.push(Finding::OutputDrift {
                key: key(ma),
                field,
                a: x,
                b: y,
            });
        }
    }
    if let (Some(ra), Some(rb)) = (ra, rb) {
        crate::compare::compare_machines(
            &a.display().to_string(),
            ra,
            &b.display().to_string(),
            rb,
            true,
            true,
            &mut report,
        );
    }
    Ok(report)
}

/// What is wrong with the image archive `manifest` claims in `dir` (nothing: empty).
fn check_archive(
    dir: &Path,
    manifest: &ContainerManifest,
    cid_of: &crate::compare::CidOfFile,
) -> Vec<String> {
    if manifest.image.archive != ARCHIVE {
        return vec![format!(
            "archive {:?} is not {ARCHIVE:?}",
            manifest.image.archive
        )];
    }
    let path = match untrusted::resolve_file(dir, ARCHIVE) {
        Ok(path) => path,
        Err(e) => return vec![format!("{ARCHIVE} refused: {e}")],
    };
    let mut problems = Vec::new();
    match cid_of(&path) {
        Ok(cid) if cid == manifest.image.archive_cid => {}
        Ok(cid) => problems.push(format!(
            "manifest says cid {} but the file is {cid}",
            manifest.image.archive_cid
        )),
        Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
    }
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => return vec![format!("no scratch directory: {e}")],
    };
    let limits = untrusted::TarLimits {
        max_file_bytes: MAX_IMAGE_BYTES,
        max_total_bytes: 2 * MAX_IMAGE_BYTES,
        ..untrusted::TarLimits::default()
    };
    let layout = std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|file| {
            untrusted::extract_tar(std::io::BufReader::new(file), scratch.path(), limits)
                .map_err(|e| e.to_string())
        })
        .and_then(|_| read_layout(scratch.path()).map_err(|e| e.to_string()));
    match layout {
        Ok(layout) => {
            if layout.manifest != manifest.image.digest || layout.config != manifest.image.config {
                problems.push(format!(
                    "manifest says image {} (config {}) but the archive holds {} (config {})",
                    manifest.image.digest, manifest.image.config, layout.manifest, layout.config
                ));
            }
        }
        Err(e) => problems.push(format!("the archive is not an image layout: {e}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dockerfile: &str, stage: Option<&str>) -> ContainerOptions {
        ContainerOptions {
            dockerfile: dockerfile.into(),
            target_stage: stage.map(Into::into),
        }
    }

    #[test]
    fn options_that_could_leave_the_project_or_the_quotes_are_refused() {
        for good in ["Dockerfile", "docker/Dockerfile.release", "a+b/c_d-e"] {
            assert!(
                check_options(&options(good, Some("final"))).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "/etc/passwd",
            "../Dockerfile",
            "a/../b",
            "a//b",
            "./Dockerfile",
            "a'b",
            "a b",
            "a\nb",
        ] {
            assert!(
                matches!(
                    check_options(&options(bad, None)),
                    Err(ContainerError::DockerfilePath(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "-x", "a'b", "a b", ".hidden"] {
            assert!(
                matches!(
                    check_options(&options("Dockerfile", Some(bad))),
                    Err(ContainerError::Stage(_))
                ),
                "{bad:?}"
            );
        }
        let env = plan_env(&options("d/Dockerfile", Some("final")), 1767225600);
        assert!(
            env.contains("CONTAINER_DOCKERFILE='d/Dockerfile'\n"),
            "{env}"
        );
        assert!(env.contains("CONTAINER_TARGET_STAGE='final'\n"), "{env}");
        assert!(env.ends_with(". /build/in/containers/build.sh\n"), "{env}");
    }

    fn layout(dir: &Path, platform: &str, tamper: bool) -> OciDigest {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let digest = OciDigest::of(bytes);
            std::fs::write(blobs.join(digest.sha256().to_string()), bytes).unwrap();
            digest
        };
        let layer = put(b"layer bytes");
        let config_bytes = format!(
            r#"{{"architecture":"{platform}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let config = put(config_bytes.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 11}],
        });
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = put(&manifest_bytes);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": manifest_bytes.len()}],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        if tamper {
            std::fs::write(blobs.join(layer.sha256().to_string()), b"other bytes").unwrap();
        }
        digest
    }

    #[test]
    fn the_image_is_read_only_when_every_blob_matches_and_it_is_riscv64() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let digest = layout(&good, "riscv64", false);
        let Layout {
            manifest: got,
            files,
            ..
        } = read_layout(&good).unwrap();
        assert_eq!(got, digest);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
        let archive = layout_archive(&files, 1767225600).unwrap();
        assert_eq!(archive, layout_archive(&files, 1767225600).unwrap());
        let back = dir.path().join("back");
        std::fs::create_dir(&back).unwrap();
        untrusted::extract_tar(&archive[..], &back, untrusted::TarLimits::default()).unwrap();
        assert_eq!(
            read_layout(&back).unwrap().manifest,
            digest,
            "the archive is a layout"
        );

        let tampered = dir.path().join("tampered");
        layout(&tampered, "riscv64", true);
        assert!(
            matches!(read_layout(&tampered), Err(ContainerError::Image(m)) if m.contains("does not match"))
        );
        let foreign = dir.path().join("foreign");
        layout(&foreign, "amd64", false);
        assert!(matches!(
            read_layout(&foreign),
            Err(ContainerError::Image(_))
        ));
        let escape = dir.path().join("escape");
        layout(&escape, "riscv64", false);
        std::fs::remove_dir_all(escape.join("blobs")).unwrap();
        std::os::unix::fs::symlink(good.join("blobs"), escape.join("blobs")).unwrap();
        assert!(
            read_layout(&escape).is_err(),
            "no link out of the layout is followed"
        );
    }

    /// A container build's output directory: the layout under `layout`, packed, with its
    /// manifest and a machine record ending in `root`.
    fn build_dir(dir: &Path, layout_dir: &Path, root: &str) -> ContainerManifest {
        let Layout {
            manifest: digest,
            config,
            files,
        } = read_layout(layout_dir).unwrap();
        let archive = layout_archive(&files, 1767225600).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(ARCHIVE), &archive).unwrap();
        let manifest = ContainerManifest {
            schema: MANIFEST_SCHEMA.into(),
            release: "v0.1.0".into(),
            commit: "c0ffee".into(),
            source_date_epoch: 1767225600,
            dockerfile: "Dockerfile".into(),
            target_stage: None,
            image: BuiltImage {
                digest,
                config,
                platform: oci::PLATFORM.into(),
                archive: ARCHIVE.into(),
                archive_cid: cid_of_bytes(&archive),
                archive_size: archive.len() as u64,
            },
            base_images: vec![],
        };
        let machine = MachineRecord {
            schema: crate::manifest::MACHINE_SCHEMA.into(),
            emulator_version: "0".into(),
            hash_scheme: "cmvm-sha256-v1".into(),
            inputs: BTreeMap::new(),
            machines: vec![MachineRun {
                targets: vec!["linux/riscv64 image".into()],
                root_hash: root.into(),
                mcycle: 7,
                exit_code: 0,
                jobs: vec![],
            }],
            config: None,
            template: None,
            offload: None,
        };
        std::fs::write(dir.join("manifest.json"), to_canonical_json(&manifest)).unwrap();
        std::fs::write(dir.join("machine.json"), to_canonical_json(&machine)).unwrap();
        manifest
    }

    #[test]
    fn compare_checks_container_builds_claims_inputs_and_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let cid_of = |p: &Path| cmbuild_store::cid::cid_of_file(p);
        let (one, other) = (dir.path().join("one"), dir.path().join("other"));
        layout(&one, "riscv64", false);
        // Another image (its config names another architecture): only its digest is used.
        let other_digest = layout(&other, "amd64", false);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        build_dir(&a, &one, "cmvm-sha256-v1:11");
        build_dir(&b, &one, "cmvm-sha256-v1:11");
        let report = crate::compare::compare_builds(&a, &b, &cid_of).unwrap();
        assert!(report.passed(), "{:?}", report.findings);

        // Another machine end state is output drift.
        let c = dir.path().join("c");
        build_dir(&c, &one, "cmvm-sha256-v1:22");
        let report = crate::compare::compare_builds(&a, &c, &cid_of).unwrap();
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert!(report.findings[0].to_string().contains("root hash"));

        // A manifest claiming another image than its archive holds is a bad artifact.
        let d = dir.path().join("d");
        let mut lying = build_dir(&d, &one, "cmvm-sha256-v1:11");
        lying.image.digest = other_digest;
        std::fs::write(d.join("manifest.json"), to_canonical_json(&lying)).unwrap();
        let report = crate::compare::compare_builds(&a, &d, &cid_of).unwrap();
        let text: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("bad artifact") && t.contains("archive holds")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("output drift") && t.contains("image digest")),
            "{text:?}"
        );

        // Another Dockerfile is input drift, not a reproducibility failure.
        let e = dir.path().join("e");
        let mut moved = build_dir(&e, &one, "cmvm-sha256-v1:11");
        moved.dockerfile = "other/Dockerfile".into();
        std::fs::write(e.join("manifest.json"), to_canonical_json(&moved)).unwrap();
        let report = crate::compare::compare_builds(&a, &e, &cid_of).unwrap();
        assert!(report.findings.iter().all(|f| f.is_input_drift()) && !report.passed());

        // A tampered archive fails its CID.
        std::fs::write(b.join(ARCHIVE), b"not an archive").unwrap();
        let report = crate::compare::compare_builds(&a, &b, &cid_of).unwrap();
        let text: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("manifest says cid")),
            "{text:?}"
        );
    }
}
