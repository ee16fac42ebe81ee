//! glibc floors: an older Debian release's C runtime, which a project may link its Linux
//! artifacts against instead of the guest's own (Debian trixie's glibc 2.41), so that they
//! start on systems with that older glibc.
//!
//! A floor is named by its glibc version (`2.36`) and made of a Debian suite's
//! cross-compilation runtime: the `Architecture: all` packages `<name>-<arch>-cross`
//! (`libc6-dev-riscv64-cross`, ...) that Debian builds for its cross compilers, one set per
//! architecture of the Linux triples — so riscv64, which Debian only released with trixie,
//! gets a real glibc 2.36 too (bookworm's `cross-toolchain-base-ports`). They are listed in
//! `guest-image/packages.toml` (`[glibc_floors."2.36"]`), pinned by `cmbuild image lock`
//! into `guest-image/glibc-floors.lock.json` (compiled in: [`shipped`]), fetched by
//! `cmbuild vendor` only for a project that asks for a floor, and never part of the guest
//! image: `cmbuild run` unpacks them on the host into one sysroot per Linux triple
//! ([`build_sysroot`]) and writes them, together, as one read-only EROFS image
//! ([`floor_image`]) onto the build machine's scratch drive, which the guest mounts: only
//! the files a build opens are ever read.
//!
//! A sysroot keeps the Debian cross layout clang knows (`usr/<gnu triple>/{include,lib}`
//! and `usr/lib/gcc-cross/<gnu triple>/<gcc version>/`), so `clang --target=<t>
//! --sysroot=DIR` compiles against its headers and links against its crt objects, libc,
//! libgcc and libstdc++ alone. Absolute symbolic links are made relative to the sysroot
//! (an absolute one would reach the guest's own, newer, libraries), and no link may lead
//! out of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::deb::{self, DebError, Node};
use crate::erofs::{self, ErofsError, ErofsOptions};
use crate::lock::{Lock, LockFileError, LockedPackage, LOCK_FORMAT};
use crate::locking::BoxError;
use crate::triple::{TripleSpec, TABLE};
use cmbuild_store::cid::Cid;

/// The version tag of the glibc-floor locks file; a change of fields or meaning bumps it.
pub const FLOOR_LOCKS_FORMAT: &str = "cmbuild-glibc-floor-locks-v2";

/// The glibc-floor locks this cmbuild was built with.
pub const SHIPPED_FLOOR_LOCKS: &str = include_str!("../../../guest-image/glibc-floors.lock.json");

/// The packages (without their `-<arch>-cross` suffix) every floor must request: the C
/// library and its development files.
pub const REQUIRED_PACKAGES: &[&str] = &["libc6", "libc6-dev"];

/// The glibc-floor locks this cmbuild was built with, parsed and checked.
pub fn shipped() -> Result<FloorLocks, LockFileError> {
    FloorLocks::parse(SHIPPED_FLOOR_LOCKS)
}

/// Whether a floor id is a glibc release (`2.36`): two numbers of at most three digits.
pub fn valid_floor_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The Debian architectures a floor covers: those of the Linux triples of [`TABLE`] (the
/// rows with a C runtime), in table order.
pub fn floor_architectures() -> Vec<&'static str> {
    let mut arches: Vec<&'static str> = Vec::new();
    for t in TABLE.iter().filter(|t| t.multiarch.is_some()) {
        if !arches.contains(&t.debian_arch) {
            arches.push(t.debian_arch);
        }
    }
    arches
}

/// The name of the cross-compilation package of `name` for `arch`:
/// `libc6-dev` for `riscv64` is `libc6-dev-riscv64-cross`.
pub fn cross_package(name: &str, arch: &str) -> String {
    format!("{name}-{arch}-cross")
}

/// `guest-image/glibc-floors.lock.json`: every floor's lock, by its glibc version, and the
/// content ID of the sysroots' image each one makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorLocks {
    /// Floor id (its glibc version, `2.36`) -> the lock of its packages (one suite's
    /// `binary-all` index; every package `Architecture: all`).
    pub floors: BTreeMap<String, Lock>,
    /// Always [`FLOOR_LOCKS_FORMAT`].
    pub format: String,
    /// Floor id -> the CID of its sysroots' image ([`floor_image`] of a sysroot per Linux
    /// triple, made from exactly the locked packages): what `cmbuild run` checks the image
    /// it makes against, and finds it in the mirror by. One per floor.
    pub images: BTreeMap<String, Cid>,
}

