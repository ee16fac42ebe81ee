//! The toolchain layers of the guest image: their locks (`guest-image/toolchains.lock.json`),
//! the pinned toolchains they define, and the rule that keeps them apart from the base.
//!
//! The guest image is a base layer (kernel, firmware, initramfs and a root image with
//! busybox, libc, clang, lld, gcc and the C runtimes of every target architecture:
//! everything but Rust; `guest-image/lock.json`) and one read-only layer per pinned Rust
//! toolchain (its rustc, cargo and the standard library of every target, minus what the
//! base has). A build machine mounts the base and the selected toolchain's layer as one
//! overlayfs root. The list of toolchains is defined once, in `guest-image/packages.toml`
//! (`[toolchains."X.Y.Z"]`); `cmbuild image lock` writes this file from it, and cmbuild
//! compiles the file in, so the table of pinned toolchains is [`shipped`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lock::{valid_toolchain_id, Lock, LockFileError};
use crate::toolchain::{upstream_version, RustVersion};

/// The version tag of the toolchain-locks file; a change of fields or meaning bumps it.
pub const TOOLCHAIN_LOCKS_FORMAT: &str = "cmbuild-toolchain-locks-v1";

/// The toolchain locks this cmbuild was built with.
pub const SHIPPED_TOOLCHAIN_LOCKS: &str = include_str!("../../../guest-image/toolchains.lock.json");

/// The toolchain locks this cmbuild was built with, parsed and checked.
pub fn shipped() -> Result<ToolchainLocks, LockFileError> {
    ToolchainLocks::parse(SHIPPED_TOOLCHAIN_LOCKS)
}

/// `guest-image/toolchains.lock.json`: every toolchain layer's lock, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainLocks {
    /// The toolchain of a project that names none (the request's `default_toolchain`).
    pub default: String,
    /// Always [`TOOLCHAIN_LOCKS_FORMAT`].
    pub format: String,
    /// Toolchain id (its Rust version, `1.96.1`) -> the layer's lock: the packages of its
    /// closure that the base does not hold.
    pub toolchains: BTreeMap<String, Lock>,
}

/// One pinned toolchain: its id, its version and its layer's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedToolchain<'a> {
    /// The id (`1.96.1`): the key of its lock and of its pin.
    pub id: &'a str,
    /// Its Rust version.
    pub version: RustVersion,
    /// The layer's lock.
    pub lock: &'a Lock,
}

/// Why two layers may not be stacked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    /// A package is in the base and in a toolchain layer.
    #[error("package {name} ({arch}) is in the base and in toolchain layer {layer}")]
    InBoth {
        /// Package name.
        name: String,
        /// Debian architecture.
        arch: String,
        /// The toolchain layer.
        layer: String,
    },
}

impl ToolchainLocks {
    /// Reads the file and checks it: its format, a known default, and each toolchain's id
    /// being the version of the `rustc` (or `rustc-web`) its lock pins.
    pub fn parse(text: &str) -> Result<ToolchainLocks, LockFileError> {
        let locks: ToolchainLocks = serde_json::from_str(text).map_err(LockFileError::Parse)?;
        let bad = |m: String| Err(LockFileError::Request(m));
        if locks.format != TOOLCHAIN_LOCKS_FORMAT {
            return Err(LockFileError::Format(locks.format));
        }
        if !locks.toolchains.contains_key(&locks.default) {
            return bad(format!(
                "the default toolchain {} has no lock",
                locks.default
            ));
        }
        for (id, lock) in &locks.toolchains {
            if lock.format != crate::lock::LOCK_FORMAT {
                return Err(LockFileError::Format(lock.format.clone()));
            }
            let version = rustc_version(lock);
            if !valid_toolchain_id(id) || version.map(|v| v.to_string()).as_deref() != Some(id) {
                return bad(format!(
                    "toolchain {id}: its lock pins rustc {}",
                    version.map_or("none".into(), |v| v.to_string())
                ));
            }
            // A standard library is only usable by the compiler of its exact version.
            for p in &lock.packages {
                let std = p.name.starts_with("libstd-rust-") || p.name.starts_with("cargo");
                if std && upstream_version(&p.version) != version {
                    return bad(format!(
                        "toolchain {id}: {} ({}) is version {}, not the compiler's",
                        p.name, p.architecture, p.version
                    ));
                }
            }
        }
        Ok(locks)
    }

