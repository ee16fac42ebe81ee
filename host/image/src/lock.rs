//! The guest-image package request (`guest-image/packages.toml`) and its lock
//! (`guest-image/lock.json`): the types, reading and the canonical writing.
//!
//! How a lock is made from the Debian archive is [`crate::locking`]; how archive files are
//! fetched over HTTP is [`crate::http`]. The lock is written canonically, so the same
//! inputs give a byte-identical lock.

use std::collections::BTreeMap;

use cmbuild_store::cid::Cid;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use crate::resolve::Requested;

/// The version tag of the lock format; a change of fields or meaning bumps it.
pub const LOCK_FORMAT: &str = "cmbuild-guest-lock-v1";

/// The guest-image lock this cmbuild was built with. It is compiled in so that an
/// installed `cmbuild` vendors and builds the same image anywhere, with no checkout.
pub const SHIPPED_LOCK: &str = include_str!("../../../guest-image/lock.json");

/// The guest-image lock this cmbuild was built with, parsed.
pub fn shipped_lock() -> Result<Lock, LockFileError> {
    Lock::parse(SHIPPED_LOCK)
}

/// Why a package request or a lock file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// the package request is invalid: {0}
    #[error("the package request is invalid: {0}")]
    Request(String),
    /// the lock file is invalid
    #[error("the lock file is invalid")]
    Parse(#[source] serde_json::Error),
    /// the lock file has format `{0}`, this cmbuild reads `cmbuild-guest-lock-v1`
    #[error("the lock file has format `{0}`, this cmbuild reads `cmbuild-guest-lock-v1`")]
    Format(String),
}

/// `guest-image/packages.toml`: what the guest image needs, by architecture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Debian release codename, e.g. `trixie`.
    pub suite: String,
    /// Archive root URL, e.g. `http://deb.debian.org/debian`.
    pub mirror: String,
    /// Archive component, e.g. `main`.
    pub component: String,
    /// The architecture that runs (the guest's); the others only provide link targets.
    pub native: String,
    /// Architecture -> requested package names.
    pub packages: BTreeMap<String, Vec<String>>,
    /// Names treated as already satisfied, each with the reason: `name` for dependents of
    /// every architecture, `name:arch` for dependents of one (see [`resolve::resolve`]).
    /// They apply to the base and to every toolchain layer.
    #[serde(default)]
    pub exclude: BTreeMap<String, String>,
    /// The toolchain a project that names none builds with: a key of `toolchains`.
    #[serde(default)]
    pub default_toolchain: Option<String>,
    /// The toolchain layers, by id (the Rust version they hold, `1.96.1`): the one list of
    /// pinned toolchains. Each is locked apart from the base (see
    /// [`crate::locking::resolve_toolchain`]) and becomes its own image layer.
    #[serde(default)]
    pub toolchains: BTreeMap<String, LayerRequest>,
    /// The glibc floors a project may choose (`glibc = "2.36"` in its `cmbuild.toml`), by
    /// the glibc version they hold: an older Debian release's C runtime, linked against
    /// instead of the guest's own (see [`crate::sysroot`]). Each is locked on its own, into
    /// `guest-image/glibc-floors.lock.json`; none is part of the image.
    #[serde(default)]
    pub glibc_floors: BTreeMap<String, FloorRequest>,
    /// The container layer (issue 15, [`crate::containers`]): what a build from a
    /// Dockerfile runs (buildah, its OCI runtime and network backend). Locked apart from
    /// the base like a toolchain layer, into `guest-image/containers.lock.json`; only
    /// builds from a Dockerfile use it.
    #[serde(default)]
    pub containers: Option<LayerRequest>,
}

/// One glibc floor of the request: which Debian release's cross-compilation C runtime
/// (the `Architecture: all` packages `<name>-<arch>-cross`) makes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorRequest {
    /// The Debian suite (`bookworm`).
    pub suite: String,
    /// Package names without their `-<arch>-cross` suffix (`libc6-dev`), taken exactly (no
    /// dependency resolution: they are unpacked into a sysroot, never installed) for the
    /// architecture of every Linux triple ([`crate::sysroot::floor_architectures`]).
    pub packages: Vec<String>,
}

/// One layer of the request stacked over the base (a toolchain's, the containers'): where
/// its packages come from and which ones.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRequest {
    /// The Debian suite its packages come from (`trixie`, `trixie-backports`, `forky`);
    /// dependencies may also come from the base's suite.
    pub suite: String,
    /// Architecture -> requested package names (for a toolchain: the native
    /// architecture's compiler and cargo, every architecture's standard library).
    pub packages: BTreeMap<String, Vec<String>>,
}

