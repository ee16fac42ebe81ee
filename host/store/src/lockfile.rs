//! Cargo.lock: the packages a project builds with, and where each comes from.
//!
//! Lock file versions 1 to 4 are read (v1 keeps checksums in `[metadata]`, later versions
//! inline). Only what vendoring needs is kept: name, version, source and checksum.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::sha256::Sha256;

/// The source string of crates.io packages in every lock file version.
pub const CRATES_IO_GIT: &str = "registry+https://github.com/rust-lang/crates.io-index";
/// The source string of crates.io when a project uses the sparse protocol explicitly.
pub const CRATES_IO_SPARSE: &str = "sparse+https://index.crates.io/";

/// Longest crate name accepted (crates.io allows 64).
pub const MAX_NAME_LEN: usize = 64;
/// Longest version accepted.
pub const MAX_VERSION_LEN: usize = 128;

/// Errors of reading a Cargo.lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// {path}: package name {name:?} is not a crate name (1 to 64 ASCII letters, digits, `-` or `_`, not starting with `-`)
    #[error("{path}: package name {name:?} is not a crate name (1 to 64 ASCII letters, digits, `-` or `_`, not starting with `-`)")]
    BadName {
        /// The lock file.
        path: PathBuf,
        /// The refused name (at most 80 characters of it).
        name: String,
    },
    /// {path}: package {name} has version {version:?}, which is not a semver version (1 to 128 ASCII letters, digits, `.`, `-` or `+`, starting with a digit)
    #[error("{path}: package {name} has version {version:?}, which is not a semver version (1 to 128 ASCII letters, digits, `.`, `-` or `+`, starting with a digit)")]
    BadVersion {
        /// The lock file.
        path: PathBuf,
        /// The package.
        name: String,
        /// The refused version (at most 80 characters of it).
        version: String,
    },
    /// no Cargo.lock at {0}: run `cargo generate-lockfile` in the project first
    #[error("no Cargo.lock at {0}: run `cargo generate-lockfile` in the project first")]
    Missing(PathBuf),
    /// cannot read {path}
    #[error("cannot read {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// {path} is not a valid Cargo.lock
    #[error("{path} is not a valid Cargo.lock")]
    Malformed {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: toml::de::Error,
    },
    /// {path} has lock file version {version}; cmbuild reads versions 1 to 4
    #[error("{path} has lock file version {version}; cmbuild reads versions 1 to 4")]
    Version {
        /// The path concerned.
        path: PathBuf,
        /// The lock format version found.
        version: u32,
    },
    /// {path}: package {name} {version} from crates.io has no checksum
    #[error("{path}: package {name} {version} from crates.io has no checksum")]
    NoChecksum {
        /// The path concerned.
        path: PathBuf,
        /// Package or crate name.
        name: String,
        /// The package version.
        version: String,
    },
    /// {path}: checksum of {name} {version} is not 64 hex digits: `{checksum}`
    #[error("{path}: checksum of {name} {version} is not 64 hex digits: `{checksum}`")]
    BadChecksum {
        /// The path concerned.
        path: PathBuf,
        /// Package or crate name.
        name: String,
        /// The package version.
        version: String,
        /// The checksum text found.
        checksum: String,
    },
}

/// Where a locked package comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// crates.io, with the sha256 of the `.crate` archive.
    CratesIo {
        /// sha256 of the `.crate` archive.
        sha256: Sha256,
    },
    /// A git repository (the lock's source string, with the commit).
    Git(String),
    /// No source: a workspace member or a path dependency.
    Local,
    /// Another registry (the lock's source string).
    Other(String),
}

/// One `[[package]]` of the lock.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Package or crate name.
    pub name: String,
    /// The package version.
    pub version: String,
    /// Where it comes from.
    pub source: Source,
    /// The packages it depends on, as the lock names them: `name`, `name version` or
    /// `name version (source)` (unchecked: they only point at other entries).
    pub dependencies: Vec<String>,
}

impl Package {
    /// The checksum of a crates.io package.
    pub fn sha256(&self) -> Option<Sha256> {
        match &self.source {
            Source::CratesIo { sha256 } => Some(*sha256),
            _ => None,
        }
    }
}

