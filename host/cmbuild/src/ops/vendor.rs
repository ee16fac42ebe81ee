//! `cmbuild vendor`: fetch every input of a build into the mirror, once, online.
//!
//! The operation is a pipeline of input kinds. Each kind turns its lock into a list of
//! [`Wanted`] files (index key, URL, pinned sha256); one fetch loop ([`fetch_all`])
//! downloads whatever the mirror lacks, verified, and records it in the index; then each
//! kind may write what the offline build needs. Kinds today: the crates.io packages of the
//! project's Cargo.lock (and, with a cargo config path, a directory source and config for
//! offline builds), the Debian packages of the guest-image locks this cmbuild was built
//! with: the base layer's, the toolchain layers' the project needs (the one it selects,
//! or every one) and the glibc floor's it asks for in `cmbuild.toml` (or every one) (each
//! must end up in the mirror under exactly its locked CID), and the
//! container base images of `--dockerfile` / `--oci-image` (with a Dockerfile, also the
//! Debian packages of the container layer the build runs with) (see [`super::oci`]). `--ipfs-api URL`
//! then pushes the whole mirror.

use std::path::{Path, PathBuf};

use cmbuild_image::layers::{self, ToolchainLocks};
use cmbuild_image::lock::{self, Lock, LockFileError};
use cmbuild_image::toolchain;
use cmbuild_store::cid::{Cid, Codec};
use cmbuild_store::crates::{write_directory_source, CrateError, VendoredCrate};
use cmbuild_store::download::{DownloadError, Downloader};
use cmbuild_store::lockfile::{read_lockfile, LockError as CargoLockError, Package, Source};
use cmbuild_store::mirror::{Entry, Key, Mirror, MirrorError};
use cmbuild_store::sha256::Sha256;

use super::human_size;
use super::mirror::{MirrorOpError, PushReport};
use super::oci::{OciOpError, OciOptions, OciReport};
use crate::floor::Floor;
use crate::workspace::{self, Workspace, WorkspaceError};
use cmbuild_store::registry::{Registry, RegistryError};

/// Where `.crate` files are downloaded from, unless `CMBUILD_CRATES_URL` says otherwise.
pub const CRATES_URL: &str = "https://static.crates.io/crates";