/// Whether a toolchain id is a Rust release version (`1.96.1`): digits and two dots.
pub fn valid_toolchain_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Request {
    /// Parse and check a package request.
    pub fn parse(text: &str) -> Result<Request, LockFileError> {
        let request: Request =
            toml::from_str(text).map_err(|e| LockFileError::Request(e.message().to_string()))?;
        if !request.packages.contains_key(&request.native) {
            return Err(LockFileError::Request(format!(
                "no packages requested for the native architecture `{}`",
                request.native
            )));
        }
        for (id, toolchain) in &request.toolchains {
            if !valid_toolchain_id(id) {
                return Err(LockFileError::Request(format!(
                    "toolchain `{id}` must be named by its Rust version, like 1.96.1"
                )));
            }
            if !toolchain.packages.contains_key(&request.native) {
                return Err(LockFileError::Request(format!(
                    "toolchain `{id}` requests no packages for the native architecture `{}`",
                    request.native
                )));
            }
        }
        for (id, floor) in &request.glibc_floors {
            if !crate::sysroot::valid_floor_id(id) {
                return Err(LockFileError::Request(format!(
                    "glibc floor `{id}` must be named by its glibc version, like 2.36"
                )));
            }
            for needed in crate::sysroot::REQUIRED_PACKAGES {
                if !floor.packages.iter().any(|p| p == needed) {
                    return Err(LockFileError::Request(format!(
                        "glibc floor `{id}` does not request `{needed}`"
                    )));
                }
            }
        }
        if let Some(containers) = &request.containers {
            if !containers.packages.contains_key(&request.native) {
                return Err(LockFileError::Request(format!(
                    "the container layer requests no packages for the native architecture `{}`",
                    request.native
                )));
            }
        }
        match &request.default_toolchain {
            Some(id) if !request.toolchains.contains_key(id) => {
                return Err(LockFileError::Request(format!(
                    "default_toolchain `{id}` is not one of the toolchains"
                )))
            }
            None if !request.toolchains.is_empty() => {
                return Err(LockFileError::Request(
                    "toolchains are requested but no default_toolchain is named".into(),
                ))
            }
            _ => {}
        }
        if request.mirror.ends_with('/') || !request.mirror.contains("://") {
            return Err(LockFileError::Request(format!(
                "mirror `{}` must be an absolute URL without a trailing slash",
                request.mirror
            )));
        }
        Ok(request)
    }

    /// The architectures whose indices are read: the native one first, then the rest.
    pub fn architectures(&self) -> Vec<String> {
        let mut arches = vec![self.native.clone()];
        arches.extend(self.packages.keys().filter(|a| **a != self.native).cloned());
        arches
    }

    /// Path below `dists/<suite>/` of an architecture's Packages index.
    pub fn index_path(&self, arch: &str) -> String {
        format!("{}/binary-{arch}/Packages.gz", self.component)
    }

    /// The request of one toolchain layer, as a request of its own: its suite and its
    /// packages, with the base's archive, component, native architecture and excludes.
    pub fn toolchain_request(&self, id: &str) -> Option<Request> {
        Some(self.layer_request(self.toolchains.get(id)?))
    }

    /// The request of the container layer, as a request of its own (as
    /// [`Request::toolchain_request`]).
    pub fn containers_request(&self) -> Option<Request> {
        Some(self.layer_request(self.containers.as_ref()?))
    }

    fn layer_request(&self, layer: &LayerRequest) -> Request {
        Request {
            suite: layer.suite.clone(),
            mirror: self.mirror.clone(),
            component: self.component.clone(),
            native: self.native.clone(),
            packages: layer.packages.clone(),
            exclude: self.exclude.clone(),
            default_toolchain: None,
            toolchains: BTreeMap::new(),
            glibc_floors: BTreeMap::new(),
            containers: None,
        }
    }

    /// The request of one glibc floor, as a request of its own: its suite's
    /// architecture-independent index (`binary-all`, where the `-cross` packages are) and
    /// each requested package for every floor architecture, with the base's archive and
    /// component. Locked with [`crate::locking::resolve_exact`] (no dependency resolution).
    pub fn floor_request(&self, id: &str) -> Option<Request> {
        let floor = self.glibc_floors.get(id)?;
        let names = crate::sysroot::floor_architectures()
            .into_iter()
            .flat_map(|arch| {
                floor
                    .packages
                    .iter()
                    .map(move |name| crate::sysroot::cross_package(name, arch))
            })
            .collect();
        Some(Request {
            suite: floor.suite.clone(),
            mirror: self.mirror.clone(),
            component: self.component.clone(),
            native: "all".into(),
            packages: BTreeMap::from([("all".to_owned(), names)]),
            exclude: BTreeMap::new(),
            default_toolchain: None,
            toolchains: BTreeMap::new(),
            glibc_floors: BTreeMap::new(),
            containers: None,
        })
    }

    /// Every requested package with its architecture, the native architecture's first.
    pub(crate) fn requested(&self) -> Vec<Requested> {
        self.architectures()
            .iter()
            .flat_map(|arch| {
                self.packages[arch].iter().map(move |name| Requested {
                    name: name.clone(),
                    arch: arch.clone(),
                })
            })
            .collect()
    }
}

