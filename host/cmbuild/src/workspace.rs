//! The project's Cargo workspace, read by cmbuild itself from its manifests: no Rust
//! toolchain on the host takes part (a `rust-toolchain.toml` naming a version the host lacks
//! changes nothing, and neither does the host's cargo version).
//!
//! Only what the plan and `vendor` need is read, following cargo's rules: the workspace
//! root's `[workspace] members` (with `*` and `?` globs) minus `exclude`, the path
//! dependencies of members that lie under the root (cargo makes them members too), each
//! member's package name and version (`version.workspace = true` inherited; `0.0.0` when
//! absent), and its binary targets: the `[[bin]]` entries, plus `src/main.rs`,
//! `src/bin/*.rs` and `src/bin/*/main.rs` unless `package.autobins = false` (an inferred
//! binary is dropped when an explicit one has its name or its path).
//!
//! Every file is read beneath the tree's root, confined there (a symbolic link out of it is
//! refused) and size-capped; the member count and directory listings are bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::Value;

use crate::plan::PlannedBin;
use crate::untrusted::{self, ReadError};

/// Largest `Cargo.toml` read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Most workspace members.
pub const MAX_MEMBERS: usize = 4096;
/// Most entries read from one directory (a glob's or `src/bin/`).
pub const MAX_DIR_ENTRIES: usize = 65_536;

/// Why the workspace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A manifest that must exist does not.
    #[error("{0}: no Cargo.toml")]
    NoManifest(String),
    /// A manifest could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The manifest, relative to the tree.
        path: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// A manifest is not valid TOML or lacks what cargo requires.
    #[error("{path} is not a valid Cargo manifest: {message}")]
    Invalid {
        /// The manifest.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The workspace uses something cmbuild does not read.
    #[error("{path}: {what}")]
    Unsupported {
        /// The manifest.
        path: String,
        /// What cmbuild does not support.
        what: String,
    },
    /// Too many members.
    #[error("the workspace has more than {MAX_MEMBERS} members")]
    TooManyMembers,
}

type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

/// One member of the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The package's name.
    pub name: String,
    /// The package's version.
    pub version: String,
    /// Its directory, relative to the workspace root (`""` for the root package).
    pub dir: String,
    /// Its binary targets' names, sorted.
    pub bins: Vec<String>,
    /// Its `package.rust-version`, if it declares one (inherited from
    /// `workspace.package.rust-version` when `rust-version.workspace = true`).
    pub rust_version: Option<String>,
}

/// A workspace as its manifests describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// The workspace root directory.
    pub root: PathBuf,
    /// The members, sorted by directory.
    pub members: Vec<Member>,
}

impl Workspace {
    /// Every binary of every member, sorted, as the plan lists them.
    pub fn bins(&self) -> Vec<PlannedBin> {
        let mut bins: Vec<PlannedBin> = self
            .members
            .iter()
            .flat_map(|m| {
                m.bins.iter().map(|b| PlannedBin {
                    package: m.name.clone(),
                    version: m.version.clone(),
                    bin: b.clone(),
                })
            })
            .collect();
        bins.sort();
        bins
    }

    /// Whether a package of this name and version is a member.
    pub fn has_member(&self, name: &str, version: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.name == name && m.version == version)
    }
}

/// A directory tree whose files are read confined beneath its root.
struct Tree<'a> {
    root: &'a Path,
}

/// What a directory entry is, after following links inside the tree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