impl FloorLocks {
    /// Reads the file and checks it: its format, and for each floor that its id is a glibc
    /// version, that every package is a `-<arch>-cross` package of a floor architecture,
    /// that every floor architecture has `libc6` and `libc6-dev` of exactly that glibc, and
    /// that it has an image pinned (and no image is pinned for a floor that is not there).
    pub fn parse(text: &str) -> Result<FloorLocks, LockFileError> {
        let locks: FloorLocks = serde_json::from_str(text).map_err(LockFileError::Parse)?;
        if locks.format != FLOOR_LOCKS_FORMAT {
            return Err(LockFileError::Format(locks.format));
        }
        let bad = |m: String| Err(LockFileError::Request(m));
        if !locks.images.keys().eq(locks.floors.keys()) {
            return bad(format!(
                "the glibc floors {:?} and the floors with a pinned image {:?} differ",
                locks.floors.keys().collect::<Vec<_>>(),
                locks.images.keys().collect::<Vec<_>>()
            ));
        }
        let arches = floor_architectures();
        for (id, lock) in &locks.floors {
            if lock.format != LOCK_FORMAT {
                return Err(LockFileError::Format(lock.format.clone()));
            }
            if !valid_floor_id(id) {
                return bad(format!("glibc floor `{id}` is not a glibc version"));
            }
            for p in &lock.packages {
                let of_floor = arches
                    .iter()
                    .any(|arch| p.name.ends_with(&format!("-{arch}-cross")));
                if p.architecture != "all" || !of_floor {
                    return bad(format!(
                        "glibc floor {id}: {} ({}) is not a cross-compilation package of {}",
                        p.name,
                        p.architecture,
                        arches.join(", ")
                    ));
                }
            }
            for arch in &arches {
                for name in REQUIRED_PACKAGES {
                    let wanted = cross_package(name, arch);
                    let found = lock.packages.iter().find(|p| p.name == wanted);
                    match found {
                        Some(p) if glibc_of_version(&p.version) == Some(id.as_str()) => {}
                        Some(p) => {
                            return bad(format!(
                                "glibc floor {id}: {wanted} is version {}, not glibc {id}",
                                p.version
                            ))
                        }
                        None => return bad(format!("glibc floor {id} has no {wanted}")),
                    }
                }
            }
        }
        Ok(locks)
    }

    /// The canonical text: each lock as [`Lock::to_json`] writes it, keys sorted, a final
    /// newline.
    pub fn to_json(&self) -> String {
        let string = |s: &str| serde_json::to_string(s).expect("strings serialise");
        let floors: Vec<String> = self
            .floors
            .iter()
            .map(|(id, lock)| format!("{}: {}", string(id), lock.to_json().trim_end()))
            .collect();
        let images: Vec<String> = self
            .images
            .iter()
            .map(|(id, cid)| format!("{}: {}", string(id), string(&cid.to_string())))
            .collect();
        format!(
            "{{\n\"floors\": {{\n{}\n}},\n\"format\": {},\n\"images\": {{\n{}\n}}\n}}\n",
            floors.join(",\n"),
            string(&self.format),
            images.join(",\n"),
        )
    }

    /// Each pinned floor as `2.36 (Debian 12.15 bookworm)`, oldest first, for messages.
    pub fn describe(&self) -> Vec<String> {
        let mut ids: Vec<&String> = self.floors.keys().collect();
        ids.sort_by_key(|id| floor_sort_key(id));
        ids.iter()
            .map(|id| {
                let lock = &self.floors[*id];
                format!("{id} (Debian {} {})", lock.release_version, lock.suite)
            })
            .collect()
    }
}

