//! Locking: from the signed Debian indices to the pinned packages of a [`Lock`].
//!
//! Locking trusts nothing it has not checked: InRelease must carry a good signature from
//! the archive keyring, each `Packages` index must match InRelease's sha256, and each
//! `.deb` must match its index's sha256 and size before its CID is computed and it is
//! stored. The lock depends only on the signed release, the indices and the request.
//! Where the bytes come from is an [`Archive`] (over HTTP: [`crate::http::HttpArchive`]);
//! where packages are kept is a [`DebStore`] (the vendor mirror: [`MirrorDebStore`]).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::io::Read;
use std::path::PathBuf;

use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::{Entry, Key, Mirror};
use cmbuild_store::sha256::Sha256;

use crate::debian::{self, DebianError, Package};
use crate::lock::{Lock, LockedPackage, Request, LOCK_FORMAT};
use crate::resolve::{self, ResolveError, Universe};

/// An error from whatever serves archive files or stores packages (network, mirror).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why locking (or vendoring a lock's packages) failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// fetching {path} failed
    #[error("fetching {path} failed")]
    Fetch {
        /// Path of the file below the archive root.
        path: String,
        #[source]
        /// The underlying error.
        source: BoxError,
    },
    /// decompressing {path} failed
    #[error("decompressing {path} failed")]
    Decompress {
        /// Path of the file below the archive root.
        path: String,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    /// {path} is not UTF-8 text
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// Path of the file below the archive root.
        path: String,
    },
    /// Debian metadata
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// resolving the request
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// {filename} does not match its index: expected sha256 {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)
    #[error("{filename} does not match its index: expected sha256 {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)")]
    PackageMismatch {
        /// Path of the `.deb` below the archive root.
        filename: String,
        /// What was pinned or expected.
        expected: Sha256,
        /// The expected size in bytes.
        expected_size: u64,
        /// What was found.
        actual: Sha256,
        /// The size found, in bytes.
        actual_size: u64,
    },
    /// {filename} has CID {actual}, but the lock pins {expected}
    #[error("{filename} has CID {actual}, but the lock pins {expected}")]
    CidMismatch {
        /// Path of the `.deb` below the archive root.
        filename: String,
        /// What was pinned or expected.
        expected: Cid,
        /// What was found.
        actual: Cid,
    },
    /// the request has no container layer (`[containers]` in packages.toml)
    #[error("the request has no container layer (`[containers]` in packages.toml)")]
    NoContainerLayer,
    /// the request has no toolchain `{0}`
    #[error("the request has no toolchain `{0}`")]
    UnknownToolchain(String),
    /// storing {filename} failed
    #[error("storing {filename} failed")]
    Store {
        /// Path of the `.deb` below the archive root.
        filename: String,
        #[source]
        /// The underlying error.
        source: BoxError,
    },
}

/// Where archive files come from: the network in `cmbuild image lock`, a map in tests.
pub trait Archive {
    /// The bytes of `path` below the archive root. `sha256` and `size`, when given, are what
    /// the caller will insist on: an implementation may serve a cached copy by the hash
    /// (the caller re-verifies whatever comes back), and should read no more than `size`
    /// (plus one byte, to tell that the server sent too much).
    fn fetch(
        &mut self,
        path: &str,
        sha256: Option<&Sha256>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, BoxError>;
}

/// Where verified `.deb` files are kept: the content-addressed mirror.
pub trait DebStore {
    /// The CID of an already stored copy of this exact package, if the store has one.
    fn find(&self, package: &LockedPackage) -> Result<Option<Cid>, BoxError>;
    /// Keep `bytes` (already verified against the index) as `package`, named `package.cid`.
    fn put(&mut self, package: &LockedPackage, bytes: &[u8]) -> Result<(), BoxError>;
}

/// What locking is doing, for the command line to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// InRelease verified.
    Release {
        /// InRelease `Version`.
        version: String,
        /// InRelease `Date`.
        date: String,
        /// Bytes in total.
        bytes: u64,
    },
    /// An index fetched, verified and parsed.
    Index {
        /// Path of the file below the archive root.
        path: String,
        /// Bytes in total.
        bytes: u64,
        /// How many packages.
        packages: usize,
    },
    /// The closure is known.
    Resolved {
        /// How many packages.
        packages: usize,
        /// Bytes in total.
        bytes: u64,
        /// How many are not in the store yet.
        to_download: usize,
        /// Their bytes.
        bytes_to_download: u64,
    },
    /// One package is being downloaded (`done` of `of` so far).
    Downloading {
        /// Path of the `.deb` below the archive root.
        filename: String,
        /// Size in bytes.
        size: u64,
        /// Packages downloaded before this one.
        done: usize,
        /// Packages to download in all.
        of: usize,
    },
}

/// Options of [`lock_packages`] that do not come from the request.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The OpenPGP keyring InRelease must be signed with.
    pub keyring: PathBuf,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            keyring: PathBuf::from(debian::DEFAULT_KEYRING),
        }
    }
}

