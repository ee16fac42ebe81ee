//! `cmbuild image lock|build`: resolve the guest image's package request into the locks (the
//! base layer's, the toolchain layers' and the glibc floors'), and assemble the image from
//! the mirror, pinning (or, with `check`, re-proving) the content IDs of its four base files
//! and of each toolchain layer in `digests.lock.env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cmbuild_image::debian::Package;
use cmbuild_image::http::{default_cache_dir, HttpArchive};
use cmbuild_image::image::{self, ImageError, Step};
use cmbuild_image::layers::{self, ToolchainLocks};
use cmbuild_image::lock::{self, Lock, LockFileError, Request};
use cmbuild_image::locking::{self, LockError, MirrorDebStore, Progress};
use cmbuild_image::pins::{self, Pins, PinsError};
use cmbuild_image::sysroot::{self, FloorLocks};
use cmbuild_store::cid::cid_of_file;
use cmbuild_store::mirror::{Mirror, MirrorError};

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageOpError {
    /// A file could not be read or written.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Resolving or pinning the request failed.
    #[error("{what} {}", .path.display())]
    Lock {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<LockError>,
    },
    /// The request or the lock file is malformed.
    #[error("{what} {}", .path.display())]
    LockFile {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: LockFileError,
    },
    /// The mirror failed.
    #[error("the mirror {}", .dir.display())]
    Mirror {
        /// The mirror directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: MirrorError,
    },
    /// The image could not be built.
    #[error(
        "building the guest image (is every locked package in {}? `cmbuild vendor` puts them there)",
        .mirror.display()
    )]
    Build {
        /// The mirror directory.
        mirror: PathBuf,
        /// What failed.
        #[source]
        source: Box<ImageError>,
    },
    /// A glibc floor's sysroots' image could not be made.
    #[error("making a glibc floor's sysroots' image")]
    Floor(#[source] Box<crate::floor::FloorError>),
    /// The pins file could not be written.
    #[error("writing {}", .path.display())]
    WritePins {
        /// The pins file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: MirrorError,
    },
    /// The pins file is malformed.
    #[error("reading {}", .path.display())]
    Pins {
        /// The pins file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PinsError,
    },
}

type Result<T, E = ImageOpError> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageOpError {
    let path = path.to_path_buf();
    move |source| ImageOpError::Io { what, path, source }
}

/// What `cmbuild image lock` is asked to do.
#[derive(Clone, Debug)]
pub struct ImageLockOptions {
    /// The mirror that receives every locked `.deb`.
    pub mirror_dir: PathBuf,
    /// The package request (`guest-image/packages.toml`).
    pub request: PathBuf,
    /// Where the base layer's lock is written.
    pub output: PathBuf,
    /// Where the toolchain layers' locks are written.
    pub toolchains_output: PathBuf,
    /// Where the glibc floors' locks are written.
    pub floors_output: PathBuf,
    /// Lock the glibc floors only, leaving the base's and the toolchains' locks (and so
    /// the image and every root hash) as they are.
    pub glibc_floors_only: bool,
    /// Where the container layer's lock is written.
    pub containers_output: PathBuf,
    /// Lock the container layer only, over the base lock already at `output`: the base's
    /// and the toolchains' locks (and so every published root hash) stay as they are.
    pub containers_only: bool,
    /// The OpenPGP keyring InRelease must be signed with.
    pub keyring: PathBuf,
    /// Resolve only: download no package, write no lock.
    pub dry_run: bool,
}

/// What `cmbuild image lock` did.
#[derive(Debug)]
pub enum LockOutcome {
    /// A dry run: the resolved closure of the base, then of each toolchain layer (without
    /// the base's packages), then each glibc floor's packages.
    Resolved(Vec<(String, Vec<Package>)>),
    /// The locks written: the base's and the toolchain layers' (none with
    /// `glibc_floors_only`), and the glibc floors'.
    Written {
        /// The base layer's lock.
        base: Option<Box<Lock>>,
        /// The toolchain layers' locks.
        toolchains: Option<Box<ToolchainLocks>>,
        /// The glibc floors' locks (none with `containers_only`).
        floors: Option<Box<FloorLocks>>,
        /// The container layer's lock (none with `glibc_floors_only`, or when the
        /// request has no container layer).
        containers: Option<Box<Lock>>,
    },
}