/// Why vendoring failed.
#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// The project's manifest is missing.
    #[error("no Cargo.toml at {}", .0.display())]
    NoManifest(PathBuf),
    /// The project's Cargo manifests could not be read.
    #[error("reading the project's Cargo manifests")]
    Workspace(#[from] WorkspaceError),
    /// The project's Cargo.lock could not be read.
    #[error(transparent)]
    CargoLock(#[from] CargoLockError),
    /// The lock has packages cmbuild does not vendor.
    #[error(
        "{} cannot be vendored: cmbuild vendors crates.io packages and builds workspace \
         members; these come from elsewhere:\n  {}", .lock.display(), .refused.join("\n  ")
    )]
    Refused {
        /// The Cargo.lock.
        lock: PathBuf,
        /// One line per refused package.
        refused: Vec<String>,
    },
    /// The project's toolchain matches no pinned toolchain, or its file is invalid.
    #[error(transparent)]
    Toolchain(#[from] cmbuild_image::toolchain::ToolchainError),
    /// The compiled-in guest-image lock is invalid.
    #[error("reading the compiled-in guest-image lock")]
    GuestLock(#[source] LockFileError),
    /// The mirror failed.
    #[error("the mirror {}", .dir.display())]
    Mirror {
        /// The mirror directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: MirrorError,
    },
    /// A download failed.
    #[error("downloading {key}")]
    Download {
        /// The index key of the file.
        key: Key,
        /// What failed.
        #[source]
        source: Box<DownloadError>,
    },
    /// A file the index should name is not in it.
    #[error("{0} is missing from the mirror index after vendoring")]
    NotIndexed(Key),
    /// A Debian package sits in the mirror under another CID than the lock pins.
    #[error("{filename} is in the mirror as {found}, but the guest-image lock pins {pinned}")]
    Drift {
        /// The package file.
        filename: String,
        /// What the mirror holds (CID, sha256, size).
        found: String,
        /// What the lock pins (CID, sha256, size).
        pinned: String,
    },
    /// A blob rotted after it was fetched.
    #[error("{filename} ({cid}) is not intact in the mirror")]
    NotIntact {
        /// The package file.
        filename: String,
        /// Its CID.
        cid: Cid,
    },
    /// The cargo config or its directory source could not be written.
    #[error("unpacking the crates into {}", .dir.display())]
    DirectorySource {
        /// The directory source.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: Box<CrateError>,
    },
    /// A path is not usable in the cargo config.
    #[error("{}: {what}", .path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The push to IPFS failed.
    #[error(transparent)]
    Push(#[from] MirrorOpError),
    /// Vendoring container images failed.
    #[error(transparent)]
    Oci(#[from] OciOpError),
    /// The project's `cmbuild.toml` is invalid or asks for a glibc floor that is not pinned.
    #[error("the project's cmbuild.toml")]
    Config(#[source] crate::project::ProjectError),
    /// The project's glibc floor is not pinned (or the floor locks are invalid).
    #[error(transparent)]
    Floor(#[from] crate::floor::FloorError),
    /// An `--insecure-registry` is not allowed.
    #[error("--insecure-registry")]
    Registry(#[source] RegistryError),
}

type Result<T, E = VendorError> = std::result::Result<T, E>;

fn mirror_err(mirror: &Mirror) -> impl Fn(MirrorError) -> VendorError + '_ {
    move |source| VendorError::Mirror {
        dir: mirror.root().to_path_buf(),
        source,
    }
}

/// What `cmbuild vendor` is asked to do.
#[derive(Clone, Debug)]
pub struct VendorOptions {
    /// The project's Cargo.toml (its workspace's Cargo.lock is read).
    pub manifest_path: PathBuf,
    /// The mirror directory.
    pub mirror_dir: PathBuf,
    /// Write a cargo config for offline builds from the mirror (and `OUT.crates/` beside it).
    pub cargo_config: Option<PathBuf>,
    /// Vendor only the project's crates, not the guest image's Debian packages.
    pub crates_only: bool,
    /// Then push the whole mirror to this IPFS node's Kubo RPC API.
    pub ipfs_api: Option<String>,
    /// The download base for `.crate` files (default [`CRATES_URL`]).
    pub crates_url: String,
    /// Which toolchain layers' packages to fetch.
    pub toolchains: ToolchainChoice,
    /// Which glibc floors' packages to fetch.
    pub glibc_floors: FloorChoice,
    /// Fetch the container layer's packages (also done for any `oci.dockerfiles`).
    pub container_layer: bool,
    /// Vendor the Cargo project (and, unless `crates_only`, the guest image's packages);
    /// `false` vendors only the container images of `oci`.
    pub cargo_project: bool,
    /// Container base images to vendor.
    pub oci: OciOptions,
}

/// Which pinned toolchains `cmbuild vendor` fetches the packages of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolchainChoice {
    /// Only the one the project selects, as `cmbuild run` would: this channel
    /// (`--toolchain`), else its `rust-toolchain` / `rust-toolchain.toml`, else the default.
    Project(Option<String>),
    /// Every pinned toolchain (`--all-toolchains`).
    #[default]
    All,
}

/// Which pinned glibc floors `cmbuild vendor` fetches the packages of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloorChoice {
    /// The one the project's `cmbuild.toml` asks for (`glibc = "2.36"`), if any.
    #[default]
    Project,
    /// Every pinned floor (`--all-glibc-floors`).
    All,
}

/// What `cmbuild vendor` did.
#[derive(Debug, Clone)]
pub struct VendorReport {
    /// crates.io packages of the lock.
    pub crates: usize,
    /// The Cargo.lock read (none when only images were vendored).
    pub lock_path: Option<PathBuf>,
    /// The container images, if any were asked for.
    pub oci: Option<OciReport>,
    /// The fetch loop's counts.
    pub fetch: FetchReport,
    /// The directory source written for `cargo_config`, if asked.
    pub directory_source: Option<PathBuf>,
    /// The IPFS push, if asked.
    pub push: Option<String>,
}

/// Vendors every input of a build into the mirror, reporting to `progress`.
pub fn vendor(opts: &VendorOptions, progress: &mut dyn FetchProgress) -> Result<VendorReport> {
    // Everything that can be refused without the network is checked first.
    let images = super::oci::wanted_images(&opts.oci)?;
    let mut registry = Registry::new(Downloader::new(), opts.oci.insecure_registries.clone())
        .map_err(VendorError::Registry)?;
    let project = if opts.cargo_project {
        Some(CargoProject::read(&opts.manifest_path)?)
    } else {
        None
    };
    let mut wanted = project
        .as_ref()
        .map(|p| p.wanted(&opts.crates_url))
        .unwrap_or_default();
    let mut floors = Vec::new();
    let guest_locks = match &project {
        Some(project) if !opts.crates_only => {
            let project_dir = project
                .lock_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let layers = layers::shipped().map_err(VendorError::GuestLock)?;
            let ids = needed_toolchains(&layers, &opts.toolchains, &project_dir)?;
            let (mut guest_locks, guest_wanted) = wanted_guest_packages(&layers, &ids, progress)?;
            wanted.extend(guest_wanted);
            // cmbuild.toml lies beside the project's Cargo.toml (`cmbuild run --project`).
            let config_dir = opts
                .manifest_path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            for floor in needed_floors(opts.glibc_floors, config_dir)? {
                let lock = &floor.lock;
                wanted.extend(wanted_from_lock(lock));
                progress.note(&format!(
                    "cmbuild vendor: glibc floor {}: {} Debian {} packages ({})",
                    floor.id,
                    lock.packages.len(),
                    lock.suite,
                    human_size(lock.total_size())
                ));
                floors.push(floor);
            }
            // A Dockerfile is built in the machine with the container layer (`run
            // --dockerfile`), which is assembled from these packages on first use.
            if opts.container_layer || !opts.oci.dockerfiles.is_empty() {
                let layer = cmbuild_image::containers::shipped().map_err(VendorError::GuestLock)?;
                wanted.extend(wanted_from_lock(&layer));
                progress.note(&format!(
                    "cmbuild vendor: container layer (buildah, crun): {} Debian {} packages ({})",
                    layer.packages.len(),
                    layer.suite,
                    human_size(layer.total_size())
                ));
                guest_locks.push(layer);
            }
            Some(guest_locks)
        }
        _ => None,
    };

    let mirror = Mirror::open(&opts.mirror_dir).map_err(|source| VendorError::Mirror {
        dir: opts.mirror_dir.clone(),
        source,
    })?;
    let mut fetch = fetch_all(&mirror, &wanted, &Downloader::new(), progress)?;
    for guest_lock in guest_locks.iter().flatten() {
        check_guest_packages(&mirror, guest_lock, progress)?;
    }
    // Each floor's packages, then its sysroots' image, made now and kept in the mirror by its
    // pinned CID, so that the offline run finds it (and a cmbuild that does not make the
    // pinned image says so here).
    for floor in &floors {
        check_guest_packages(&mirror, &floor.lock, progress)?;
        let (image, source) = crate::floor::obtain(floor, &mirror, || {
            crate::floor::make_image(&floor.id, &floor.lock, |package| {
                Ok(mirror.read_verified(&package.cid)?)
            })
        })?;
        progress.note(&format!(
            "cmbuild vendor: glibc floor {}: sysroots image {} ({} MB, {})",
            floor.id,
            image.cid,
            image.image.len() >> 20,
            source.as_str()
        ));
    }
    let oci = if opts.oci.is_empty() {
        None
    } else {
        let report = super::oci::vendor_images(&mirror, &images, &mut registry, progress)?;
        fetch.downloaded += report.blobs.downloaded;
        fetch.bytes += report.blobs.bytes;
        fetch.present += report.blobs.present;
        fetch
            .per_kind
            .insert(cmbuild_store::mirror::Kind::OciBlob, report.blobs);
        Some(report)
    };
    let directory_source = match (&opts.cargo_config, &project) {
        (Some(config), Some(project)) => {
            Some(write_cargo_config(&mirror, &project.crates_io, config)?)
        }
        _ => None,
    };
    let push = match &opts.ipfs_api {
        Some(url) => {
            let report: PushReport = super::mirror::push(&mirror, url, &mut |l| progress.note(l))?;
            Some(report.to_string())
        }
        None => None,
    };
    Ok(VendorReport {
        crates: project.as_ref().map_or(0, |p| p.crates_io.len()),
        lock_path: project.map(|p| p.lock_path),
        oci,
        fetch,
        directory_source,
        push,
    })
}

/// One file the mirror must hold: its index key, where to get it, and its pinned sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The index key.
    pub key: Key,
    /// Where to download it.
    pub url: String,
    /// Its pinned sha256.
    pub sha256: Sha256,
    /// Size when the lock knows it (Debian does, Cargo.lock does not).
    pub size: Option<u64>,
}

/// What the fetch loop did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// Files downloaded.
    pub downloaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files already present.
    pub present: usize,
    /// The same counts for each kind of input (crates, Debian packages).
    pub per_kind: std::collections::BTreeMap<cmbuild_store::mirror::Kind, KindCounts>,
}

/// The fetch loop's counts for one kind of input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindCounts {
    /// Files downloaded.
    pub downloaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files already present.
    pub present: usize,
}