impl Tree<'_> {
    fn read_manifest(&self, dir: &str) -> Result<Option<Value>> {
        let rel = join(dir, "Cargo.toml");
        let bytes =
            untrusted::read_confined(self.root, &rel, MAX_MANIFEST_BYTES).map_err(|source| {
                WorkspaceError::Read {
                    path: rel.clone(),
                    source,
                }
            })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes).map_err(|_| WorkspaceError::Invalid {
            path: rel.clone(),
            message: "not UTF-8".into(),
        })?;
        text.parse::<toml::Table>()
            .map(|t| Some(Value::Table(t)))
            .map_err(|e| WorkspaceError::Invalid {
                path: rel,
                message: e.to_string(),
            })
    }

    fn kind(&self, rel: &str) -> Option<Kind> {
        let resolved = untrusted::resolve_confined(self.root, rel).ok()?;
        let meta = std::fs::symlink_metadata(self.root.join(resolved)).ok()?;
        if meta.is_dir() {
            Some(Kind::Dir)
        } else if meta.is_file() {
            Some(Kind::File)
        } else {
            None
        }
    }

    /// The UTF-8 names in a directory with what they are, sorted; empty if it is not one.
    fn list(&self, dir: &str) -> Vec<(String, Kind)> {
        let Ok(resolved) = untrusted::resolve_confined(self.root, dir) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(self.root.join(resolved)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten().take(MAX_DIR_ENTRIES) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(kind) = self.kind(&join(dir, &name)) {
                out.push((name, kind));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// `dir/name` with `dir` possibly empty.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// `base` joined with the relative path `rel`, lexically normalised; `None` when it is
/// absolute or climbs above the tree's root.
fn normalize(base: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') || rel.contains('\\') || rel.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Whether `path` is `prefix` or lies beneath it.
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Matches one path component against a glob component (`*` any run, `?` one character),
/// in time linear in their product at worst (the single-star backtracking algorithm).
fn glob_match(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

fn string_list(table: Option<&Value>, key: &str, path: &str) -> Result<Vec<String>> {
    match table.and_then(|t| t.get(key)) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(WorkspaceError::Invalid {
                        path: path.to_owned(),
                        message: format!("workspace.{key} must be a list of strings"),
                    })
            })
            .collect(),
        Some(_) => Err(WorkspaceError::Invalid {
            path: path.to_owned(),
            message: format!("workspace.{key} must be a list of strings"),
        }),
    }
}

/// The root's `[workspace]` settings.
struct RootConfig {
    members: Vec<String>,
    exclude: Vec<String>,
    package: Option<Value>,
    dependencies: Option<Value>,
}

impl RootConfig {
    fn is_excluded(&self, dir: &str) -> bool {
        let explicit = self
            .members
            .iter()
            .any(|m| normalize("", m).is_some_and(|m| under(dir, &m)));
        let excluded = self
            .exclude
            .iter()
            .any(|e| normalize("", e).is_some_and(|e| under(dir, &e)));
        excluded && !explicit
    }
}

/// Expands the `members` patterns into directories, in order, without duplicates.
fn expand_members(tree: &Tree, config: &RootConfig, path: &str) -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for pattern in &config.members {
        if pattern.contains('[') || pattern.contains("**") {
            return Err(WorkspaceError::Unsupported {
                path: path.to_owned(),
                what: format!("workspace member pattern {pattern:?} (cmbuild reads `*` and `?`)"),
            });
        }
        let Some(normal) = normalize("", pattern) else {
            return Err(WorkspaceError::Unsupported {
                path: path.to_owned(),
                what: format!("workspace member {pattern:?} lies outside the workspace root"),
            });
        };
        let is_glob = pattern.contains(['*', '?']);
        let mut found = vec![String::new()];
        for part in normal.split('/').filter(|p| !p.is_empty()) {
            let mut next = Vec::new();
            for dir in &found {
                if part.contains(['*', '?']) {
                    let pat: Vec<char> = part.chars().collect();
                    for (name, kind) in tree.list(dir) {
                        let chars: Vec<char> = name.chars().collect();
                        if kind == Kind::Dir && glob_match(&pat, &chars) {
                            next.push(join(dir, &name));
                        }
                    }
                } else {
                    next.push(join(dir, part));
                }
                if next.len() > MAX_MEMBERS {
                    return Err(WorkspaceError::TooManyMembers);
                }
            }
            found = next;
        }
        for dir in found {
            // A glob's matches without a manifest are skipped only when they are not
            // directories; cargo refuses a member directory without one, and so does this.
            if is_glob && tree.kind(&dir) != Some(Kind::Dir) {
                continue;
            }
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    Ok(dirs)
}

/// The `path` of every dependency of a package (all kinds, every target), relative to the
/// tree's root; `workspace = true` entries take theirs from `[workspace.dependencies]`.
fn path_dependencies(manifest: &Value, dir: &str, config: Option<&RootConfig>) -> Vec<String> {
    let mut tables: Vec<&Value> = Vec::new();
    let kinds = [
        "dependencies",
        "dev-dependencies",
        "dev_dependencies",
        "build-dependencies",
        "build_dependencies",
    ];
    for kind in kinds {
        tables.extend(manifest.get(kind));
    }
    if let Some(Value::Table(targets)) = manifest.get("target") {
        for target in targets.values() {
            for kind in kinds {
                tables.extend(target.get(kind));
            }
        }
    }
    let mut paths = Vec::new();
    for table in tables {
        let Value::Table(deps) = table else { continue };
        for (name, dep) in deps {
            let inherited = dep.get("workspace").and_then(Value::as_bool) == Some(true);
            let found = if inherited {
                config
                    .and_then(|c| c.dependencies.as_ref())
                    .and_then(|d| d.get(name))
                    .and_then(|d| d.get("path"))
                    .and_then(Value::as_str)
                    .and_then(|p| normalize("", p))
            } else {
                dep.get("path")
                    .and_then(Value::as_str)
                    .and_then(|p| normalize(dir, p))
            };
            paths.extend(found);
        }
    }
    paths
}

/// A string field of `[package]` that may be inherited from `[workspace.package]`.
fn package_field(
    package: &Value,
    key: &str,
    config: Option<&RootConfig>,
    path: &str,
) -> Result<Option<String>> {
    match package.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) if v.get("workspace").and_then(Value::as_bool) == Some(true) => config
            .and_then(|c| c.package.as_ref())
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| WorkspaceError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "package.{key} is inherited but workspace.package.{key} is not set"
                ),
            }),
        Some(_) => Err(WorkspaceError::Invalid {
            path: path.to_owned(),
            message: format!("package.{key} must be a string"),
        }),
    }
}