/// Reads the request, says what it is about to do (`announce`), resolves it against the
/// signed indices and, unless a dry run, pins every package into the mirror and writes
/// the lock.
pub fn lock(
    opts: &ImageLockOptions,
    announce: &mut dyn FnMut(&Request),
    progress: &mut dyn FnMut(Progress),
) -> Result<LockOutcome> {
    let text = std::fs::read_to_string(&opts.request).map_err(io_err("reading", &opts.request))?;
    let lock_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageOpError::Lock {
            what,
            path,
            source: Box::new(source),
        }
    };
    let request = Request::parse(&text).map_err(|source| ImageOpError::LockFile {
        what: "parsing",
        path: opts.request.clone(),
        source,
    })?;
    let options = locking::LockOptions {
        keyring: opts.keyring.clone(),
    };
    let mut archive = HttpArchive::new(&request.mirror, default_cache_dir());
    announce(&request);
    if opts.glibc_floors_only {
        return lock_floors(opts, &request, &options, &mut archive, progress).map(|floors| {
            match floors {
                FloorsOutcome::Resolved(resolved) => LockOutcome::Resolved(resolved),
                FloorsOutcome::Written(floors) => LockOutcome::Written {
                    base: None,
                    toolchains: None,
                    floors: Some(floors),
                    containers: None,
                },
            }
        });
    }
    if opts.containers_only {
        let text =
            std::fs::read_to_string(&opts.output).map_err(io_err("reading", &opts.output))?;
        let base = Lock::parse(&text).map_err(|source| ImageOpError::LockFile {
            what: "parsing",
            path: opts.output.clone(),
            source,
        })?;
        return Ok(
            match lock_containers(opts, &request, &base, &options, &mut archive, progress)? {
                LayerOutcome::Resolved(resolved) => LockOutcome::Resolved(resolved),
                LayerOutcome::Written(containers) => LockOutcome::Written {
                    base: None,
                    toolchains: None,
                    floors: None,
                    containers,
                },
            },
        );
    }
    let resolution = locking::resolve_request(&request, &options, &mut archive, progress)
        .map_err(lock_err("resolving", &opts.request))?;
    let default = request.default_toolchain.clone().unwrap_or_default();
    if opts.dry_run {
        // Toolchain layers are resolved against the base's closure as it would be locked.
        let base = Lock {
            format: lock::LOCK_FORMAT.into(),
            indices: BTreeMap::new(),
            mirror: request.mirror.clone(),
            packages: resolution
                .packages
                .iter()
                .map(locking::locked_entry)
                .collect(),
            release_date: String::new(),
            release_version: String::new(),
            suite: request.suite.clone(),
        };
        let mut resolved = vec![("base".to_owned(), resolution.packages)];
        for id in request.toolchains.keys() {
            let layer =
                locking::resolve_toolchain(&request, id, &base, &options, &mut archive, progress)
                    .map_err(lock_err("resolving a toolchain layer of", &opts.request))?;
            resolved.push((format!("toolchain {id}"), layer.packages));
        }
        if let LayerOutcome::Resolved(containers) =
            lock_containers(opts, &request, &base, &options, &mut archive, progress)?
        {
            resolved.extend(containers);
        }
        if let FloorsOutcome::Resolved(floors) =
            lock_floors(opts, &request, &options, &mut archive, progress)?
        {
            resolved.extend(floors);
        }
        return Ok(LockOutcome::Resolved(resolved));
    }
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|source| ImageOpError::Mirror {
        dir: opts.mirror_dir.clone(),
        source,
    })?;
    let mut store = MirrorDebStore::new(&mirror, &request.mirror);
    let lock = locking::pin_packages(&request, resolution, &mut archive, &mut store, progress)
        .map_err(lock_err("pinning the packages of", &opts.request))?;
    let mut toolchains = BTreeMap::new();
    for id in request.toolchains.keys() {
        let layer_request = request.toolchain_request(id).expect("a key of toolchains");
        let resolution =
            locking::resolve_toolchain(&request, id, &lock, &options, &mut archive, progress)
                .map_err(lock_err("resolving a toolchain layer of", &opts.request))?;
        let layer = locking::pin_packages(
            &layer_request,
            resolution,
            &mut archive,
            &mut store,
            progress,
        )
        .map_err(lock_err("pinning a toolchain layer of", &opts.request))?;
        toolchains.insert(id.clone(), layer);
    }
    let toolchains = ToolchainLocks {
        default,
        format: layers::TOOLCHAIN_LOCKS_FORMAT.into(),
        toolchains,
    };
    // What is written must read back: ids are the versions the locks pin.
    let text = toolchains.to_json();
    ToolchainLocks::parse(&text).map_err(|source| ImageOpError::LockFile {
        what: "checking the toolchain locks resolved from",
        path: opts.request.clone(),
        source,
    })?;
    let FloorsOutcome::Written(floors) =
        lock_floors(opts, &request, &options, &mut archive, progress)?
    else {
        unreachable!("not a dry run");
    };
    let LayerOutcome::Written(containers) =
        lock_containers(opts, &request, &lock, &options, &mut archive, progress)?
    else {
        unreachable!("not a dry run");
    };
    for (path, bytes) in [
        (&opts.output, lock.to_json()),
        (&opts.toolchains_output, text),
    ] {
        write_lock(path, &bytes)?;
    }
    Ok(LockOutcome::Written {
        base: Some(Box::new(lock)),
        toolchains: Some(Box::new(toolchains)),
        floors: Some(floors),
        containers,
    })
}