/// The packages of a Cargo.lock, sorted by name, version and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockfile {
    /// The lock format version (1 to 4).
    pub version: u32,
    /// Packages sorted by name, version and source.
    pub packages: Vec<Package>,
}

#[derive(serde::Deserialize)]
struct RawLock {
    version: Option<u32>,
    #[serde(default)]
    package: Vec<RawPackage>,
    #[serde(default)]
    metadata: BTreeMap<String, toml::Value>,
}

#[derive(serde::Deserialize)]
struct RawPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

/// Reads and parses the Cargo.lock at `path`.
pub fn read_lockfile(path: &Path) -> Result<Lockfile, LockError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(LockError::Missing(path.to_owned()))
        }
        Err(source) => {
            return Err(LockError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    parse_lockfile(&text, path)
}

/// Parses Cargo.lock text; `path` only names the file in errors.
pub fn parse_lockfile(text: &str, path: &Path) -> Result<Lockfile, LockError> {
    let raw: RawLock = toml::from_str(text).map_err(|source| LockError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    // Versions 1 and 2 carry no `version` key; 2 has inline checksums, 1 a metadata table.
    let version = raw
        .version
        .unwrap_or(if raw.metadata.is_empty() { 2 } else { 1 });
    if !(1..=4).contains(&version) {
        return Err(LockError::Version {
            path: path.to_owned(),
            version,
        });
    }
    let mut packages = Vec::with_capacity(raw.package.len());
    for package in raw.package {
        // Names and versions become directory names and mirror index keys: check them first.
        let shown = |s: &str| s.chars().take(80).collect::<String>();
        if !is_valid_crate_name(&package.name) {
            return Err(LockError::BadName {
                path: path.to_owned(),
                name: shown(&package.name),
            });
        }
        if !is_valid_version(&package.version) {
            return Err(LockError::BadVersion {
                path: path.to_owned(),
                name: package.name,
                version: shown(&package.version),
            });
        }
        let source = match package.source.as_deref() {
            None => Source::Local,
            Some(s @ (CRATES_IO_GIT | CRATES_IO_SPARSE)) => {
                let checksum = package.checksum.clone().or_else(|| {
                    // v1: `"checksum NAME VERSION (SOURCE)" = "HEX"`
                    let key = format!("checksum {} {} ({s})", package.name, package.version);
                    raw.metadata.get(&key)?.as_str().map(str::to_owned)
                });
                let checksum = checksum.ok_or_else(|| LockError::NoChecksum {
                    path: path.to_owned(),
                    name: package.name.clone(),
                    version: package.version.clone(),
                })?;
                let sha256 = parse_sha256(&checksum).ok_or_else(|| LockError::BadChecksum {
                    path: path.to_owned(),
                    name: package.name.clone(),
                    version: package.version.clone(),
                    checksum: checksum.clone(),
                })?;
                Source::CratesIo { sha256 }
            }
            Some(s) if s.starts_with("git+") => Source::Git(s.to_owned()),
            Some(s) => Source::Other(s.to_owned()),
        };
        packages.push(Package {
            name: package.name,
            version: package.version,
            source,
            dependencies: package.dependencies,
        });
    }
    packages.sort();
    Ok(Lockfile { version, packages })
}

/// Whether `name` is a crate name cargo could have written: 1 to [`MAX_NAME_LEN`] ASCII
/// letters, digits, `-` and `_`, not starting with `-`.
pub fn is_valid_crate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `version` looks like a semver version: 1 to [`MAX_VERSION_LEN`] ASCII letters,
/// digits, `.`, `-` and `+`, starting with a digit (so never `.`, `..` or a path).
pub fn is_valid_version(version: &str) -> bool {
    version.len() <= MAX_VERSION_LEN
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

fn parse_sha256(text: &str) -> Option<Sha256> {
    // Lowercase only: the lock writes lowercase, and two spellings of one hash would make
    // two index entries.
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "8f42a60cbdf9a97f5d2305f08a87dc4e09308d1276d28c869c684d7777685682";

    fn parse(text: &str) -> Result<Lockfile, LockError> {
        parse_lockfile(text, Path::new("Cargo.lock"))
    }

    #[test]
    fn reads_v4_and_v3_with_every_source_kind() {
        for version in [3, 4] {
            let text = format!(
                r#"version = {version}

[[package]]
name = "itoa"
version = "1.0.18"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "{SUM}"

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["itoa"]

[[package]]
name = "dep"
version = "0.2.0"
source = "git+https://example.com/dep.git#0123abcd"
"#
            );
            let lock = parse(&text).unwrap();
            assert_eq!(lock.version, version);
            let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["app", "dep", "itoa"]);
            assert_eq!(lock.packages[0].source, Source::Local);
            assert_eq!(lock.packages[0].dependencies, ["itoa"]);
            assert!(lock.packages[2].dependencies.is_empty());
            assert_eq!(
                lock.packages[1].source,
                Source::Git("git+https://example.com/dep.git#0123abcd".into())
            );
            assert_eq!(lock.packages[2].sha256().unwrap().to_string(), SUM);
        }
    }

    #[test]
    fn reads_v1_metadata_checksums() {
        let text = format!(
            r#"[[package]]
name = "itoa"
version = "1.0.18"
source = "registry+https://github.com/rust-lang/crates.io-index"

[metadata]
"checksum itoa 1.0.18 (registry+https://github.com/rust-lang/crates.io-index)" = "{SUM}"
"#
        );
        let lock = parse(&text).unwrap();
        assert_eq!(lock.version, 1);
        assert_eq!(lock.packages[0].sha256().unwrap().to_string(), SUM);
    }

    #[test]
    fn malformed_locks_are_clear_errors() {
        let err = parse("version = 4\n[[package]]\nname = 3\n").unwrap_err();
        assert!(matches!(err, LockError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("not a valid Cargo.lock"));

        let err = parse("version = 9\n").unwrap_err();
        assert!(
            matches!(err, LockError::Version { version: 9, .. }),
            "{err}"
        );

        let missing_sum = "version = 4\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        let err = parse(missing_sum).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cargo.lock: package a 1.0.0 from crates.io has no checksum"
        );

        let bad_sum = format!("{missing_sum}checksum = \"{}\"\n", SUM.to_uppercase());
        assert!(matches!(
            parse(&bad_sum).unwrap_err(),
            LockError::BadChecksum { .. }
        ));
    }

    #[test]
    fn missing_file_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_lockfile(&dir.path().join("Cargo.lock")).unwrap_err();
        assert!(matches!(err, LockError::Missing(_)));
        assert!(err.to_string().contains("cargo generate-lockfile"));
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    fn lock_with(name: &str, version: &str) -> String {
        format!(
            "version = 4\n\n[[package]]\nname = {}\nversion = {}\nsource = \"{CRATES_IO_GIT}\"\nchecksum = \"{}\"\n",
            toml::Value::String(name.to_owned()),
            toml::Value::String(version.to_owned()),
            "ab".repeat(32)
        )
    }

    #[test]
    fn hostile_names_and_versions_are_refused_with_a_clear_error() {
        let path = Path::new("Cargo.lock");
        parse_lockfile(&lock_with("serde_json", "1.0.0-rc.1+build.5"), path).unwrap();
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for name in [
            "evil/x", "..", ".hidden", "a\\b", "nul\0", "-x", "", "sp ace", &long,
        ] {
            let err = parse_lockfile(&lock_with(name, "1.0.0"), path).unwrap_err();
            assert!(matches!(err, LockError::BadName { .. }), "{name:?}: {err}");
            assert!(err.to_string().contains("not a crate name"), "{err}");
        }
        let long = format!("1.{}", "0".repeat(MAX_VERSION_LEN));
        for version in ["../1", "1/2", ".1", "..", "1\0", "1\\0", "", "v1.0", &long] {
            let err = parse_lockfile(&lock_with("x", version), path).unwrap_err();
            assert!(
                matches!(err, LockError::BadVersion { .. }),
                "{version:?}: {err}"
            );
        }
    }
}