/// The project's lock, checked: only crates.io packages and workspace members.
struct CargoProject {
    lock_path: PathBuf,
    crates_io: Vec<(Package, Sha256)>,
}

impl CargoProject {
    fn read(manifest: &Path) -> Result<CargoProject> {
        if !manifest.is_file() {
            return Err(VendorError::NoManifest(manifest.to_path_buf()));
        }
        // Read from the manifests by cmbuild itself: no Rust toolchain on the host takes part.
        let workspace: Workspace = workspace::read_workspace(&workspace::find_root(manifest)?)?;
        let lock_path = workspace.root.join("Cargo.lock");
        let lock = read_lockfile(&lock_path)?;
        let mut refused = Vec::new();
        let mut crates_io = Vec::new();
        for package in lock.packages {
            match &package.source {
                Source::CratesIo { sha256 } => crates_io.push((package.clone(), *sha256)),
                Source::Local if workspace.has_member(&package.name, &package.version) => {}
                Source::Local => refused.push(format!(
                    "{} {} (a path dependency outside the workspace)",
                    package.name, package.version
                )),
                Source::Git(url) => refused.push(format!(
                    "{} {} (git dependency {url})",
                    package.name, package.version
                )),
                Source::Other(source) => refused.push(format!(
                    "{} {} (from {source}, not crates.io)",
                    package.name, package.version
                )),
            }
        }
        if !refused.is_empty() {
            return Err(VendorError::Refused {
                lock: lock_path,
                refused,
            });
        }
        Ok(CargoProject {
            lock_path,
            crates_io,
        })
    }