/// The error of a resolution or pinning step (`what`) of the request `opts` names.
fn request_lock_error(
    opts: &ImageLockOptions,
    what: &'static str,
) -> impl FnOnce(LockError) -> ImageOpError {
    let path = opts.request.clone();
    move |source| ImageOpError::Lock {
        what,
        path,
        source: Box::new(source),
    }
}

/// What [`lock_containers`] did.
enum LayerOutcome {
    /// A dry run: the layer's packages (none when the request has no container layer).
    Resolved(Vec<(String, Vec<Package>)>),
    /// The layer's lock, written to `containers_output` (none when the request has no
    /// container layer).
    Written(Option<Box<Lock>>),
}

/// Resolves the request's container layer over `base` (its closure minus the base's
/// packages, as a toolchain layer's) and, unless a dry run, pins its packages into the
/// mirror and writes its lock.
fn lock_containers(
    opts: &ImageLockOptions,
    request: &Request,
    base: &Lock,
    options: &locking::LockOptions,
    archive: &mut HttpArchive,
    progress: &mut dyn FnMut(Progress),
) -> Result<LayerOutcome> {
    let lock_err = |what| request_lock_error(opts, what);
    let Some(layer_request) = request.containers_request() else {
        return Ok(match opts.dry_run {
            true => LayerOutcome::Resolved(Vec::new()),
            false => LayerOutcome::Written(None),
        });
    };
    let resolution = locking::resolve_containers(request, base, options, archive, progress)
        .map_err(lock_err("resolving the container layer of"))?;
    if opts.dry_run {
        return Ok(LayerOutcome::Resolved(vec![(
            "containers".to_owned(),
            resolution.packages,
        )]));
    }
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|source| ImageOpError::Mirror {
        dir: opts.mirror_dir.clone(),
        source,
    })?;
    let mut store = MirrorDebStore::new(&mirror, &request.mirror);
    let lock = locking::pin_packages(&layer_request, resolution, archive, &mut store, progress)
        .map_err(lock_err("pinning the container layer of"))?;
    write_lock(&opts.containers_output, &lock.to_json())?;
    Ok(LayerOutcome::Written(Some(Box::new(lock))))
}

fn write_lock(path: &Path, text: &str) -> Result<()> {
    cmbuild_store::atomic::write_atomically(path, text.as_bytes()).map_err(|source| {
        ImageOpError::Mirror {
            dir: path.to_path_buf(),
            source: source.into(),
        }
    })
}

/// What [`lock_floors`] did.
enum FloorsOutcome {
    /// A dry run: each floor's packages.
    Resolved(Vec<(String, Vec<Package>)>),
    /// The floors' locks, written to `floors_output`.
    Written(Box<FloorLocks>),
}