/// One resolved package, pinned by hash and content ID.
///
/// Fields are declared in alphabetical order: serde writes them in this order, which keeps
/// the lock's keys sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// Debian architecture (`all` for architecture-independent packages).
    pub architecture: String,
    /// Content ID of the `.deb`: its name in the mirror and on IPFS.
    pub cid: Cid,
    /// Path below the archive root (the request's `mirror`).
    pub filename: String,
    /// Package name.
    pub name: String,
    /// sha256 of the `.deb`, as the signed index gives it.
    pub sha256: Sha256,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// Debian version.
    pub version: String,
}

/// `guest-image/lock.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Always [`LOCK_FORMAT`].
    pub format: String,
    /// Index path below `dists/<suite>/` -> sha256 of the verified index it was resolved from.
    pub indices: BTreeMap<String, Sha256>,
    /// Archive root URL the packages' `filename`s are relative to.
    pub mirror: String,
    /// Sorted by name, then architecture.
    pub packages: Vec<LockedPackage>,
    /// InRelease's `Date`.
    pub release_date: String,
    /// InRelease's `Version` (the point release, e.g. `13.7`).
    pub release_version: String,
    /// Debian release codename, e.g. `trixie`.
    pub suite: String,
}

impl Lock {
    /// Read a lock written by [`Lock::to_json`].
    pub fn parse(text: &str) -> Result<Lock, LockFileError> {
        let lock: Lock = serde_json::from_str(text).map_err(LockFileError::Parse)?;
        if lock.format != LOCK_FORMAT {
            return Err(LockFileError::Format(lock.format));
        }
        Ok(lock)
    }

    /// The canonical text: sorted keys, one package per line (compact yet diffable), a
    /// final newline, nothing that depends on when or where it was written.
    pub fn to_json(&self) -> String {
        let string = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let mut out = String::from("{\n");
        out.push_str(&format!("\"format\": {},\n", string(&self.format)));
        out.push_str("\"indices\": {");
        let indices: Vec<String> = self
            .indices
            .iter()
            .map(|(path, hash)| format!("\n  {}: {}", string(path), string(&hash.to_string())))
            .collect();
        out.push_str(&indices.join(","));
        out.push_str("\n},\n");
        out.push_str(&format!("\"mirror\": {},\n", string(&self.mirror)));
        out.push_str("\"packages\": [");
        let packages: Vec<String> = self
            .packages
            .iter()
            .map(|p| {
                format!(
                    "\n  {}",
                    serde_json::to_string(p).expect("packages serialise")
                )
            })
            .collect();
        out.push_str(&packages.join(","));
        out.push_str("\n],\n");
        out.push_str(&format!(
            "\"release_date\": {},\n",
            string(&self.release_date)
        ));
        out.push_str(&format!(
            "\"release_version\": {},\n",
            string(&self.release_version)
        ));
        out.push_str(&format!("\"suite\": {}\n}}\n", string(&self.suite)));
        out
    }

    /// Total size of every locked package in bytes.
    pub fn total_size(&self) -> u64 {
        self.packages.iter().map(|p| p.size).sum()
    }