/// The binary targets of the package in `dir` (cargo's rules for `[[bin]]` and autobins).
fn package_bins(
    tree: &Tree,
    manifest: &Value,
    dir: &str,
    name: &str,
    path: &str,
) -> Result<Vec<String>> {
    let invalid = |message: String| WorkspaceError::Invalid {
        path: path.to_owned(),
        message,
    };
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    match manifest.get("bin") {
        None => {}
        Some(Value::Array(bins)) => {
            for bin in bins {
                let bin_name = bin
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("every [[bin]] needs a name".into()))?;
                if let Some(p) = bin.get("path").and_then(Value::as_str) {
                    paths.extend(normalize("", p));
                }
                if !names.insert(bin_name.to_owned()) {
                    return Err(invalid(format!(
                        "two [[bin]] targets are named {bin_name:?}"
                    )));
                }
            }
        }
        Some(_) => return Err(invalid("`bin` must be an array of tables ([[bin]])".into())),
    }
    let autobins = match manifest.get("package").and_then(|p| p.get("autobins")) {
        None => true,
        Some(Value::Boolean(b)) => *b,
        Some(_) => return Err(invalid("package.autobins must be a boolean".into())),
    };
    if autobins {
        let mut inferred = Vec::new();
        if tree.kind(&join(dir, "src/main.rs")) == Some(Kind::File) {
            inferred.push((name.to_owned(), "src/main.rs".to_owned()));
        }
        for (entry, kind) in tree.list(&join(dir, "src/bin")) {
            match kind {
                Kind::File => {
                    if let Some(stem) = entry.strip_suffix(".rs") {
                        inferred.push((stem.to_owned(), format!("src/bin/{entry}")));
                    }
                }
                Kind::Dir => {
                    let main = format!("src/bin/{entry}/main.rs");
                    if tree.kind(&join(dir, &main)) == Some(Kind::File) {
                        inferred.push((entry, main));
                    }
                }
            }
        }
        let explicit = names.clone();
        for (bin, bin_path) in inferred {
            if !explicit.contains(&bin) && !paths.contains(&bin_path) {
                names.insert(bin);
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// Reads the member in `dir` (relative to the root).
fn read_member(
    tree: &Tree,
    manifest: &Value,
    dir: &str,
    config: Option<&RootConfig>,
) -> Result<Member> {
    let path = join(dir, "Cargo.toml");
    let package = manifest
        .get("package")
        .ok_or_else(|| WorkspaceError::Invalid {
            path: path.clone(),
            message: "a workspace member needs a [package]".into(),
        })?;
    let name = package
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkspaceError::Invalid {
            path: path.clone(),
            message: "package.name is missing".into(),
        })?
        .to_owned();
    let version =
        package_field(package, "version", config, &path)?.unwrap_or_else(|| "0.0.0".into());
    let rust_version = package_field(package, "rust-version", config, &path)?;
    let bins = package_bins(tree, manifest, dir, &name, &path)?;
    Ok(Member {
        name,
        version,
        dir: dir.to_owned(),
        bins,
        rust_version,
    })
}

/// Reads the workspace whose root manifest is `root/Cargo.toml`.
pub fn read_workspace(root: &Path) -> Result<Workspace> {
    let tree = Tree { root };
    let root_manifest = tree
        .read_manifest("")?
        .ok_or_else(|| WorkspaceError::NoManifest(root.display().to_string()))?;
    if let Some(p) = root_manifest
        .get("package")
        .and_then(|p| p.get("workspace"))
    {
        return Err(WorkspaceError::Unsupported {
            path: "Cargo.toml".into(),
            what: format!(
                "package.workspace = {p} points at a workspace root outside the project; \
                 build from the workspace root"
            ),
        });
    }
    let config = match root_manifest.get("workspace") {
        None => None,
        Some(ws) => Some(RootConfig {
            members: string_list(Some(ws), "members", "Cargo.toml")?,
            exclude: string_list(Some(ws), "exclude", "Cargo.toml")?,
            package: ws.get("package").cloned(),
            dependencies: ws.get("dependencies").cloned(),
        }),
    };
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    // (directory, manifest) still to read; the root first.
    let mut todo: Vec<(String, Option<Value>, bool)> = Vec::new();
    if root_manifest.get("package").is_some() {
        todo.push((String::new(), Some(root_manifest.clone()), false));
    }
    if let Some(config) = &config {
        for dir in expand_members(&tree, config, "Cargo.toml")?
            .into_iter()
            .rev()
        {
            todo.push((dir, None, false));
        }
    }
    while let Some((dir, manifest, is_path_dep)) = todo.pop() {
        if members.contains_key(&dir) {
            continue;
        }
        if let Some(config) = &config {
            if config.is_excluded(&dir) {
                continue;
            }
        }
        let manifest = match manifest {
            Some(m) => m,
            None => match tree.read_manifest(&dir)? {
                Some(m) => m,
                // A path dependency that is not there fails the build, not the plan.
                None if is_path_dep => continue,
                None => return Err(WorkspaceError::NoManifest(dir)),
            },
        };
        let member = read_member(&tree, &manifest, &dir, config.as_ref())?;
        // Without a [workspace], the package is alone: its path dependencies are not members.
        if config.is_some() {
            for dep in path_dependencies(&manifest, &dir, config.as_ref()) {
                todo.push((dep, None, true));
            }
        }
        members.insert(dir, member);
        if members.len() > MAX_MEMBERS {
            return Err(WorkspaceError::TooManyMembers);
        }
    }
    Ok(Workspace {
        root: root.to_path_buf(),
        members: members.into_values().collect(),
    })
}

/// Finds the workspace root of the package whose manifest is `manifest` in a work tree, as
/// cargo does: the manifest itself if it has a `[workspace]`, the directory
/// `package.workspace` names, or the nearest ancestor whose manifest has a `[workspace]`
/// that does not exclude it; else the package's own directory.
pub fn find_root(manifest: &Path) -> Result<PathBuf> {
    let dir = manifest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir.canonicalize().map_err(|source| WorkspaceError::Read {
        path: manifest.display().to_string(),
        source: source.into(),
    })?;
    let read = |dir: &Path| Tree { root: dir }.read_manifest("");
    let own = read(&dir)?.ok_or_else(|| WorkspaceError::NoManifest(dir.display().to_string()))?;
    if own.get("workspace").is_some() {
        return Ok(dir);
    }
    if let Some(rel) = own.get("package").and_then(|p| p.get("workspace")) {
        let rel = rel.as_str().ok_or_else(|| WorkspaceError::Invalid {
            path: manifest.display().to_string(),
            message: "package.workspace must be a path".into(),
        })?;
        return Ok(dir.join(rel));
    }
    for ancestor in dir.ancestors().skip(1) {
        let Some(candidate) = read(ancestor)? else {
            continue;
        };
        let Some(ws) = candidate.get("workspace") else {
            continue;
        };
        let config = RootConfig {
            members: string_list(Some(ws), "members", "Cargo.toml")?,
            exclude: string_list(Some(ws), "exclude", "Cargo.toml")?,
            package: None,
            dependencies: None,
        };
        let rel = dir
            .strip_prefix(ancestor)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !config.is_excluded(&rel) {
            return Ok(ancestor.to_path_buf());
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    fn fixtures() -> Vec<Vec<(&'static str, &'static str)>> {
        vec![
            vec![
                ("Cargo.toml", "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
                ("src/main.rs", "fn main() {}\n"),
            ],
            vec![
                ("Cargo.toml", "[workspace]\nmembers = [\"crates/*\", \"tools/x?\"]\nexclude = [\"crates/skip\"]\nresolver = \"2\"\n[workspace.package]\nversion = \"2.3.4\"\nrust-version = \"1.80\"\n[workspace.dependencies]\nshared = { path = \"libs/shared\" }\n"),
                ("crates/a/Cargo.toml", "[package]\nname = \"a-cli\"\nversion.workspace = true\nrust-version.workspace = true\nedition = \"2021\"\n[dependencies]\nshared.workspace = true\n[target.'cfg(unix)'.dev-dependencies]\nhelper = { path = \"../../helper\" }\n"),
                ("crates/a/src/main.rs", "fn main() {}\n"),
                ("crates/a/src/bin/extra.rs", "fn main() {}\n"),
                ("crates/a/src/bin/multi/main.rs", "fn main() {}\n"),
                ("crates/a/src/bin/notes.txt", ""),
                ("crates/b/Cargo.toml", "[package]\nname = \"b\"\nversion = \"0.1.0\"\nedition = \"2021\"\nautobins = false\n[[bin]]\nname = \"bee\"\npath = \"src/bee.rs\"\n"),
                ("crates/b/src/bee.rs", "fn main() {}\n"),
                ("crates/b/src/main.rs", "fn main() {}\n"),
                ("crates/c/Cargo.toml", "[package]\nname = \"c\"\nedition = \"2021\"\n[[bin]]\nname = \"renamed\"\npath = \"src/main.rs\"\n[[bin]]\nname = \"extra\"\n"),
                ("crates/c/src/main.rs", "fn main() {}\n"),
                ("crates/c/src/bin/extra.rs", "fn main() {}\n"),
                ("crates/c/src/bin/other.rs", "fn main() {}\n"),
                ("crates/skip/Cargo.toml", "[package]\nname = \"skip\"\nversion = \"0.1.0\"\n"),
                ("crates/skip/src/main.rs", "fn main() {}\n"),
                ("crates/README", "not a member\n"),
                ("tools/xy/Cargo.toml", "[package]\nname = \"xy\"\nversion = \"0.9.0\"\n[lib]\npath = \"lib.rs\"\n"),
                ("tools/xy/lib.rs", ""),
                ("libs/shared/Cargo.toml", "[package]\nname = \"shared\"\nversion = \"0.5.0\"\n"),
                ("libs/shared/src/main.rs", "fn main() {}\n"),
                ("helper/Cargo.toml", "[package]\nname = \"helper\"\nversion = \"0.0.1\"\n"),
                ("helper/src/lib.rs", ""),
            ],
            vec![
                ("Cargo.toml", "[package]\nname = \"root\"\nversion = \"1.0.0\"\nedition = \"2021\"\n[workspace]\nmembers = [\"sub\"]\n[dependencies]\ninner = { path = \"inner\" }\n"),
                ("src/main.rs", "fn main() {}\n"),
                ("sub/Cargo.toml", "[package]\nname = \"sub\"\nversion = \"0.2.0\"\n"),
                ("sub/src/bin/s.rs", "fn main() {}\n"),
                ("inner/Cargo.toml", "[package]\nname = \"inner\"\nversion = \"0.3.0\"\n"),
                ("inner/src/main.rs", "fn main() {}\n"),
            ],
        ]
    }

    fn bins(files: &[(&str, &str)]) -> Vec<(String, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), files);
        read_workspace(dir.path())
            .unwrap()
            .bins()
            .into_iter()
            .map(|b| (b.package, b.version, b.bin))
            .collect()
    }

    fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        list.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    /// The answers `cargo metadata --no-deps` (cargo 1.85) gave for the same fixtures,
    /// which the code this module replaced listed.
    #[test]
    fn binaries_are_what_cargo_metadata_listed() {
        let fixtures = fixtures();
        assert_eq!(bins(&fixtures[0]), triples(&[("hello", "0.1.0", "hello")]));
        assert_eq!(
            bins(&fixtures[1]),
            triples(&[
                ("a-cli", "2.3.4", "a-cli"),
                ("a-cli", "2.3.4", "extra"),
                ("a-cli", "2.3.4", "multi"),
                ("b", "0.1.0", "bee"),
                ("c", "0.0.0", "extra"),
                ("c", "0.0.0", "other"),
                ("c", "0.0.0", "renamed"),
                ("shared", "0.5.0", "shared"),
            ])
        );
        assert_eq!(
            bins(&fixtures[2]),
            triples(&[
                ("inner", "0.3.0", "inner"),
                ("root", "1.0.0", "root"),
                ("sub", "0.2.0", "s"),
            ])
        );
        // Members as cargo counts them: path dependencies under the root (helper, a
        // library, through a target-specific dev-dependency) included, excluded ones not.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &fixtures[1]);
        let ws = read_workspace(dir.path()).unwrap();
        let names: Vec<&str> = ws.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a-cli", "b", "c", "helper", "shared", "xy"]);
        assert!(ws.has_member("helper", "0.0.1"));
        assert!(!ws.has_member("skip", "0.1.0"));
        assert_eq!(ws.members[0].rust_version.as_deref(), Some("1.80"));
    }

    /// The plan of examples/hello, byte for byte what the `cargo metadata` code produced
    /// (the input drive, hence the published root hashes, depend on it).
    #[test]
    fn the_plan_of_examples_hello_is_unchanged() {
        let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
        let bins = read_workspace(&hello).unwrap().bins();
        let selection = crate::project::select(&Default::default(), None, None).unwrap();
        let plan = crate::plan::Plan::new(&selection, 1_700_000_000, &bins).unwrap();
        assert_eq!(
            plan.to_env(),
            "CMBUILD_PLAN_VERSION='2'\nSOURCE_DATE_EPOCH='1700000000'\n\
             TARGETS='x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu'\n\
             CARGO_FLAGS=''\nBINS='hello'\n"
        );
    }

    #[test]
    fn hostile_or_broken_manifests_are_errors_not_panics() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("Cargo.toml", "[package\n")],
                "not a valid Cargo manifest",
            ),
            (
                &[("Cargo.toml", "[workspace]\nmembers = [\"../*\"]\n")],
                "outside the workspace root",
            ),
            (
                &[("Cargo.toml", "[workspace]\nmembers = [\"a/**\"]\n")],
                "cmbuild reads",
            ),
            (
                &[("Cargo.toml", "[workspace]\nmembers = [\"gone\"]\n")],
                "gone: no Cargo.toml",
            ),
            (
                &[("Cargo.toml", "[package]\nversion = \"1.0.0\"\n")],
                "package.name is missing",
            ),
            (
                &[(
                    "Cargo.toml",
                    "[package]\nname = \"p\"\nversion.workspace = true\n",
                )],
                "workspace.package.version is not set",
            ),
            (
                &[(
                    "Cargo.toml",
                    "[package]\nname = \"p\"\n[[bin]]\npath = \"x.rs\"\n",
                )],
                "needs a name",
            ),
            (
                &[(
                    "Cargo.toml",
                    "[package]\nname = \"p\"\nworkspace = \"..\"\n",
                )],
                "outside the project",
            ),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), files);
            let err = read_workspace(dir.path()).unwrap_err().to_string();
            assert!(err.contains(expected), "{files:?}: {err}");
        }
        // A manifest linked to a file outside the tree is refused, not read.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("Cargo.toml")).unwrap();
        assert!(matches!(
            read_workspace(dir.path()),
            Err(WorkspaceError::Read { .. })
        ));
        // A member directory linked to itself does not loop.
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[("Cargo.toml", "[workspace]\nmembers = [\"m/*\"]\n")],
        );
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("m/loop")).unwrap();
        assert!(read_workspace(dir.path()).is_err());
    }

    #[test]
    fn the_root_of_a_member_is_found_in_the_work_tree() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &fixtures()[1]);
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(
            find_root(&dir.path().join("crates/a/Cargo.toml")).unwrap(),
            root
        );
        assert_eq!(find_root(&dir.path().join("Cargo.toml")).unwrap(), root);
        // An excluded package is its own root.
        assert_eq!(
            find_root(&dir.path().join("crates/skip/Cargo.toml")).unwrap(),
            root.join("crates/skip")
        );
    }

    #[test]
    fn globs_match_like_cargo() {
        let m = |p: &str, n: &str| {
            glob_match(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*", "abc") && m("a*c", "abbbc") && m("x?", "xy") && m("*", ".hidden"));
        assert!(!m("x?", "x") && !m("a*c", "abd") && !m("abc", "ab"));
        assert!(m("a*b*c", "aXbYbZc") && !m("a*b*c", "aXbYb") && m("**", ""));
        // A hostile pattern does not take exponential time.
        let long = "a".repeat(4000);
        assert!(!m(&format!("{}b", "*a".repeat(100)), &long));
        assert_eq!(normalize("a/b", "../c"), Some("a/c".into()));
        assert_eq!(normalize("", "../c"), None);
        assert_eq!(normalize("a", "/etc"), None);
    }
}