/// The glibc release of a `libc6` package version: `2.36-8cross1` is `2.36`.
fn glibc_of_version(version: &str) -> Option<&str> {
    let upstream = version.split_once('-').map_or(version, |(u, _)| u);
    (!upstream.contains(':')).then_some(upstream)
}

fn floor_sort_key(id: &str) -> (u32, u32) {
    let mut parts = id.split('.').map(|p| p.parse().unwrap_or(u32::MAX));
    (
        parts.next().unwrap_or(u32::MAX),
        parts.next().unwrap_or(u32::MAX),
    )
}

/// The packages of a floor's lock that make the sysroot of `arch`, in lock order.
pub fn packages_for<'a>(lock: &'a Lock, arch: &str) -> Vec<&'a LockedPackage> {
    let suffix = format!("-{arch}-cross");
    lock.packages
        .iter()
        .filter(|p| p.name.ends_with(&suffix))
        .collect()
}

/// Why a sysroot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SysrootError {
    /// target {0} has no C runtime, so no glibc floor applies to it
    #[error("target {0} has no C runtime, so no glibc floor applies to it")]
    NoCRuntime(&'static str),
    /// the glibc floor's lock has no packages for {arch}
    #[error("the glibc floor's lock has no packages for {arch}")]
    NoPackages {
        /// The Debian architecture.
        arch: String,
    },
    /// reading {filename} failed
    #[error("reading {filename} failed")]
    Load {
        /// The package file.
        filename: String,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// unpacking {filename}
    #[error("unpacking {filename}")]
    Deb {
        /// The package file.
        filename: String,
        /// What failed.
        #[source]
        source: DebError,
    },
    /// {path} is in two packages of the sysroot with different contents
    #[error("{path} is in two packages of the sysroot with different contents")]
    Conflict {
        /// The path.
        path: String,
    },
    /// the link {path} -> {target} leads out of the sysroot
    #[error("the link {path} -> {target} leads out of the sysroot")]
    Escapes {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// the hard link {path} names {target}, which the sysroot does not hold
    #[error("the hard link {path} names {target}, which the sysroot does not hold")]
    Hardlink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// the sysroot of {triple} lacks {path}
    #[error("the sysroot of {triple} lacks {path}")]
    Incomplete {
        /// The triple.
        triple: &'static str,
        /// What it lacks.
        path: String,
    },
    /// writing the sysroots' image
    #[error("writing the sysroots' image")]
    Image(#[from] ErofsError),
    /// laying out the sysroots' image
    #[error("laying out the sysroots' image")]
    Tree(#[from] crate::rootfs::RootfsError),
}

/// The file at the root of a floor's image that names the floor (its content: the floor id
/// and a newline): the guest's check that the image is mounted.
pub const IMAGE_MARKER: &str = ".cmbuild-glibc-floor";

/// A floor's sysroots as one EROFS image: each under its name (the Rust triple), and
/// [`IMAGE_MARKER`] at the root. Deterministic: fixed UUID, label and times, paths in
/// byte order, a file shared within a sysroot (a hard link) written once.
pub fn floor_image(floor_id: &str, sysroots: &[(&str, &Sysroot)]) -> Result<Vec<u8>, SysrootError> {
    let mut tree = crate::rootfs::Tree::new();
    tree.add_file(IMAGE_MARKER, 0o644, format!("{floor_id}\n").into_bytes())?;
    for (name, sysroot) in sysroots {
        tree.add_dir(name, 0o755)?;
        for (path, node) in &sysroot.nodes {
            let path = format!("{name}/{path}");
            match node {
                SysrootNode::Dir => tree.add_dir(&path, 0o755)?,
                SysrootNode::File { data, executable } => {
                    let mode = if *executable { 0o755 } else { 0o644 };
                    tree.add_shared_file(&path, mode, data.clone())?
                }
                SysrootNode::Symlink(target) => tree.add_symlink(&path, target)?,
            }
        }
    }
    let options = ErofsOptions {
        uuid: *b"cmbuild-sysroots",
        volume_name: "cmbuild-glibc".into(),
        build_time: 946_684_800,
    };
    Ok(erofs::erofs_bytes(&tree, &options)?)
}

/// What a path of a sysroot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysrootNode {
    /// A directory (mode 0755).
    Dir,
    /// A regular file (mode 0755 when executable, else 0644).
    File {
        /// Its bytes.
        data: Arc<Vec<u8>>,
        /// Whether any execute bit was set.
        executable: bool,
    },
    /// A relative symbolic link that stays inside the sysroot.
    Symlink(String),
}

/// One triple's sysroot: relative paths (`usr/x86_64-linux-gnu/lib/libc.so.6`) in sorted
/// order, so every directory comes before what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysroot {
    /// Path -> what it is.
    pub nodes: BTreeMap<String, SysrootNode>,
}

impl Sysroot {
    /// Bytes of all regular files.
    pub fn file_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                SysrootNode::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn insert(&mut self, path: &str, node: SysrootNode) -> Result<(), SysrootError> {
        for (i, _) in path.match_indices('/') {
            self.insert(&path[..i], SysrootNode::Dir)?;
        }
        match self.nodes.get(path) {
            None => {
                self.nodes.insert(path.to_owned(), node);
                Ok(())
            }
            Some(existing) if *existing == node => Ok(()),
            Some(_) => Err(SysrootError::Conflict {
                path: path.to_owned(),
            }),
        }
    }
}

/// The sysroot of one triple under a floor: the floor's packages for the triple's Debian
/// architecture (`load` returns each `.deb`'s verified bytes), unpacked, reduced to the
/// cross layout's two trees, with every link made relative and kept inside. The result
/// depends on the packages' bytes alone.
pub fn build_sysroot(
    lock: &Lock,
    spec: &'static TripleSpec,
    mut load: impl FnMut(&LockedPackage) -> Result<Vec<u8>, BoxError>,
) -> Result<Sysroot, SysrootError> {
    let gnu = spec.multiarch.ok_or(SysrootError::NoCRuntime(spec.rust))?;
    let packages = packages_for(lock, spec.debian_arch);
    if packages.is_empty() {
        return Err(SysrootError::NoPackages {
            arch: spec.debian_arch.to_owned(),
        });
    }
    let roots = [format!("usr/{gnu}/"), format!("usr/lib/gcc-cross/{gnu}/")];
    let kept = |path: &str| {
        roots
            .iter()
            .any(|r| path.starts_with(r.as_str()) || path == r.trim_end_matches('/'))
    };
    let mut sysroot = Sysroot::default();
    for package in packages {
        let bytes = load(package).map_err(|source| SysrootError::Load {
            filename: package.filename.clone(),
            source,
        })?;
        let entries = deb::extract_deb(&bytes).map_err(|source| SysrootError::Deb {
            filename: package.filename.clone(),
            source,
        })?;
        for entry in entries.iter().filter(|e| kept(&e.path)) {
            let node = match &entry.node {
                Node::Dir => SysrootNode::Dir,
                Node::File(data) => SysrootNode::File {
                    data: data.clone(),
                    executable: entry.mode & 0o111 != 0,
                },
                Node::Symlink(target) => {
                    SysrootNode::Symlink(relative_link(&entry.path, target).ok_or_else(|| {
                        SysrootError::Escapes {
                            path: entry.path.clone(),
                            target: target.clone(),
                        }
                    })?)
                }
                Node::Hardlink(target) => match sysroot.nodes.get(target) {
                    Some(file @ SysrootNode::File { .. }) => file.clone(),
                    _ => {
                        return Err(SysrootError::Hardlink {
                            path: entry.path.clone(),
                            target: target.clone(),
                        })
                    }
                },
            };
            sysroot.insert(&entry.path, node)?;
        }
    }
    for needed in [
        format!("usr/{gnu}/lib/libc.so.6"),
        format!("usr/{gnu}/lib/libc.so"),
        format!("usr/{gnu}/include/stdio.h"),
    ] {
        if !sysroot.nodes.contains_key(&needed) {
            return Err(SysrootError::Incomplete {
                triple: spec.rust,
                path: needed,
            });
        }
    }
    Ok(sysroot)
}

/// The target of the link at `path` (both relative to the sysroot), as a relative link
/// from the link's directory: an absolute target is taken as sysroot-relative. `None` when
/// it leads out of the sysroot.
fn relative_link(path: &str, target: &str) -> Option<String> {
    let mut resolved: Vec<&str> = Vec::new();
    if !target.starts_with('/') {
        resolved.extend(path.split('/'));
        resolved.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                resolved.pop()?;
            }
            name => resolved.push(name),
        }
    }
    if resolved.is_empty() {
        return None;
    }
    let dir: Vec<&str> = {
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        parts
    };
    let common = dir
        .iter()
        .zip(&resolved)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out: Vec<&str> = vec![".."; dir.len() - common];
    out.extend(&resolved[common..]);
    Some(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Request;

    use crate::deb::tests::{make_deb, make_tar, xz};
    use cmbuild_store::cid::cid_of_bytes;
    use cmbuild_store::sha256::Sha256;

    /// A floor lock over synthetic packages for amd64 (`name` -> data tar).
    fn fake_floor(debs: &[(&str, Vec<u8>)]) -> (Lock, BTreeMap<String, Vec<u8>>) {
        let mut blobs = BTreeMap::new();
        let packages = debs
            .iter()
            .map(|(name, tar)| {
                let deb = make_deb("data.tar.xz", &xz(tar));
                let filename = format!("pool/{name}_all.deb");
                let p = LockedPackage {
                    architecture: "all".into(),
                    cid: cid_of_bytes(&deb),
                    filename: filename.clone(),
                    name: (*name).into(),
                    sha256: Sha256::of(&deb),
                    size: deb.len() as u64,
                    version: "2.36-8cross1".into(),
                };
                blobs.insert(filename, deb);
                p
            })
            .collect();
        let lock = Lock {
            format: LOCK_FORMAT.into(),
            indices: BTreeMap::new(),
            mirror: "http://archive.invalid/debian".into(),
            packages,
            release_date: String::new(),
            release_version: "12.15".into(),
            suite: "bookworm".into(),
        };
        (lock, blobs)
    }

    fn libc_tar(extra: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut links = vec![
            (
                "./usr/x86_64-linux-gnu/lib64/ld-linux-x86-64.so.2",
                tar::EntryType::Symlink,
                "/usr/x86_64-linux-gnu/lib/ld-linux-x86-64.so.2",
            ),
            (
                "./usr/x86_64-linux-gnu/lib/libc.so.6.hard",
                tar::EntryType::Link,
                "./usr/x86_64-linux-gnu/lib/libc.so.6",
            ),
        ];
        links.extend_from_slice(extra);
        make_tar(
            &[
                ("./usr/x86_64-linux-gnu/lib/libc.so.6", b"ELF libc", 0o755),
                (
                    "./usr/x86_64-linux-gnu/lib/ld-linux-x86-64.so.2",
                    b"ELF ld",
                    0o755,
                ),
                ("./usr/share/doc/libc6-amd64-cross/copyright", b"GPL", 0o644),
                (
                    "./etc/ld.so.conf.d/x86_64.conf",
                    b"/usr/x86_64-linux-gnu/lib",
                    0o644,
                ),
            ],
            &links,
        )
    }

    fn dev_tar(stdio: &[u8]) -> Vec<u8> {
        make_tar(
            &[
                ("./usr/x86_64-linux-gnu/include/stdio.h", stdio, 0o644),
                (
                    "./usr/x86_64-linux-gnu/lib/libc.so",
                    b"GROUP ( /usr/x86_64-linux-gnu/lib/libc.so.6 )",
                    0o644,
                ),
                (
                    "./usr/lib/gcc-cross/x86_64-linux-gnu/12/crtbegin.o",
                    b"ELF crt",
                    0o644,
                ),
            ],
            &[(
                "./usr/lib/gcc-cross/x86_64-linux-gnu/12/libstdc++.so",
                tar::EntryType::Symlink,
                "../../../../x86_64-linux-gnu/lib/libstdc++.so.6",
            )],
        )
    }

    fn build(debs: &[(&str, Vec<u8>)]) -> Result<Sysroot, SysrootError> {
        let (lock, blobs) = fake_floor(debs);
        build_sysroot(&lock, &TABLE[0], |p| Ok(blobs[&p.filename].clone()))
    }

    #[test]
    fn a_sysroot_keeps_the_cross_trees_with_links_made_safe() {
        let debs = [
            ("libc6-amd64-cross", libc_tar(&[])),
            ("libc6-dev-amd64-cross", dev_tar(b"/* stdio */")),
            // Another architecture's package is not part of this sysroot.
            (
                "libc6-riscv64-cross",
                make_tar(&[("./usr/riscv64-linux-gnu/lib/x", b"no", 0o644)], &[]),
            ),
        ];
        let sysroot = build(&debs).unwrap();
        assert_eq!(sysroot, build(&debs).unwrap(), "a function of the packages");
        let paths: Vec<&str> = sysroot.nodes.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/lib",
                "usr/lib/gcc-cross",
                "usr/lib/gcc-cross/x86_64-linux-gnu",
                "usr/lib/gcc-cross/x86_64-linux-gnu/12",
                "usr/lib/gcc-cross/x86_64-linux-gnu/12/crtbegin.o",
                "usr/lib/gcc-cross/x86_64-linux-gnu/12/libstdc++.so",
                "usr/x86_64-linux-gnu",
                "usr/x86_64-linux-gnu/include",
                "usr/x86_64-linux-gnu/include/stdio.h",
                "usr/x86_64-linux-gnu/lib",
                "usr/x86_64-linux-gnu/lib/ld-linux-x86-64.so.2",
                "usr/x86_64-linux-gnu/lib/libc.so",
                "usr/x86_64-linux-gnu/lib/libc.so.6",
                "usr/x86_64-linux-gnu/lib/libc.so.6.hard",
                "usr/x86_64-linux-gnu/lib64",
                "usr/x86_64-linux-gnu/lib64/ld-linux-x86-64.so.2",
            ],
            "docs, /etc and other architectures are left out"
        );
        let node = |p: &str| sysroot.nodes[p].clone();
        // The absolute link now stays inside the sysroot; the relative one is kept.
        assert_eq!(
            node("usr/x86_64-linux-gnu/lib64/ld-linux-x86-64.so.2"),
            SysrootNode::Symlink("../lib/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(
            node("usr/lib/gcc-cross/x86_64-linux-gnu/12/libstdc++.so"),
            SysrootNode::Symlink("../../../../x86_64-linux-gnu/lib/libstdc++.so.6".into())
        );
        // A hard link is a copy; execute bits are kept.
        assert_eq!(
            node("usr/x86_64-linux-gnu/lib/libc.so.6.hard"),
            node("usr/x86_64-linux-gnu/lib/libc.so.6")
        );
        assert!(matches!(
            node("usr/x86_64-linux-gnu/lib/libc.so.6"),
            SysrootNode::File {
                executable: true,
                ..
            }
        ));
        // libc.so.6 twice, ld.so, stdio.h, the libc.so script, crtbegin.o.
        assert_eq!(sysroot.file_bytes(), 8 * 2 + 6 + 11 + 45 + 7);
    }

    #[test]
    fn escaping_links_conflicts_and_missing_parts_are_refused() {
        let escape = [(
            "./usr/x86_64-linux-gnu/lib/evil.so",
            tar::EntryType::Symlink,
            "../../../../../etc/passwd",
        )];
        let err = build(&[
            ("libc6-amd64-cross", libc_tar(&escape)),
            ("libc6-dev-amd64-cross", dev_tar(b"")),
        ])
        .unwrap_err();
        assert!(matches!(err, SysrootError::Escapes { .. }), "{err}");
        // The same header path in two packages with other bytes.
        let clash = make_tar(
            &[("./usr/x86_64-linux-gnu/include/stdio.h", b"other", 0o644)],
            &[],
        );
        let err = build(&[
            ("libc6-amd64-cross", libc_tar(&[])),
            ("libc6-dev-amd64-cross", dev_tar(b"")),
            ("linux-libc-dev-amd64-cross", clash),
        ])
        .unwrap_err();
        assert!(
            matches!(err, SysrootError::Conflict { ref path } if path.ends_with("stdio.h")),
            "{err}"
        );
        // No headers: not a sysroot.
        let err = build(&[("libc6-amd64-cross", libc_tar(&[]))]).unwrap_err();
        assert!(matches!(err, SysrootError::Incomplete { .. }), "{err}");
        // A target without a C runtime has no sysroot.
        let (lock, _) = fake_floor(&[]);
        let wasm = TABLE.iter().find(|t| t.multiarch.is_none()).unwrap();
        assert!(matches!(
            build_sysroot(&lock, wasm, |_| unreachable!()),
            Err(SysrootError::NoCRuntime(_))
        ));
    }

    #[test]
    fn the_floor_image_is_deterministic_and_readable_by_erofs_utils() {
        let debs = [
            ("libc6-amd64-cross", libc_tar(&[])),
            ("libc6-dev-amd64-cross", dev_tar(b"/* stdio */")),
        ];
        let sysroot = build(&debs).unwrap();
        let image = floor_image("2.36", &[("x86_64-unknown-linux-gnu", &sysroot)]).unwrap();
        let again = floor_image(
            "2.36",
            &[("x86_64-unknown-linux-gnu", &build(&debs).unwrap())],
        );
        assert_eq!(image, again.unwrap(), "same bytes twice");
        assert_ne!(
            image,
            floor_image("2.37", &[("x86_64-unknown-linux-gnu", &sysroot)]).unwrap()
        );
        if std::process::Command::new("fsck.erofs")
            .arg("--help")
            .output()
            .is_err()
        {
            eprintln!("fsck.erofs is not installed: the image's contents were not read back");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("floor.erofs");
        std::fs::write(&file, &image).unwrap();
        let out = dir.path().join("out");
        let status = std::process::Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::read_to_string(out.join(IMAGE_MARKER)).unwrap(),
            "2.36\n"
        );
        let root = out.join("x86_64-unknown-linux-gnu/usr/x86_64-linux-gnu");
        assert_eq!(
            std::fs::read(root.join("include/stdio.h")).unwrap(),
            b"/* stdio */"
        );
        assert_eq!(
            std::fs::read_link(root.join("lib64/ld-linux-x86-64.so.2")).unwrap(),
            std::path::Path::new("../lib/ld-linux-x86-64.so.2")
        );
        assert_eq!(
            std::fs::read(root.join("lib64/ld-linux-x86-64.so.2")).unwrap(),
            b"ELF ld"
        );
    }

    #[test]
    fn links_are_made_relative_and_kept_inside() {
        let cases = [
            ("usr/a/lib/libm.so", "libm.so.6", Some("libm.so.6")),
            (
                "usr/a/lib/libm.so",
                "/usr/a/lib/libm.so.6",
                Some("libm.so.6"),
            ),
            (
                "usr/a/lib64/ld.so.2",
                "/usr/a/lib/ld.so.2",
                Some("../lib/ld.so.2"),
            ),
            (
                "usr/lib/gcc-cross/a/12/libstdc++.so",
                "../../../../a/lib/libstdc++.so.6",
                Some("../../../../a/lib/libstdc++.so.6"),
            ),
            (
                "usr/a/lib/x",
                "/lib/a/libc.so.6",
                Some("../../../lib/a/libc.so.6"),
            ),
            ("usr/a/lib/x", "./y/../z", Some("z")),
            ("usr/a/lib/x", "../../../../etc/passwd", None),
            ("usr/a/lib/x", "/..", None),
            ("usr/a/lib/x", "/", None),
        ];
        for (path, target, expected) in cases {
            assert_eq!(
                relative_link(path, target).as_deref(),
                expected,
                "{path} -> {target}"
            );
        }
    }

    #[test]
    fn floor_ids_and_package_names() {
        assert!(valid_floor_id("2.36") && valid_floor_id("10.100"));
        for bad in ["2", "2.36.1", "2.x", "", ".36", "2.3600", "-2.36"] {
            assert!(!valid_floor_id(bad), "{bad}");
        }
        assert_eq!(floor_architectures(), ["amd64", "arm64", "riscv64"]);
        assert_eq!(
            cross_package("libc6-dev", "riscv64"),
            "libc6-dev-riscv64-cross"
        );
        assert_eq!(glibc_of_version("2.36-8cross1"), Some("2.36"));
        assert_eq!(glibc_of_version("1:2.36-8"), None);
    }

    #[test]
    fn a_floor_request_names_every_architectures_cross_packages() {
        let text = include_str!("../testdata/packages.toml").to_owned()
            + "\n[glibc_floors.\"2.36\"]\nsuite = \"oldstable\"\n\
               packages = [\"libc6\", \"libc6-dev\", \"libgcc-12-dev\"]\n";
        let request = Request::parse(&text).unwrap();
        let floor = request.floor_request("2.36").unwrap();
        assert_eq!(floor.suite, "oldstable");
        assert_eq!(floor.native, "all");
        assert_eq!(floor.index_path("all"), "main/binary-all/Packages.gz");
        let names = &floor.packages["all"];
        assert_eq!(names.len(), 9);
        assert!(names.contains(&"libgcc-12-dev-riscv64-cross".to_owned()));
        assert!(request.floor_request("2.35").is_none());
        // A floor that is not a glibc version, or lacks the C library, is refused.
        for doctored in [
            text.replace("glibc_floors.\"2.36\"", "glibc_floors.\"bookworm\""),
            text.replace("\"libc6\", ", ""),
        ] {
            assert!(Request::parse(&doctored).is_err(), "{doctored}");
        }
    }

    #[test]
    fn the_shipped_floors_are_canonical_and_cover_every_linux_triple() {
        let locks = shipped().unwrap();
        assert_eq!(locks.to_json(), SHIPPED_FLOOR_LOCKS, "canonical");
        assert!(locks.floors.contains_key("2.36"), "{:?}", locks.describe());
        for (id, lock) in &locks.floors {
            for arch in floor_architectures() {
                let names: Vec<&str> = packages_for(lock, arch)
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect();
                for needed in ["libc6", "libc6-dev", "linux-libc-dev"] {
                    assert!(
                        names.contains(&cross_package(needed, arch).as_str()),
                        "{id} {arch}: {names:?}"
                    );
                }
            }
        }
        // The floor list is the request's: one definition.
        let request = Request::parse(include_str!("../../../guest-image/packages.toml")).unwrap();
        assert_eq!(
            request.glibc_floors.keys().collect::<Vec<_>>(),
            locks.floors.keys().collect::<Vec<_>>()
        );
        for (id, floor) in &request.glibc_floors {
            let lock = &locks.floors[id];
            assert_eq!(lock.suite, floor.suite);
            assert_eq!(
                lock.packages.len(),
                floor.packages.len() * floor_architectures().len(),
                "{id}: exactly the requested packages"
            );
        }
    }

    #[test]
    fn a_doctored_floor_lock_is_refused() {
        let good = SHIPPED_FLOOR_LOCKS;
        for (from, to) in [
            ("\"2.36\": {", "\"2.35\": {"),
            ("\"2.36\": {", "\"bookworm\": {"),
            (FLOOR_LOCKS_FORMAT, "cmbuild-glibc-floor-locks-v0"),
            (
                "\"name\":\"libc6-dev-riscv64-cross\"",
                "\"name\":\"libc6-dev-riscv64\"",
            ),
            ("\"architecture\":\"all\"", "\"architecture\":\"amd64\""),
            // Every floor has its image pinned, by a CID, and only the floors do.
            ("\"2.36\": \"bafy", "\"2.35\": \"bafy"),
            ("\"2.36\": \"bafy", "\"2.36\": \"qafy"),
            (
                "\"images\": {\n\"2.36\"",
                "\"images\": {\n\"2.40\": \"bafybeidae2okhfjhn35e4wglqscdmvhcw4hblnt6nes6sznlhvi6npvpii\",\n\"2.36\"",
            ),
            ("\"images\": {", "\"pictures\": {"),
        ] {
            let doctored = good.replacen(from, to, 1);
            assert_ne!(doctored, good, "{from}");
            assert!(FloorLocks::parse(&doctored).is_err(), "{from}");
        }
    }
}