    /// The canonical text: each lock as [`Lock::to_json`] writes it, keys sorted, a final
    /// newline.
    pub fn to_json(&self) -> String {
        let string = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let toolchains: Vec<String> = self
            .toolchains
            .iter()
            .map(|(id, lock)| format!("{}: {}", string(id), lock.to_json().trim_end()))
            .collect();
        format!(
            "{{\n\"default\": {},\n\"format\": {},\n\"toolchains\": {{\n{}\n}}\n}}\n",
            string(&self.default),
            string(&self.format),
            toolchains.join(",\n")
        )
    }

    /// The pinned toolchains, oldest first.
    pub fn pinned(&self) -> Vec<PinnedToolchain<'_>> {
        let mut pinned: Vec<PinnedToolchain> = self
            .toolchains
            .iter()
            .filter_map(|(id, lock)| {
                Some(PinnedToolchain {
                    id,
                    version: rustc_version(lock)?,
                    lock,
                })
            })
            .collect();
        pinned.sort_by_key(|p| p.version);
        pinned
    }

    /// The versions of the pinned toolchains, oldest first.
    pub fn versions(&self) -> Vec<RustVersion> {
        self.pinned().iter().map(|p| p.version).collect()
    }

    /// The default toolchain's version.
    pub fn default_version(&self) -> Option<RustVersion> {
        self.toolchains.get(&self.default).and_then(rustc_version)
    }

    /// The pinned toolchain of a version.
    pub fn of_version(&self, version: RustVersion) -> Option<PinnedToolchain<'_>> {
        self.pinned().into_iter().find(|p| p.version == version)
    }
}

/// The Rust version of the `rustc` (or `rustc-web`) package a lock pins.
pub fn rustc_version(lock: &Lock) -> Option<RustVersion> {
    lock.packages
        .iter()
        .find(|p| p.name == "rustc" || p.name == "rustc-web")
        .and_then(|p| upstream_version(&p.version))
}