    fn wanted(&self, base: &str) -> Vec<Wanted> {
        let base = base.trim_end_matches('/');
        self.crates_io
            .iter()
            .map(|(package, sha256)| Wanted {
                key: Key::crate_(&package.name, &package.version),
                url: format!("{base}/{0}/{0}-{1}.crate", package.name, package.version),
                sha256: *sha256,
                size: None,
            })
            .collect()
    }
}

/// Downloads every wanted file the mirror lacks (or holds corrupt), verified, and records
/// each in the index as soon as it is stored, reporting to `progress`.
pub fn fetch_all(
    mirror: &Mirror,
    wanted: &[Wanted],
    downloader: &Downloader,
    progress: &mut dyn FetchProgress,
) -> Result<FetchReport> {
    let index = mirror.load_index().map_err(mirror_err(mirror))?;
    let mut report = FetchReport::default();
    let mut missing = Vec::new();
    for item in wanted {
        if let Some(cid) = present_cid(mirror, &index, item)? {
            report.present += 1;
            report
                .per_kind
                .entry(item.key.kind.clone())
                .or_default()
                .present += 1;
            if index.get(&item.key).map(|e| e.cid) != Some(cid) {
                let path = mirror.blob_path(&cid);
                let size = std::fs::metadata(&path)
                    .map_err(|source| {
                        mirror_err(mirror)(MirrorError::Io {
                            action: "read",
                            path,
                            source,
                        })
                    })?
                    .len();
                let entry = Entry {
                    cid,
                    sha256: item.sha256,
                    size,
                    url: Some(item.url.clone()),
                };
                mirror
                    .record([(item.key.clone(), entry)])
                    .map_err(mirror_err(mirror))?;
            }
        } else {
            missing.push(item);
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }

    progress.begin(&missing);
    let mut bytes_done = 0;
    for item in missing {
        let started = bytes_done;
        let mut announced = item.size.is_some();
        let mut on_bytes = |done: u64, total: Option<u64>| {
            if let (false, Some(total)) = (announced, total) {
                progress.length(total);
                announced = true;
            }
            progress.bytes(started + done);
        };
        let stored = downloader
            .fetch_to_mirror(&item.url, &item.sha256, item.size, mirror, &mut on_bytes)
            .map_err(|source| VendorError::Download {
                key: item.key.clone(),
                source: Box::new(source),
            })?;
        mirror
            .record([(
                item.key.clone(),
                Entry::new(&stored, Some(item.url.clone())),
            )])
            .map_err(mirror_err(mirror))?;
        report.downloaded += 1;
        report.bytes += stored.size;
        let kind = report.per_kind.entry(item.key.kind.clone()).or_default();
        kind.downloaded += 1;
        kind.bytes += stored.size;
        bytes_done += stored.size;
        progress.stored(stored.size);
    }
    progress.end();
    Ok(report)
}

/// The CID of a wanted file the mirror already holds intact, if any.
fn present_cid(
    mirror: &Mirror,
    index: &cmbuild_store::mirror::Index,
    item: &Wanted,
) -> Result<Option<Cid>> {
    if let Some(entry) = index.get(&item.key) {
        if entry.sha256 == item.sha256
            && mirror.has_valid(&entry.cid).map_err(mirror_err(mirror))?
        {
            return Ok(Some(entry.cid));
        }
    }
    // A file of at most one chunk is a raw leaf named by its sha256: found without an index.
    let leaf = Cid::new(Codec::Raw, *item.sha256.as_bytes());
    Ok(mirror
        .has_valid(&leaf)
        .map_err(mirror_err(mirror))?
        .then_some(leaf))
}

/// What the vendor operation reports as it goes; the binary draws a progress bar and
/// prints the notes. Every method has a do-nothing default ([`Quiet`]).
pub trait FetchProgress {
    /// Downloads begin: the files the mirror lacks (some with known sizes).
    fn begin(&mut self, _missing: &[&Wanted]) {}
    /// A download of unknown size announced its length.
    fn length(&mut self, _length: u64) {}
    /// Bytes downloaded in all so far (finished files plus the current one).
    fn bytes(&mut self, _done: u64) {}
    /// A file was stored in the mirror.
    fn stored(&mut self, _size: u64) {}
    /// Every download is done.
    fn end(&mut self) {}
    /// A line saying what the operation is doing.
    fn note(&mut self, _line: &str) {}
}

/// Reports nothing.
pub struct Quiet;

impl FetchProgress for Quiet {}

/// The directory source that belongs to config file `config`: `OUT.crates/` beside `OUT.toml`.
pub fn directory_source_for(config: &Path) -> PathBuf {
    config.with_extension("crates")
}

/// Unpacks the project's crates next to `config` and writes the cargo config naming them.
fn write_cargo_config(
    mirror: &Mirror,
    crates_io: &[(Package, Sha256)],
    config: &Path,
) -> Result<PathBuf> {
    let index = mirror.load_index().map_err(mirror_err(mirror))?;
    let mut crates = Vec::new();
    for (package, sha256) in crates_io {
        let key = Key::crate_(&package.name, &package.version);
        let entry = index
            .get(&key)
            .ok_or_else(|| VendorError::NotIndexed(key.clone()))?;
        crates.push(VendoredCrate {
            name: package.name.clone(),
            version: package.version.clone(),
            sha256: *sha256,
            cid: entry.cid,
        });
    }
    let dir = directory_source_for(config);
    write_directory_source(mirror, &crates, &dir).map_err(|source| {
        VendorError::DirectorySource {
            dir: dir.clone(),
            source: Box::new(source),
        }
    })?;
    // An absolute path: cargo resolves relative ones against the current directory's
    // `.cargo`, not against this file.
    let dir = std::fs::canonicalize(&dir).map_err(|e| VendorError::Path {
        path: dir.clone(),
        what: format!("cannot resolve: {e}"),
    })?;
    let dir_text = dir.to_str().ok_or_else(|| VendorError::Path {
        path: dir.clone(),
        what: "not UTF-8".into(),
    })?;
    let text = format!(
        "# Written by `cmbuild vendor`: builds from the vendored crates, offline:\n\
         #   cargo build --offline --locked --config {}\n\
         [source.crates-io]\n\
         replace-with = \"cmbuild-vendored\"\n\
         \n\
         [source.cmbuild-vendored]\n\
         directory = {}\n",
        config.display(),
        toml_string(dir_text)
    );
    cmbuild_store::atomic::write_atomically(config, text.as_bytes())
        .map_err(|source| mirror_err(mirror)(source.into()))?;
    Ok(dir)
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// The largest `rust-toolchain(.toml)` file read.
const MAX_TOOLCHAIN_FILE_BYTES: u64 = 64 << 10;

/// The ids of the toolchain layers to fetch: every pinned one, or the one the project in
/// `project_dir` selects (a channel no pinned toolchain matches is an error listing them).
pub fn needed_toolchains(
    layers: &ToolchainLocks,
    choice: &ToolchainChoice,
    project_dir: &Path,
) -> Result<Vec<String>> {
    let cli = match choice {
        ToolchainChoice::All => return Ok(layers.toolchains.keys().cloned().collect()),
        ToolchainChoice::Project(cli) => cli.as_deref(),
    };
    let read = |name: &str| {
        crate::untrusted::read_confined(project_dir, name, MAX_TOOLCHAIN_FILE_BYTES).map_err(|e| {
            VendorError::Path {
                path: project_dir.join(name),
                what: e.to_string(),
            }
        })
    };
    let (channel, source_name) = toolchain::project_channel(
        cli,
        read("rust-toolchain")?.as_deref(),
        read("rust-toolchain.toml")?.as_deref(),
    )?;
    let version = toolchain::select(
        channel.as_deref(),
        source_name,
        &layers.versions(),
        layers.default_version(),
    )?;
    Ok(vec![version.to_string()])
}

/// The largest `cmbuild.toml` read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The glibc floors to fetch: every pinned one, or the one the project's `cmbuild.toml` in
/// `config_dir` asks for (none without one; a floor that is not pinned is an error listing
/// the pinned ones, before anything is downloaded).
pub fn needed_floors(choice: FloorChoice, config_dir: &Path) -> Result<Vec<Floor>> {
    let floors = crate::floor::shipped()?;
    if choice == FloorChoice::All {
        let mut all = Vec::new();
        for id in floors.floors.keys() {
            all.extend(crate::floor::select(Some(id), &floors)?);
        }
        return Ok(all);
    }
    let text = crate::untrusted::read_confined(config_dir, "cmbuild.toml", MAX_CONFIG_BYTES)
        .map_err(|e| VendorError::Path {
            path: config_dir.join("cmbuild.toml"),
            what: e.to_string(),
        })?;
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let config = crate::project::parse_config(&String::from_utf8_lossy(&text))
        .map_err(VendorError::Config)?;
    Ok(crate::floor::select(config.glibc.as_deref(), &floors)?
        .into_iter()
        .collect())
}

/// The compiled-in guest-image locks (the base, then the toolchain layers `ids`) and their
/// packages as files to fetch.
pub fn wanted_guest_packages(
    layers: &ToolchainLocks,
    ids: &[String],
    progress: &mut dyn FetchProgress,
) -> Result<(Vec<Lock>, Vec<Wanted>)> {
    let base = lock::shipped_lock().map_err(VendorError::GuestLock)?;
    let mut wanted = wanted_from_lock(&base);
    progress.note(&format!(
        "cmbuild vendor: guest image: base layer, {} Debian {} packages ({})",
        base.packages.len(),
        base.release_version,
        human_size(base.total_size())
    ));
    let mut locks = vec![base];
    for id in ids {
        let layer = layers.toolchains.get(id).ok_or_else(|| {
            VendorError::GuestLock(LockFileError::Request(format!("no toolchain {id}")))
        })?;
        wanted.extend(wanted_from_lock(layer));
        progress.note(&format!(
            "cmbuild vendor: guest image: Rust {id} toolchain layer, {} Debian {} packages ({})",
            layer.packages.len(),
            layer.suite,
            human_size(layer.total_size())
        ));
        locks.push(layer.clone());
    }
    Ok((locks, wanted))
}

fn wanted_from_lock(lock: &Lock) -> Vec<Wanted> {
    lock.packages
        .iter()
        .map(|p| Wanted {
            key: Key::deb(&p.name, &p.version, &p.architecture),
            url: lock.url_of(p),
            sha256: p.sha256,
            size: Some(p.size),
        })
        .collect()
}

/// After fetching: every locked package is in the mirror, intact, under its locked CID
/// (the fetch loop checked the sha256; this checks the CID the image build will ask for).
pub fn check_guest_packages(
    mirror: &Mirror,
    lock: &Lock,
    progress: &mut dyn FetchProgress,
) -> Result<()> {
    let index = mirror.load_index().map_err(mirror_err(mirror))?;
    for p in &lock.packages {
        let key = Key::deb(&p.name, &p.version, &p.architecture);
        let entry = index
            .get(&key)
            .ok_or_else(|| VendorError::NotIndexed(key.clone()))?;
        if !(entry.cid == p.cid && entry.sha256 == p.sha256 && entry.size == p.size) {
            return Err(VendorError::Drift {
                filename: p.filename.clone(),
                found: format!(
                    "{} (sha256 {}, {} bytes)",
                    entry.cid, entry.sha256, entry.size
                ),
                pinned: format!("{} (sha256 {}, {} bytes)", p.cid, p.sha256, p.size),
            });
        }
        if !mirror.has_valid(&entry.cid).map_err(mirror_err(mirror))? {
            return Err(VendorError::NotIntact {
                filename: p.filename.clone(),
                cid: entry.cid,
            });
        }
    }
    progress.note(&format!(
        "cmbuild vendor: {} {}: all {} Debian packages in the mirror under their locked CIDs",
        lock.suite,
        lock.release_version,
        lock.packages.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_store::mirror::Entry;
    use std::time::Duration;

    /// A URL nothing answers: any download attempt fails.
    const DEAD_URL: &str = "http://127.0.0.1:9/never";

    fn offline() -> Downloader {
        Downloader::new().with_retries(1, Duration::ZERO)
    }

    #[test]
    fn vendor_fetches_only_the_toolchain_the_project_selects() {
        let layers = layers::shipped().unwrap();
        let project = tempfile::tempdir().unwrap();
        let needed = |choice: &ToolchainChoice| needed_toolchains(&layers, choice, project.path());
        // No toolchain file: the default only.
        assert_eq!(needed(&ToolchainChoice::Project(None)).unwrap(), ["1.85.1"]);
        assert_eq!(layers.default, "1.85.1");
        // A rust-toolchain.toml naming 1.96: the newest pinned 1.96.x only.
        std::fs::write(
            project.path().join("rust-toolchain.toml"),
            "[toolchain]\nchannel = \"1.96\"\n",
        )
        .unwrap();
        assert_eq!(needed(&ToolchainChoice::Project(None)).unwrap(), ["1.96.0"]);
        // --toolchain wins over the file; `stable` is the newest pinned.
        let newest = layers.versions().last().unwrap().to_string();
        assert_eq!(
            needed(&ToolchainChoice::Project(Some("stable".into()))).unwrap(),
            [newest]
        );
        // --all-toolchains: every layer.
        assert_eq!(
            needed(&ToolchainChoice::All).unwrap(),
            layers.toolchains.keys().cloned().collect::<Vec<_>>()
        );
        // A channel nothing pins fails, listing what is pinned.
        let err = needed(&ToolchainChoice::Project(Some("nightly".into()))).unwrap_err();
        assert!(
            err.to_string()
                .contains("the pinned toolchains are: 1.85.1"),
            "{err}"
        );
        // The wanted files: the base's packages and that one layer's, not the others'.
        let (locks, wanted) =
            wanted_guest_packages(&layers, &["1.96.0".into()], &mut Quiet).unwrap();
        assert_eq!(locks.len(), 2);
        let base = lock::shipped_lock().unwrap();
        assert_eq!(
            wanted.len(),
            base.packages.len() + layers.toolchains["1.96.0"].packages.len()
        );
        assert!(wanted.iter().any(|w| w.url.contains("rustc-web")));
        assert!(!wanted.iter().any(|w| w.url.contains("/rustc_")));
    }

    #[test]
    fn small_file_already_stored_is_found_by_its_sha256_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let bytes = b"a small .crate".to_vec();
        let stored = mirror.put_bytes(&bytes).unwrap();
        let wanted = Wanted {
            key: Key::crate_("small", "1.0.0"),
            url: DEAD_URL.to_owned(),
            sha256: Sha256::of(&bytes),
            size: None,
        };
        let report = fetch_all(
            &mirror,
            std::slice::from_ref(&wanted),
            &offline(),
            &mut Quiet,
        )
        .unwrap();
        assert_eq!((report.present, report.downloaded), (1, 0));
        assert_eq!(
            report.per_kind[&cmbuild_store::mirror::Kind::Crate].present,
            1
        );
        assert!(!report
            .per_kind
            .contains_key(&cmbuild_store::mirror::Kind::Deb));
        let index = mirror.load_index().unwrap();
        let entry = index.get(&wanted.key).unwrap();
        assert_eq!((entry.cid, entry.size), (stored.cid, bytes.len() as u64));
    }

    #[test]
    fn corrupt_blob_is_not_counted_as_present() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let stored = mirror.put_bytes(b"original").unwrap();
        let wanted = Wanted {
            key: Key::crate_("c", "1.0.0"),
            url: DEAD_URL.to_owned(),
            sha256: stored.sha256,
            size: Some(8),
        };
        mirror
            .record([(wanted.key.clone(), Entry::new(&stored, None))])
            .unwrap();
        std::fs::write(mirror.blob_path(&stored.cid), b"tampered").unwrap();
        // The mirror copy is refused, so a download is attempted (and fails here).
        let err = fetch_all(&mirror, &[wanted], &offline(), &mut Quiet).unwrap_err();
        assert!(
            format!("{err:#}").contains("downloading crate/c/1.0.0"),
            "{err:#}"
        );
    }
    #[test]
    fn every_locked_package_is_wanted_with_its_pins() {
        let lock = lock::shipped_lock().unwrap();
        let wanted = wanted_from_lock(&lock);
        assert_eq!(wanted.len(), lock.packages.len());
        for (w, p) in wanted.iter().zip(&lock.packages) {
            assert_eq!(w.sha256, p.sha256);
            assert_eq!(w.size, Some(p.size));
            assert_eq!(
                w.url,
                format!("http://deb.debian.org/debian/{}", p.filename)
            );
            assert_eq!(
                w.key.to_string(),
                format!("deb/{}/{}/{}", p.name, p.version, p.architecture)
            );
        }
    }

    #[test]
    fn a_package_stored_under_another_cid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let bytes = b"fake deb tzdata 2025b-4 all\n";
        let stored = mirror.put_bytes(bytes).unwrap();
        let mut lock = lock::shipped_lock().unwrap();
        lock.packages.truncate(1);
        let p = &mut lock.packages[0];
        p.sha256 = stored.sha256;
        p.size = stored.size;
        p.cid = stored.cid;
        let key = Key::deb(&p.name, &p.version, &p.architecture);
        mirror
            .record([(key.clone(), Entry::new(&stored, None))])
            .unwrap();
        check_guest_packages(&mirror, &lock, &mut Quiet).unwrap();
        // The lock pins another CID for the same bytes: refused, naming both.
        let other = cmbuild_store::cid::cid_of_bytes(b"other");
        lock.packages[0].cid = other;
        let err = check_guest_packages(&mirror, &lock, &mut Quiet)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&other.to_string()) && err.contains(&stored.cid.to_string()),
            "{err}"
        );
        // A blob that rotted after the fetch is refused too.
        lock.packages[0].cid = stored.cid;
        std::fs::write(mirror.blob_path(&stored.cid), b"rotten").unwrap();
        assert!(check_guest_packages(&mirror, &lock, &mut Quiet).is_err());
    }
}