/// Resolves each glibc floor of the request (its packages exactly, from its suite's
/// signed `binary-all` index) and, unless a dry run, pins them into the mirror and writes
/// the floors' lock file.
fn lock_floors(
    opts: &ImageLockOptions,
    request: &Request,
    options: &locking::LockOptions,
    archive: &mut HttpArchive,
    progress: &mut dyn FnMut(Progress),
) -> Result<FloorsOutcome> {
    let lock_err = |what| request_lock_error(opts, what);
    let mut resolved = Vec::new();
    let mut floors = BTreeMap::new();
    let mut images = BTreeMap::new();
    let mirror = match opts.dry_run {
        true => None,
        false => Some(
            Mirror::open(&opts.mirror_dir).map_err(|source| ImageOpError::Mirror {
                dir: opts.mirror_dir.clone(),
                source,
            })?,
        ),
    };
    for id in request.glibc_floors.keys() {
        let floor_request = request.floor_request(id).expect("a key of glibc_floors");
        let resolution = locking::resolve_exact(&floor_request, options, archive, progress)
            .map_err(lock_err("resolving a glibc floor of"))?;
        let Some(mirror) = &mirror else {
            resolved.push((format!("glibc floor {id}"), resolution.packages));
            continue;
        };
        let mut store = MirrorDebStore::new(mirror, &request.mirror);
        let lock = locking::pin_packages(&floor_request, resolution, archive, &mut store, progress)
            .map_err(lock_err("pinning a glibc floor of"))?;
        // The sysroots' image the floor makes, pinned by its CID and kept in the mirror
        // (where `cmbuild run` finds it).
        let image =
            crate::floor::make_image(id, &lock, |package| Ok(mirror.read_verified(&package.cid)?))
                .map_err(|source| ImageOpError::Floor(Box::new(source)))?;
        let stored = mirror
            .put_bytes(&image)
            .map_err(|source| ImageOpError::Mirror {
                dir: opts.mirror_dir.clone(),
                source,
            })?;
        images.insert(id.clone(), stored.cid);
        floors.insert(id.clone(), lock);
    }
    if opts.dry_run {
        return Ok(FloorsOutcome::Resolved(resolved));
    }
    let floors = FloorLocks {
        floors,
        format: sysroot::FLOOR_LOCKS_FORMAT.into(),
        images,
    };
    // What is written must read back: every floor's C library is the glibc it is named by.
    let text = floors.to_json();
    FloorLocks::parse(&text).map_err(|source| ImageOpError::LockFile {
        what: "checking the glibc floors resolved from",
        path: opts.request.clone(),
        source,
    })?;
    write_lock(&opts.floors_output, &text)?;
    Ok(FloorsOutcome::Written(Box::new(floors)))
}

/// What `cmbuild image build` is asked to do.
#[derive(Clone, Debug)]
pub struct ImageBuildOptions {
    /// The mirror holding every locked `.deb`.
    pub mirror_dir: PathBuf,
    /// Where the image files are written.
    pub out_dir: PathBuf,
    /// The guest-image lock (the base layer).
    pub lock: PathBuf,
    /// The toolchain layers' locks.
    pub toolchains: PathBuf,
    /// The container layer's lock (a missing file: no container layer).
    pub containers: PathBuf,
    /// The pins file updated (or, with `check`, compared).
    pub digests: PathBuf,
    /// Compare the result with the pins instead of writing them.
    pub check: bool,
}

/// One pin a build produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltPin {
    /// The pin's key.
    pub key: String,
    /// The CID this build gives.
    pub cid: String,
    /// What it pins (a file path or `toolchain of T`).
    pub what: String,
    /// What the pins file said before, if anything.
    pub pinned: Option<String>,
}

impl BuiltPin {
    /// Whether the pins file already pinned exactly this.
    pub fn reproduces(&self) -> bool {
        self.pinned.as_deref() == Some(self.cid.as_str())
    }
}