/// The closure of a request, before any package is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The verified release it was resolved from.
    pub release: debian::Release,
    /// Index path -> sha256, as the lock records them.
    pub indices: BTreeMap<String, Sha256>,
    /// Sorted by name, then architecture.
    pub packages: Vec<Package>,
}

/// Resolve `request` against the signed indices of `archive`, store every resolved
/// `.deb` in `store`, and return the lock.
pub fn lock_packages(
    request: &Request,
    options: &LockOptions,
    archive: &mut dyn Archive,
    store: &mut dyn DebStore,
    progress: &mut dyn FnMut(Progress),
) -> Result<Lock, LockError> {
    let resolution = resolve_request(request, options, archive, progress)?;
    pin_packages(request, resolution, archive, store, progress)
}

/// Verify InRelease, fetch and verify the indices, and resolve the request's closure.
pub fn resolve_request(
    request: &Request,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolution, LockError> {
    let (release, indices, packages) =
        read_suite(request, &request.suite, options, archive, progress)?;
    let universe = Universe::new(&request.native, packages);
    let excludes: BTreeSet<String> = request.exclude.keys().cloned().collect();
    let packages = resolve::resolve(&universe, &request.requested(), &excludes)?;
    Ok(Resolution {
        release,
        indices,
        packages,
    })
}

/// Resolve the toolchain layer `id` of `request` on top of the locked `base`: its closure
/// over its own suite's signed indices (and the base suite's, when they differ, for the
/// dependencies a backports or newer suite leaves to the release it extends), where every
/// package the base holds is present in exactly its locked version, minus those packages.
/// So the layer holds what the toolchain adds and nothing the base has; a dependency the
/// base's version does not satisfy fails the resolution rather than shadowing the base.
/// Index paths of the base's suite are recorded as `../<suite>/...` (relative to the
/// layer's `dists/<suite>/`).
pub fn resolve_toolchain(
    request: &Request,
    id: &str,
    base: &Lock,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolution, LockError> {
    let layer = request
        .toolchain_request(id)
        .ok_or_else(|| LockError::UnknownToolchain(id.to_owned()))?;
    resolve_layer(request, &layer, base, options, archive, progress)
}

/// Resolve the container layer of `request` on top of the locked `base`, as
/// [`resolve_toolchain`] does a toolchain's.
pub fn resolve_containers(
    request: &Request,
    base: &Lock,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolution, LockError> {
    let layer = request
        .containers_request()
        .ok_or(LockError::NoContainerLayer)?;
    resolve_layer(request, &layer, base, options, archive, progress)
}

/// The closure of `layer` (a request of `request`'s) over its suite's signed indices and
/// the base suite's, minus the packages of `base` (see [`resolve_toolchain`]).
fn resolve_layer(
    request: &Request,
    layer: &Request,
    base: &Lock,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolution, LockError> {
    let (release, mut indices, mut packages) =
        read_suite(layer, &layer.suite, options, archive, progress)?;
    if layer.suite != request.suite {
        let (_, base_indices, base_packages) =
            read_suite(layer, &request.suite, options, archive, progress)?;
        for (path, sha256) in base_indices {
            indices.insert(format!("../{}/{path}", request.suite), sha256);
        }
        packages.extend(base_packages);
    }
    let packages = layer_closure(layer, base, packages)?;
    Ok(Resolution {
        release,
        indices,
        packages,
    })
}

/// The closure of a layer's request over `packages`, where each package the base locks
/// is only available in its locked build, minus the base's packages.
pub fn layer_closure(
    layer: &Request,
    base: &Lock,
    mut packages: Vec<Package>,
) -> Result<Vec<Package>, LockError> {
    let in_base: BTreeMap<(&str, &str), Sha256> = base
        .packages
        .iter()
        .map(|p| ((p.name.as_str(), p.architecture.as_str()), p.sha256))
        .collect();
    packages.retain(|p| {
        in_base
            .get(&(p.name.as_str(), p.architecture.as_str()))
            .is_none_or(|sha256| *sha256 == p.sha256)
    });
    let universe = Universe::new(&layer.native, packages);
    let excludes: BTreeSet<String> = layer.exclude.keys().cloned().collect();
    let mut closure = resolve::resolve(&universe, &layer.requested(), &excludes)?;
    closure.retain(|p| !in_base.contains_key(&(p.name.as_str(), p.architecture.as_str())));
    Ok(closure)
}

/// Resolve a request whose packages are taken exactly as named, with no dependency
/// resolution (a glibc floor's, see [`Request::floor_request`]): each requested name of
/// each architecture is looked up in the signed indices, and the newest version there is
/// pinned. A name the indices lack fails the resolution.
pub fn resolve_exact(
    request: &Request,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolution, LockError> {
    let (release, indices, packages) =
        read_suite(request, &request.suite, options, archive, progress)?;
    let packages = pick_exact(&request.requested(), packages)?;
    Ok(Resolution {
        release,
        indices,
        packages,
    })
}

/// The newest package of each requested name and architecture, sorted by name, then
/// architecture.
pub fn pick_exact(
    requested: &[resolve::Requested],
    packages: Vec<Package>,
) -> Result<Vec<Package>, LockError> {
    let mut picked: BTreeMap<(String, String), Package> = BTreeMap::new();
    for wanted in requested {
        let newest = packages
            .iter()
            .filter(|p| p.name == wanted.name && p.architecture == wanted.arch)
            .max_by(|a, b| debian::compare_versions(&a.version, &b.version))
            .ok_or_else(|| ResolveError::NotFound {
                name: wanted.name.clone(),
                arch: wanted.arch.clone(),
                detail: String::new(),
            })?;
        picked.insert(
            (newest.name.clone(), newest.architecture.clone()),
            newest.clone(),
        );
    }
    Ok(picked.into_values().collect())
}

/// InRelease of `suite` (signature, codename) and the `Packages` index of each of the
/// request's architectures, verified against it and parsed.
#[allow(clippy::type_complexity)]
fn read_suite(
    request: &Request,
    suite: &str,
    options: &LockOptions,
    archive: &mut dyn Archive,
    progress: &mut dyn FnMut(Progress),
) -> Result<(debian::Release, BTreeMap<String, Sha256>, Vec<Package>), LockError> {
    let dists = format!("dists/{suite}");
    let inrelease_path = format!("{dists}/InRelease");
    let inrelease = fetch(archive, &inrelease_path, None, None)?;
    let signed = debian::verify_inrelease(&inrelease, &options.keyring)?;
    let release = debian::parse_release(&signed)?;
    release.check_codename(suite)?;
    progress(Progress::Release {
        version: release.version.clone(),
        date: release.date.clone(),
        bytes: inrelease.len() as u64,
    });

    let mut indices = BTreeMap::new();
    let mut packages = Vec::new();
    for arch in request.architectures() {
        // Suites without a gzip index (backports) have an xz one.
        let gz = request.index_path(&arch);
        let xz = gz.strip_suffix(".gz").map(|stem| format!("{stem}.xz"));
        let path = match xz {
            Some(xz) if release.entry(&gz).is_err() && release.entry(&xz).is_ok() => xz,
            _ => gz,
        };
        let entry = release.entry(&path)?.clone();
        // by-hash names cannot change under us between InRelease and the index.
        let remote = match (release.acquire_by_hash, path.rsplit_once('/')) {
            (true, Some((dir, _))) => format!("{dists}/{dir}/by-hash/SHA256/{}", entry.sha256),
            _ => format!("{dists}/{path}"),
        };
        let compressed = fetch(archive, &remote, Some(&entry.sha256), Some(entry.size))?;
        release.check_index(&path, &compressed)?;
        let text = gunzip_text(&path, &compressed)?;
        let parsed = debian::parse_packages(&text)?;
        progress(Progress::Index {
            path: format!("{suite}/{path}"),
            bytes: compressed.len() as u64,
            packages: parsed.len(),
        });
        packages.extend(parsed);
        indices.insert(path, entry.sha256);
    }
    Ok((release, indices, packages))
}

/// Download every resolved package not yet in `store`, verify it against its index
/// entry, compute its CID, store it, and return the lock.
pub fn pin_packages(
    request: &Request,
    resolution: Resolution,
    archive: &mut dyn Archive,
    store: &mut dyn DebStore,
    progress: &mut dyn FnMut(Progress),
) -> Result<Lock, LockError> {
    let Resolution {
        release,
        indices,
        packages: resolved,
    } = resolution;

    let mut locked = Vec::with_capacity(resolved.len());
    let mut missing = Vec::new();
    for package in &resolved {
        // The CID is a placeholder until the store has the package or it is downloaded.
        let mut entry = locked_entry(package);
        match store.find(&entry).map_err(|source| LockError::Store {
            filename: entry.filename.clone(),
            source,
        })? {
            Some(cid) => entry.cid = cid,
            None => missing.push(locked.len()),
        }
        locked.push(entry);
    }
    progress(Progress::Resolved {
        packages: locked.len(),
        bytes: locked.iter().map(|p| p.size).sum(),
        to_download: missing.len(),
        bytes_to_download: missing.iter().map(|&i| locked[i].size).sum(),
    });
    for (done, &i) in missing.iter().enumerate() {
        let entry = &mut locked[i];
        progress(Progress::Downloading {
            filename: entry.filename.clone(),
            size: entry.size,
            done,
            of: missing.len(),
        });
        let bytes = fetch(
            archive,
            &entry.filename,
            Some(&entry.sha256),
            Some(entry.size),
        )?;
        check_package(entry, &bytes)?;
        entry.cid = cmbuild_store::cid::cid_of_bytes(&bytes);
        store
            .put(entry, &bytes)
            .map_err(|source| LockError::Store {
                filename: entry.filename.clone(),
                source,
            })?;
    }

    Ok(Lock {
        format: LOCK_FORMAT.to_string(),
        indices,
        mirror: request.mirror.clone(),
        packages: locked,
        release_date: release.date,
        release_version: release.version,
        suite: request.suite.clone(),
    })
}

/// What [`vendor_locked_packages`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VendorReport {
    /// Packages already in the store (verified).
    pub present: usize,
    /// Packages downloaded now.
    pub downloaded: usize,
    /// Bytes downloaded now.
    pub bytes_downloaded: u64,
}

/// Make every package of `lock` available in `store`: what is there already is kept,
/// the rest is fetched from `archive` and accepted only if its sha256 and size are the
/// locked ones and its CID is the locked CID. (`cmbuild vendor` uses its own fetch loop
/// and checks the CIDs after it; tests and tools without that loop use this.)
pub fn vendor_locked_packages(
    lock: &Lock,
    archive: &mut dyn Archive,
    store: &mut dyn DebStore,
    progress: &mut dyn FnMut(Progress),
) -> Result<VendorReport, LockError> {
    let mut report = VendorReport::default();
    let mut missing = Vec::new();
    for package in &lock.packages {
        let found = store.find(package).map_err(|source| LockError::Store {
            filename: package.filename.clone(),
            source,
        })?;
        match found {
            Some(cid) if cid == package.cid => report.present += 1,
            Some(cid) => {
                return Err(LockError::CidMismatch {
                    filename: package.filename.clone(),
                    expected: package.cid,
                    actual: cid,
                })
            }
            None => missing.push(package),
        }
    }
    progress(Progress::Resolved {
        packages: lock.packages.len(),
        bytes: lock.total_size(),
        to_download: missing.len(),
        bytes_to_download: missing.iter().map(|p| p.size).sum(),
    });
    for (done, package) in missing.iter().enumerate() {
        progress(Progress::Downloading {
            filename: package.filename.clone(),
            size: package.size,
            done,
            of: missing.len(),
        });
        let bytes = fetch(
            archive,
            &package.filename,
            Some(&package.sha256),
            Some(package.size),
        )?;
        check_package(package, &bytes)?;
        let cid = cmbuild_store::cid::cid_of_bytes(&bytes);
        if cid != package.cid {
            return Err(LockError::CidMismatch {
                filename: package.filename.clone(),
                expected: package.cid,
                actual: cid,
            });
        }
        store
            .put(package, &bytes)
            .map_err(|source| LockError::Store {
                filename: package.filename.clone(),
                source,
            })?;
        report.downloaded += 1;
        report.bytes_downloaded += package.size;
    }
    Ok(report)
}

/// The vendor mirror as a [`DebStore`]: blobs under their CID, indexed as
/// `deb/NAME/VERSION/ARCH` with their sha256 and download URL.
pub struct MirrorDebStore<'a> {
    mirror: &'a Mirror,
    /// Archive root URL, recorded with each entry.
    base_url: String,
}

impl<'a> MirrorDebStore<'a> {
    /// The mirror as a store of packages downloaded from `base_url`.
    pub fn new(mirror: &'a Mirror, base_url: &str) -> MirrorDebStore<'a> {
        MirrorDebStore {
            mirror,
            base_url: base_url.to_string(),
        }
    }
}

impl DebStore for MirrorDebStore<'_> {
    fn find(&self, package: &LockedPackage) -> Result<Option<Cid>, BoxError> {
        // A pinned CID is enough: the blob may have come from IPFS, with no index entry.
        let mut candidates = vec![package.cid];
        let key = Key::deb(&package.name, &package.version, &package.architecture);
        if let Some(entry) = self.mirror.load_index()?.get(&key) {
            if entry.sha256 == package.sha256 && entry.size == package.size {
                candidates.push(entry.cid);
            }
        }
        for cid in candidates {
            if self.mirror.has_valid(&cid)? {
                // The index entry is what `mirror verify`/`image build` look packages up by.
                let stored = cmbuild_store::mirror::Stored {
                    cid,
                    sha256: package.sha256,
                    size: package.size,
                };
                let url = format!("{}/{}", self.base_url, package.filename);
                let entry = Entry::new(&stored, Some(url));
                if self.mirror.load_index()?.get(&key) != Some(&entry) {
                    self.mirror.record([(key, entry)])?;
                }
                return Ok(Some(cid));
            }
        }
        Ok(None)
    }

    fn put(&mut self, package: &LockedPackage, bytes: &[u8]) -> Result<(), BoxError> {
        let stored = self.mirror.put_bytes(bytes)?;
        if stored.cid != package.cid {
            return Err(format!(
                "the mirror stored {} as {}, expected {}",
                package.filename, stored.cid, package.cid
            )
            .into());
        }
        let key = Key::deb(&package.name, &package.version, &package.architecture);
        let url = format!("{}/{}", self.base_url, package.filename);
        self.mirror
            .record([(key, Entry::new(&stored, Some(url)))])?;
        Ok(())
    }
}

/// The lock entry of a resolved package. Its CID is a placeholder (that of the empty
/// file) until the caller fills it in: from the store, or from the downloaded bytes.
pub fn locked_entry(package: &Package) -> LockedPackage {
    LockedPackage {
        architecture: package.architecture.clone(),
        cid: cmbuild_store::cid::cid_of_bytes(b""),
        filename: package.filename.clone(),
        name: package.name.clone(),
        sha256: package.sha256,
        size: package.size,
        version: package.version.clone(),
    }
}

/// Accept `bytes` as `package` only if sha256 and size are the locked ones.
pub fn check_package(package: &LockedPackage, bytes: &[u8]) -> Result<(), LockError> {
    let actual = Sha256::of(bytes);
    if actual != package.sha256 || bytes.len() as u64 != package.size {
        return Err(LockError::PackageMismatch {
            filename: package.filename.clone(),
            expected: package.sha256,
            expected_size: package.size,
            actual,
            actual_size: bytes.len() as u64,
        });
    }
    Ok(())
}

fn fetch(
    archive: &mut dyn Archive,
    path: &str,
    sha256: Option<&Sha256>,
    size: Option<u64>,
) -> Result<Vec<u8>, LockError> {
    archive
        .fetch(path, sha256, size)
        .map_err(|source| LockError::Fetch {
            path: path.to_string(),
            source,
        })
}

fn gunzip_text(path: &str, compressed: &[u8]) -> Result<String, LockError> {
    let mut text = String::new();
    let mut reader: Box<dyn Read> = if path.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(compressed))
    } else {
        Box::new(flate2::read::GzDecoder::new(compressed))
    };
    reader
        .read_to_string(&mut text)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData if !text.is_empty() => LockError::NotText {
                path: path.to_string(),
            },
            _ => LockError::Decompress {
                path: path.to_string(),
                source,
            },
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    /// A `Packages` stanza of a synthetic index.
    fn stanza(name: &str, version: &str, arch: &str, depends: &str) -> String {
        let sha = Sha256::of(format!("{name} {version} {arch}"));
        let depends = if depends.is_empty() {
            String::new()
        } else {
            format!("Depends: {depends}\n")
        };
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n{depends}\
             Filename: pool/{name}_{version}_{arch}.deb\nSize: 1\nSHA256: {sha}\n\n"
        )
    }

    #[test]
    fn exact_requests_take_the_newest_of_each_name_and_nothing_else() {
        // Dependencies are not followed, and a newer version wins.
        let index: String = [
            stanza(
                "libc6-dev-riscv64-cross",
                "2.36-8cross1",
                "all",
                "libc6-riscv64-cross, rpcsvc",
            ),
            stanza("libc6-dev-riscv64-cross", "2.36-9cross1", "all", ""),
            stanza("libc6-riscv64-cross", "2.36-8cross1", "all", ""),
            stanza("libc6-dev-riscv64-cross", "2.41-1cross1", "riscv64", ""),
        ]
        .concat();
        let packages = debian::parse_packages(&index).unwrap();
        let wanted = |names: &[&str]| -> Vec<resolve::Requested> {
            names
                .iter()
                .map(|n| resolve::Requested {
                    name: (*n).into(),
                    arch: "all".into(),
                })
                .collect()
        };
        let picked = pick_exact(&wanted(&["libc6-dev-riscv64-cross"]), packages.clone()).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(
            (picked[0].version.as_str(), picked[0].architecture.as_str()),
            ("2.36-9cross1", "all")
        );
        let err = pick_exact(&wanted(&["libc6-dev-riscv64-cross", "nope"]), packages).unwrap_err();
        assert!(
            matches!(err, LockError::Resolve(ResolveError::NotFound { ref name, .. }) if name == "nope"),
            "{err}"
        );
    }

    fn layer_request(riscv64: &[&str], amd64: &[&str]) -> Request {
        let text = format!(
            "suite = \"next\"\nmirror = \"http://archive.invalid/debian\"\n\
             component = \"main\"\nnative = \"riscv64\"\n[packages]\n\
             riscv64 = {riscv64:?}\namd64 = {amd64:?}\n"
        );
        Request::parse(&text).unwrap()
    }

    #[test]
    fn a_layer_is_its_closure_minus_the_base_with_base_packages_fixed() {
        // The base locks libc6 1.0 and gcc; the layer's suite has a newer libc6 (which the
        // resolver would otherwise prefer), rustc, its std and a library the base lacks.
        let index: String = [
            stanza("libc6", "1.0", "riscv64", ""),
            stanza("libc6", "2.0", "riscv64", ""),
            stanza("libc6", "1.0", "amd64", ""),
            stanza("gcc", "1.0", "riscv64", "libc6"),
            stanza("libllvm", "22", "riscv64", "libc6 (>= 1.0)"),
            stanza(
                "rustc",
                "1.96.0",
                "riscv64",
                "libc6 (>= 0.9), gcc, libllvm, libstd-rust-dev (= 1.96.0)",
            ),
            stanza("libstd-rust-dev", "1.96.0", "riscv64", "libc6"),
            stanza("libstd-rust-dev", "1.96.0", "amd64", "libc6"),
            stanza("needs-new-libc", "1.0", "riscv64", "libc6 (>= 2.0)"),
        ]
        .concat();
        let packages = debian::parse_packages(&index).unwrap();
        let lock_of = |names: &[(&str, &str, &str)]| Lock {
            format: LOCK_FORMAT.into(),
            indices: BTreeMap::new(),
            mirror: String::new(),
            packages: names
                .iter()
                .map(|(name, version, arch)| {
                    let p = packages
                        .iter()
                        .find(|p| {
                            p.name == *name && p.version == *version && p.architecture == *arch
                        })
                        .unwrap();
                    locked_entry(p)
                })
                .collect(),
            release_date: String::new(),
            release_version: String::new(),
            suite: "base".into(),
        };
        let base = lock_of(&[
            ("libc6", "1.0", "riscv64"),
            ("libc6", "1.0", "amd64"),
            ("gcc", "1.0", "riscv64"),
        ]);
        let layer = layer_request(&["rustc"], &["libstd-rust-dev"]);
        let closure = layer_closure(&layer, &base, packages.clone()).unwrap();
        let names: Vec<(&str, &str)> = closure
            .iter()
            .map(|p| (p.name.as_str(), p.architecture.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("libllvm", "riscv64"),
                ("libstd-rust-dev", "amd64"),
                ("libstd-rust-dev", "riscv64"),
                ("rustc", "riscv64"),
            ],
            "the toolchain's own packages, none of the base's (not even a newer libc6)"
        );
        // A dependency only a newer build of a base package satisfies fails the layer
        // instead of shadowing the base.
        let err =
            layer_closure(&layer_request(&["needs-new-libc"], &[]), &base, packages).unwrap_err();
        assert!(
            matches!(err, LockError::Resolve(ResolveError::Unsatisfiable { .. })),
            "{err}"
        );
    }

    const RISCV64: &[u8] = include_bytes!("../testdata/Packages-riscv64");
    const AMD64: &[u8] = include_bytes!("../testdata/Packages-amd64");
    const RISCV64_GZ: &[u8] = include_bytes!("../testdata/Packages-riscv64.gz");
    const AMD64_GZ: &[u8] = include_bytes!("../testdata/Packages-amd64.gz");
    const INRELEASE: &[u8] = include_bytes!("../testdata/InRelease");
    const KEYRING: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/throwaway-keyring.gpg"
    );
    const REQUEST: &str = include_str!("../testdata/packages.toml");

    /// A fake archive: the test indices (gzipped like Debian's), the signed InRelease
    /// fixture that lists them, and every package as the line its fixture hash is of.
    /// `testdata/make-fixtures.py` made them all.
    struct FakeArchive {
        files: BTreeMap<String, Vec<u8>>,
        fetched: Vec<String>,
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::new(9));
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    impl FakeArchive {
        fn new() -> FakeArchive {
            let mut files = BTreeMap::new();
            files.insert("dists/testsuite/InRelease".to_string(), INRELEASE.to_vec());
            for (arch, index, gz) in [("riscv64", RISCV64, RISCV64_GZ), ("amd64", AMD64, AMD64_GZ)]
            {
                let gz = gz.to_vec();
                let hash = Sha256::of(&gz);
                let dir = format!("dists/testsuite/main/binary-{arch}");
                files.insert(format!("{dir}/by-hash/SHA256/{hash}"), gz);
                for p in debian::parse_packages(std::str::from_utf8(index).unwrap()).unwrap() {
                    let body = format!("fake deb {} {} {}\n", p.name, p.version, p.architecture);
                    files.insert(p.filename, body.into_bytes());
                }
            }
            FakeArchive {
                files,
                fetched: Vec::new(),
            }
        }
    }

    impl Archive for FakeArchive {
        fn fetch(
            &mut self,
            path: &str,
            _sha256: Option<&Sha256>,
            _size: Option<u64>,
        ) -> Result<Vec<u8>, BoxError> {
            self.fetched.push(path.to_string());
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| format!("404 {path}").into())
        }
    }

    #[derive(Default)]
    struct MemoryStore {
        blobs: BTreeMap<String, (Cid, Vec<u8>)>,
    }

    impl DebStore for MemoryStore {
        fn find(&self, package: &LockedPackage) -> Result<Option<Cid>, BoxError> {
            Ok(self.blobs.get(&package.filename).map(|(cid, _)| *cid))
        }
        fn put(&mut self, package: &LockedPackage, bytes: &[u8]) -> Result<(), BoxError> {
            self.blobs
                .insert(package.filename.clone(), (package.cid, bytes.to_vec()));
            Ok(())
        }
    }

    fn options() -> LockOptions {
        LockOptions {
            keyring: PathBuf::from(KEYRING),
        }
    }

    fn run(archive: &mut FakeArchive, store: &mut MemoryStore) -> Result<Lock, LockError> {
        let request = Request::parse(REQUEST).unwrap();
        lock_packages(&request, &options(), archive, store, &mut |_| {})
    }

    #[test]
    fn the_gzipped_fixtures_hold_the_readable_ones() {
        for (plain, gz) in [(RISCV64, RISCV64_GZ), (AMD64, AMD64_GZ)] {
            assert_eq!(gunzip_text("fixture", gz).unwrap().as_bytes(), plain);
        }
    }

    #[test]
    fn the_same_indices_give_a_byte_identical_lock() {
        let mut store = MemoryStore::default();
        let first = run(&mut FakeArchive::new(), &mut store).unwrap();
        // Second run: everything is in the store already, nothing is downloaded.
        let mut archive = FakeArchive::new();
        let second = run(&mut archive, &mut store).unwrap();
        assert_eq!(first.to_json(), second.to_json());
        assert!(
            archive.fetched.iter().all(|p| p.starts_with("dists/")),
            "{:?}",
            archive.fetched
        );
        // And from a fresh store too.
        let third = run(&mut FakeArchive::new(), &mut MemoryStore::default()).unwrap();
        assert_eq!(first.to_json(), third.to_json());
        assert_eq!(Lock::parse(&first.to_json()).unwrap(), first);
    }

    #[test]
    fn the_lock_pins_every_resolved_package_by_hash_and_cid() {
        let mut store = MemoryStore::default();
        let lock = run(&mut FakeArchive::new(), &mut store).unwrap();
        assert_eq!(lock.release_version, "0.1");
        let names: Vec<String> = lock
            .packages
            .iter()
            .map(|p| format!("{}:{}", p.name, p.architecture))
            .collect();
        // The request (see testdata/packages.toml) excludes debconf and rustc's awk.
        assert_eq!(
            names,
            [
                "libc6:amd64",
                "libc6:riscv64",
                "libc6-dev:amd64",
                "libc6-dev:riscv64",
                "libgcc-s1:amd64",
                "libgcc-s1:riscv64",
                "rpcsvc-proto:riscv64",
                "rustc:riscv64",
                "tzdata:all",
            ]
        );
        for p in &lock.packages {
            let (cid, bytes) = &store.blobs[&p.filename];
            assert_eq!(cid, &p.cid);
            assert_eq!(*cid, cmbuild_store::cid::cid_of_bytes(bytes));
            check_package(p, bytes).unwrap();
        }
        let text = lock.to_json();
        assert_eq!(text.lines().count(), 8 + lock.packages.len() + 5);
        assert!(text.ends_with("\"suite\": \"testsuite\"\n}\n"));
    }

    #[test]
    fn a_doctored_index_is_refused() {
        let mut archive = FakeArchive::new();
        let key = archive
            .files
            .keys()
            .find(|k| k.contains("binary-amd64/by-hash"))
            .unwrap()
            .clone();
        let tampered =
            gzip(&[AMD64, b"\nPackage: evil\nVersion: 1\nArchitecture: amd64\n"].concat());
        archive.files.insert(key, tampered);
        let err = run(&mut archive, &mut MemoryStore::default()).unwrap_err();
        assert!(
            matches!(err, LockError::Debian(DebianError::IndexMismatch { ref path, .. }) if path == "main/binary-amd64/Packages.gz"),
            "{err}"
        );
    }

    #[test]
    fn a_doctored_package_is_refused() {
        let mut archive = FakeArchive::new();
        let deb = archive
            .files
            .keys()
            .find(|k| k.ends_with("libgcc-s1_14.2.0-19_amd64.deb"))
            .unwrap()
            .clone();
        archive
            .files
            .insert(deb, b"fake deb libgcc-s1 14.2.0-20 amd64\n".to_vec());
        let err = run(&mut archive, &mut MemoryStore::default()).unwrap_err();
        assert!(matches!(err, LockError::PackageMismatch { .. }), "{err}");
    }

    #[test]
    fn a_doctored_signature_or_signed_text_is_refused() {
        let text = std::str::from_utf8(INRELEASE).unwrap();
        // Change one character of the signed text, then one of the signature.
        let doctored_text = text.replacen("Version: 0.1", "Version: 0.2", 1);
        let sig_start = text.find("-----BEGIN PGP SIGNATURE-----").unwrap();
        let (head, sig) = text.split_at(sig_start);
        let line = sig.lines().nth(3).unwrap();
        let flipped: String = line
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == 'A' {
                        'B'
                    } else {
                        'A'
                    }
                } else {
                    c
                }
            })
            .collect();
        let doctored_sig = format!("{head}{}", sig.replacen(line, &flipped, 1));
        for doctored in [doctored_text, doctored_sig] {
            assert_ne!(doctored, text);
            let mut archive = FakeArchive::new();
            archive
                .files
                .insert("dists/testsuite/InRelease".into(), doctored.into_bytes());
            let err = run(&mut archive, &mut MemoryStore::default()).unwrap_err();
            assert!(
                matches!(err, LockError::Debian(DebianError::BadSignature { .. })),
                "{err}"
            );
        }
    }

    #[test]
    fn text_outside_the_signed_block_never_reaches_the_parser() {
        let text = std::str::from_utf8(INRELEASE).unwrap();
        let signed = debian::verify_inrelease(INRELEASE, Path::new(KEYRING)).unwrap();
        assert!(signed.starts_with("Origin: cmbuild tests\n"));
        assert!(!signed.contains("BEGIN PGP"));
        // gpgv accepts a file with unsigned text around the signed block; only the signed
        // text may come back, so an injected release (or index hash) is never parsed.
        let evil = "Codename: evil\nSHA256:\n 00 1 main/binary-riscv64/Packages.gz\n";
        for doctored in [format!("{evil}\n{text}"), format!("{text}\n{evil}")] {
            let again = debian::verify_inrelease(doctored.as_bytes(), Path::new(KEYRING)).unwrap();
            assert_eq!(again, signed);
            assert_eq!(debian::parse_release(&again).unwrap().codename, "testsuite");
        }
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let err =
            debian::verify_inrelease(INRELEASE, Path::new(debian::DEFAULT_KEYRING)).unwrap_err();
        assert!(matches!(err, DebianError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn a_lock_of_another_format_is_refused() {
        let lock = run(&mut FakeArchive::new(), &mut MemoryStore::default()).unwrap();
        let other = lock.to_json().replace(LOCK_FORMAT, "cmbuild-guest-lock-v0");
        assert!(matches!(
            Lock::parse(&other),
            Err(crate::lock::LockFileError::Format(_))
        ));
    }

    #[test]
    fn vendoring_fetches_only_what_is_missing_and_checks_the_cid() {
        let lock = run(&mut FakeArchive::new(), &mut MemoryStore::default()).unwrap();
        let mut store = MemoryStore::default();
        let first = vendor_locked_packages(&lock, &mut FakeArchive::new(), &mut store, &mut |_| {})
            .unwrap();
        assert_eq!(first.downloaded, lock.packages.len());
        assert_eq!(first.bytes_downloaded, lock.total_size());
        let mut archive = FakeArchive::new();
        let again = vendor_locked_packages(&lock, &mut archive, &mut store, &mut |_| {}).unwrap();
        assert_eq!((again.present, again.downloaded), (lock.packages.len(), 0));
        assert!(archive.fetched.is_empty());
        // A lock whose CID does not match the bytes (sha256 right) is refused.
        let mut wrong = lock.clone();
        wrong.packages[0].cid = cmbuild_store::cid::cid_of_bytes(b"other");
        let err = vendor_locked_packages(
            &wrong,
            &mut FakeArchive::new(),
            &mut MemoryStore::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, LockError::CidMismatch { .. }), "{err}");
    }

    #[test]
    fn the_mirror_store_finds_what_it_put_and_indexes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let request = Request::parse(REQUEST).unwrap();
        let mut store = MirrorDebStore::new(&mirror, &request.mirror);
        let mut downloads = 0;
        let mut count = |event: Progress| {
            if let Progress::Downloading { .. } = event {
                downloads += 1;
            }
        };
        let lock = lock_packages(
            &request,
            &options(),
            &mut FakeArchive::new(),
            &mut store,
            &mut count,
        )
        .unwrap();
        assert_eq!(downloads, lock.packages.len());
        let index = mirror.load_index().unwrap();
        for p in &lock.packages {
            let entry = index
                .get(&Key::deb(&p.name, &p.version, &p.architecture))
                .unwrap();
            assert_eq!(entry.cid, p.cid);
            assert_eq!(entry.sha256, p.sha256);
            assert_eq!(entry.url.as_deref(), Some(lock.url_of(p).as_str()));
            assert_eq!(store.find(p).unwrap(), Some(p.cid));
        }
        // A corrupted blob is not "found": locking again fetches that one package again.
        let victim = &lock.packages[0];
        let path = mirror.blob_path(&victim.cid);
        std::fs::write(&path, b"rotten").unwrap();
        assert_eq!(store.find(victim).unwrap(), None);
        let mut downloads = 0;
        let mut count = |event: Progress| {
            if let Progress::Downloading { .. } = event {
                downloads += 1;
            }
        };
        let again = lock_packages(
            &request,
            &options(),
            &mut FakeArchive::new(),
            &mut store,
            &mut count,
        )
        .unwrap();
        assert_eq!(downloads, 1);
        assert_eq!(again.to_json(), lock.to_json());
        assert_eq!(store.find(victim).unwrap(), Some(victim.cid));
    }
}