/// Checks that `layer` can be stacked on `base`: no package (by name and architecture) is
/// in both, so the overlay never hides a base file with another build of it.
pub fn check_layer(base: &Lock, id: &str, layer: &Lock) -> Result<(), LayerError> {
    for p in &layer.packages {
        if base
            .packages
            .iter()
            .any(|b| b.name == p.name && b.architecture == p.architecture)
        {
            return Err(LayerError::InBoth {
                name: p.name.clone(),
                arch: p.architecture.clone(),
                layer: id.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{shipped_lock, Request};

    fn v(major: u32, minor: u32, patch: u32) -> RustVersion {
        RustVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn the_shipped_toolchains_are_three_versions_each_apart_from_the_base() {
        let locks = shipped().unwrap();
        assert_eq!(locks.to_json(), SHIPPED_TOOLCHAIN_LOCKS, "canonical");
        let versions = locks.versions();
        assert!(versions.len() >= 3, "{versions:?}");
        assert_eq!(locks.default_version(), Some(v(1, 85, 1)));
        assert!(versions.contains(&v(1, 96, 0)) && versions.contains(&v(1, 97, 1)));
        let base = shipped_lock().unwrap();
        // The base holds no Rust at all.
        assert!(
            !base.packages.iter().any(|p| p.name.starts_with("rustc")
                || p.name.starts_with("cargo")
                || p.name.starts_with("libstd-rust")),
            "the base layer holds a Rust package"
        );
        for pinned in locks.pinned() {
            check_layer(&base, pinned.id, pinned.lock).unwrap();
            // Each layer has the compiler and cargo for the machine, and a standard library
            // for every target architecture of the base's C runtimes.
            let has = |prefix: &str, arch: &str| {
                pinned
                    .lock
                    .packages
                    .iter()
                    .any(|p| p.name.starts_with(prefix) && p.architecture == arch)
            };
            assert!(
                has("rustc", "riscv64") && has("cargo", "riscv64"),
                "{}",
                pinned.id
            );
            for arch in ["riscv64", "amd64", "arm64"] {
                assert!(has("libstd-rust-", arch), "{} {arch}", pinned.id);
            }
        }
        // The toolchain list is the request's: one definition.
        let request = Request::parse(include_str!("../../../guest-image/packages.toml")).unwrap();
        assert_eq!(
            request.toolchains.keys().collect::<Vec<_>>(),
            locks.toolchains.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            request.default_toolchain.as_deref(),
            Some(locks.default.as_str())
        );
    }

    #[test]
    fn a_package_shared_by_two_toolchain_layers_is_the_same_build() {
        // Layers are never mounted together, so two toolchains may both carry a library the
        // base lacks (libllvm22 for 1.96.0 and 1.97.1); then it is the same .deb, stored
        // once in the mirror by its CID.
        let locks = shipped().unwrap();
        let mut seen: BTreeMap<(&str, &str), &crate::lock::LockedPackage> = BTreeMap::new();
        for lock in locks.toolchains.values() {
            for p in &lock.packages {
                let key = (p.name.as_str(), p.architecture.as_str());
                match seen.insert(key, p) {
                    Some(other) if other.version == p.version => {
                        assert_eq!(other.cid, p.cid, "{key:?}");
                        // A toolchain's own packages are never shared.
                        assert!(
                            !p.name.starts_with("rustc")
                                && !p.name.starts_with("cargo")
                                && !p.name.starts_with("libstd-rust"),
                            "{key:?} in two layers"
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn channels_select_across_the_pinned_layers() {
        use crate::toolchain::select;
        let locks = shipped().unwrap();
        let (available, default) = (locks.versions(), locks.default_version());
        let pick = |channel| select(channel, "rust-toolchain.toml", &available, default);
        assert_eq!(pick(None), Ok(v(1, 85, 1)));
        assert_eq!(pick(Some("1.85")), Ok(v(1, 85, 1)));
        assert_eq!(pick(Some("1.96")), Ok(v(1, 96, 0)));
        assert_eq!(pick(Some("1.96.0")), Ok(v(1, 96, 0)));
        assert_eq!(pick(Some("1.97")), Ok(v(1, 97, 1)));
        assert_eq!(pick(Some("stable")), Ok(*available.last().unwrap()));
        let err = pick(Some("1.96.1")).unwrap_err().to_string();
        assert!(
            err.ends_with("the pinned toolchains are: 1.85.1, 1.96.0, 1.97.1"),
            "{err}"
        );
        // Each selected version is a layer with a lock.
        for version in &available {
            assert_eq!(locks.of_version(*version).unwrap().version, *version);
        }
    }

    #[test]
    fn a_layer_overlapping_the_base_is_refused() {
        let base = shipped_lock().unwrap();
        let mut layer = base.clone();
        layer.packages.truncate(1);
        let err = check_layer(&base, "1.0.0", &layer).unwrap_err();
        assert!(matches!(err, LayerError::InBoth { .. }), "{err}");
        layer.packages.clear();
        check_layer(&base, "1.0.0", &layer).unwrap();
    }

    #[test]
    fn a_doctored_file_is_refused() {
        let good = SHIPPED_TOOLCHAIN_LOCKS;
        for (from, to) in [
            ("\"default\": \"1.85.1\"", "\"default\": \"1.99.0\""),
            ("\"1.97.1\": {", "\"1.97.2\": {"),
            (TOOLCHAIN_LOCKS_FORMAT, "cmbuild-toolchain-locks-v0"),
        ] {
            let doctored = good.replacen(from, to, 1);
            assert_ne!(doctored, good, "{from}");
            assert!(ToolchainLocks::parse(&doctored).is_err(), "{from}");
        }
    }
}