/// Builds the image and compares (`check`) or records its pins; returns every pin, with
/// what the pins file said before. With `check`, nothing but the image files is written.
pub fn build(opts: &ImageBuildOptions, progress: &mut dyn FnMut(Step)) -> Result<Vec<BuiltPin>> {
    let text = std::fs::read_to_string(&opts.lock)
        .map_err(io_err("reading the guest-image lock", &opts.lock))?;
    let lock = Lock::parse(&text).map_err(|source| ImageOpError::LockFile {
        what: "parsing",
        path: opts.lock.clone(),
        source,
    })?;
    let mirror = Mirror::open(&opts.mirror_dir).map_err(|source| ImageOpError::Mirror {
        dir: opts.mirror_dir.clone(),
        source,
    })?;
    let load = |package: &lock::LockedPackage| Ok(mirror.read_verified(&package.cid)?);
    let built =
        image::build_image(&lock, load, &opts.out_dir, &mut *progress).map_err(|source| {
            ImageOpError::Build {
                mirror: opts.mirror_dir.clone(),
                source: Box::new(source),
            }
        })?;

    let mut produced: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, file) in pins::IMAGE_FILES {
        let path = &built.files[*file];
        let cid = cid_of_file(path).map_err(io_err("hashing", path))?;
        produced.insert(
            key.to_string(),
            (cid.to_string(), path.display().to_string()),
        );
    }
    let text = std::fs::read_to_string(&opts.toolchains)
        .map_err(io_err("reading the toolchain locks", &opts.toolchains))?;
    let toolchains = ToolchainLocks::parse(&text).map_err(|source| ImageOpError::LockFile {
        what: "parsing",
        path: opts.toolchains.clone(),
        source,
    })?;
    for (id, layer) in &toolchains.toolchains {
        layers::check_layer(&lock, id, layer).map_err(|e| ImageOpError::LockFile {
            what: "stacking a toolchain layer of",
            path: opts.toolchains.clone(),
            source: LockFileError::Request(e.to_string()),
        })?;
        let path = image::build_layer(layer, id, load, &opts.out_dir, &mut *progress).map_err(
            |source| ImageOpError::Build {
                mirror: opts.mirror_dir.clone(),
                source: Box::new(source),
            },
        )?;
        let cid = cid_of_file(&path).map_err(io_err("hashing", &path))?;
        produced.insert(
            pins::layer_key(id),
            (cid.to_string(), path.display().to_string()),
        );
    }
    match std::fs::read_to_string(&opts.containers) {
        Ok(text) => {
            let layer = Lock::parse(&text).map_err(|source| ImageOpError::LockFile {
                what: "parsing",
                path: opts.containers.clone(),
                source,
            })?;
            let path = cmbuild_image::containers::build_layer(
                &layer,
                &lock,
                load,
                &opts.out_dir,
                &mut *progress,
            )
            .map_err(|source| ImageOpError::Build {
                mirror: opts.mirror_dir.clone(),
                source: Box::new(source),
            })?;
            let cid = cid_of_file(&path).map_err(io_err("hashing", &path))?;
            produced.insert(
                cmbuild_image::containers::PIN.to_owned(),
                (cid.to_string(), path.display().to_string()),
            );
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(io_err(
                "reading the container layer's lock",
                &opts.containers,
            )(err))
        }
    }

    let existing: Pins = match std::fs::read_to_string(&opts.digests) {
        Ok(text) => pins::parse(&text).map_err(|source| ImageOpError::Pins {
            path: opts.digests.clone(),
            source,
        })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !opts.check => Pins::new(),
        Err(err) => return Err(io_err("reading", &opts.digests)(err)),
    };
    let result: Vec<BuiltPin> = produced
        .iter()
        .map(|(key, (cid, what))| BuiltPin {
            key: key.clone(),
            cid: cid.clone(),
            what: what.clone(),
            pinned: existing.get(key).cloned(),
        })
        .collect();
    if !opts.check {
        // Other pins in the file (written by other commands) are kept; ours are replaced,
        // and toolchain pins of layers no longer locked (or of the per-triple scheme
        // before layers) are dropped.
        let mut merged = existing;
        merged.retain(|key, _| {
            !pins::is_triple_toolchain_key(key)
                && (!pins::is_layer_key(key) || produced.contains_key(key))
        });
        for pin in &result {
            merged.insert(pin.key.clone(), pin.cid.clone());
        }
        cmbuild_store::atomic::write_atomically(&opts.digests, pins::render(&merged).as_bytes())
            .map_err(|source| ImageOpError::Io {
                what: "writing",
                path: opts.digests.clone(),
                source: source.source,
            })?;
    }
    Ok(result)
}