    /// URL of a locked package.
    pub fn url_of(&self, package: &LockedPackage) -> String {
        format!("{}/{}", self.mirror, package.filename)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = include_str!("../testdata/packages.toml");

    #[test]
    fn requests_are_checked() {
        assert!(Request::parse(REQUEST).is_ok());
        let no_native = REQUEST.replace("native = \"riscv64\"", "native = \"s390x\"");
        assert!(matches!(
            Request::parse(&no_native),
            Err(LockFileError::Request(_))
        ));
        let unknown = format!("{REQUEST}\nsurprise = 1\n");
        assert!(matches!(
            Request::parse(&unknown),
            Err(LockFileError::Request(_))
        ));
    }

    #[test]
    fn the_container_layer_is_a_request_of_its_own() {
        let layer = "\n[containers]\nsuite = \"trixie\"\n\
                     packages = { riscv64 = [\"buildah\", \"crun\"] }\n";
        let request = Request::parse(&format!("{REQUEST}{layer}")).unwrap();
        let containers = request.containers_request().unwrap();
        assert_eq!(containers.suite, "trixie");
        assert_eq!(containers.packages["riscv64"], ["buildah", "crun"]);
        assert_eq!(containers.exclude, request.exclude);
        assert!(containers.containers.is_none() && containers.toolchains.is_empty());
        assert!(Request::parse(REQUEST)
            .unwrap()
            .containers_request()
            .is_none());
        let foreign = layer.replace("riscv64 = ", "amd64 = ");
        assert!(matches!(
            Request::parse(&format!("{REQUEST}{foreign}")),
            Err(LockFileError::Request(m)) if m.contains("container layer")
        ));
    }

    #[test]
    fn toolchain_layers_are_checked() {
        let layer = "\n[toolchains.\"1.96.0\"]\nsuite = \"trixie\"\n\
                     packages = { riscv64 = [\"rustc-web\"] }\n";
        let with = |head: &str, tail: &str| format!("{head}{REQUEST}{tail}");
        let request = Request::parse(&with("default_toolchain = \"1.96.0\"\n", layer)).unwrap();
        let layer_request = request.toolchain_request("1.96.0").unwrap();
        assert_eq!(layer_request.suite, "trixie");
        assert_eq!(
            layer_request.exclude, request.exclude,
            "the excludes are shared"
        );
        assert!(layer_request.toolchains.is_empty());
        assert!(request.toolchain_request("1.85.1").is_none());
        for (head, tail) in [
            // No default, an unknown default, an id that is not a version, no native packages.
            ("", layer),
            ("default_toolchain = \"1.85.1\"\n", layer),
            (
                "default_toolchain = \"web\"\n",
                &layer.replace("\"1.96.0\"", "\"web\"")[..],
            ),
            (
                "default_toolchain = \"1.96.0\"\n",
                &layer.replace("riscv64 = ", "amd64 = ")[..],
            ),
        ] {
            assert!(
                matches!(
                    Request::parse(&with(head, tail)),
                    Err(LockFileError::Request(_))
                ),
                "{head}{tail}"
            );
        }
        assert!(
            valid_toolchain_id("1.96.0")
                && !valid_toolchain_id("1.96")
                && !valid_toolchain_id("1..0")
        );
    }

    #[test]
    fn a_lock_with_a_junk_cid_or_sha256_is_refused() {
        let lock = shipped_lock().unwrap();
        let first = &lock.packages[0];
        let (cid, sha) = (first.cid.to_string(), first.sha256.to_string());
        for doctored in [
            SHIPPED_LOCK.replacen(&cid, "bafkreinotacid", 1),
            SHIPPED_LOCK.replacen(&cid, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", 1),
            SHIPPED_LOCK.replacen(&sha, &sha[..63], 1),
            SHIPPED_LOCK.replacen(&sha, &format!("{}g", &sha[..63]), 1),
        ] {
            assert_ne!(doctored, SHIPPED_LOCK);
            assert!(matches!(
                Lock::parse(&doctored),
                Err(LockFileError::Parse(_))
            ));
        }
    }

    #[test]
    fn the_shipped_lock_is_canonical_sorted_and_complete() {
        let lock = shipped_lock().unwrap();
        // Canonical: re-serialising gives the committed bytes back.
        assert_eq!(lock.to_json(), SHIPPED_LOCK);
        let keys: Vec<(&str, &str)> = lock
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.architecture.as_str()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            keys, sorted,
            "sorted by name and architecture, no duplicates"
        );
        for p in &lock.packages {
            // CIDs and sha256s were validated by parsing; the names are Debian's pool paths.
            assert!(p.filename.starts_with("pool/main/") && p.filename.ends_with(".deb"));
        }
        // Everything the request names is locked, for its architecture.
        let request = Request::parse(include_str!("../../../guest-image/packages.toml")).unwrap();
        for (arch, names) in &request.packages {
            for name in names {
                assert!(
                    lock.packages
                        .iter()
                        .any(|p| &p.name == name
                            && (&p.architecture == arch || p.architecture == "all")),
                    "{name}:{arch} is requested but not locked"
                );
            }
        }
        // The kernel metapackage brought the real image with it.
        assert!(lock
            .packages
            .iter()
            .any(|p| p.name.starts_with("linux-image-6.") && p.name.ends_with("-riscv64")));
    }
}
