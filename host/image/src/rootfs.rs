//! A file tree built in memory from Debian packages, and the fixups their maintainer
//! scripts would have made.
//!
//! Nothing here reads the host file system: the tree holds paths, permission bits and
//! bytes only, so owners, times and directory order of the build machine cannot leak into
//! the images written from it. Packages are installed in the caller's (sorted) order and a
//! later package wins a path, as with dpkg's `--force-overwrite`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::deb::{Entry, Node};

/// Why a tree could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// {0:?} lies below a file that is not a directory
    #[error("{0:?} lies below a file that is not a directory")]
    NotADirectory(String),
    /// too many levels of symbolic links resolving {0:?}
    #[error("too many levels of symbolic links resolving {0:?}")]
    SymlinkLoop(String),
    /// hard link {path:?} points at {target:?}, which is not a file
    #[error("hard link {path:?} points at {target:?}, which is not a file")]
    DanglingHardlink {
        /// Path in the tree.
        path: String,
        /// The symlink target.
        target: String,
    },
    /// {0:?} is missing: is its package in the lock?
    #[error("{0:?} is missing: is its package in the lock?")]
    Missing(String),
}

/// What a tree path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Regular file; two paths sharing one `Arc` were hard links in their package.
    File(Arc<Vec<u8>>),
    /// A symbolic link to the target.
    Symlink(String),
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// What it is.
    pub kind: Kind,
}

/// A file tree keyed by relative path (`""` is the root, `usr/bin/cargo` a file).
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, TreeNode>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree holding only its root directory.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            String::new(),
            TreeNode {
                mode: 0o755,
                kind: Kind::Dir,
            },
        );
        Tree { nodes }
    }

    /// Every path of the tree, in byte order of the full path.
    pub fn nodes(&self) -> &BTreeMap<String, TreeNode> {
        &self.nodes
    }

    /// The node at exactly `path` (symbolic links are not followed).
    pub fn get(&self, path: &str) -> Option<&TreeNode> {
        self.nodes.get(path)
    }

    /// Create a directory (and its parents); an existing directory takes the new mode.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), RootfsError> {
        self.insert(path, mode, Kind::Dir)
    }

    /// Create or replace a regular file.
    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), RootfsError> {
        self.insert(path, mode, Kind::File(Arc::new(data)))
    }

    /// Create or replace a regular file whose bytes are shared: two paths given the same
    /// `Arc` are hard links of one file.
    pub fn add_shared_file(
        &mut self,
        path: &str,
        mode: u32,
        data: Arc<Vec<u8>>,
    ) -> Result<(), RootfsError> {
        self.insert(path, mode, Kind::File(data))
    }

    /// Create or replace a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), RootfsError> {
        self.insert(path, 0o777, Kind::Symlink(target.to_string()))
    }

    /// Install a package's entries in archive order; hard links share their target's bytes.
    pub fn install(&mut self, entries: &[Entry]) -> Result<(), RootfsError> {
        for entry in entries {
            let kind = match &entry.node {
                Node::Dir => Kind::Dir,
                Node::File(data) => Kind::File(data.clone()),
                Node::Symlink(target) => Kind::Symlink(target.clone()),
                Node::Hardlink(target) => {
                    let resolved = self.resolve(target, false)?;
                    match self.nodes.get(&resolved) {
                        Some(TreeNode {
                            kind: Kind::File(data),
                            ..
                        }) => Kind::File(data.clone()),
                        _ => {
                            return Err(RootfsError::DanglingHardlink {
                                path: entry.path.clone(),
                                target: target.clone(),
                            })
                        }
                    }
                }
            };
            self.insert(&entry.path, entry.mode, kind)?;
        }
        Ok(())
    }

    /// Resolve `path` through symbolic links in its directories (and, with `follow_last`,
    /// in its last component) to the path a lookup in the mounted tree would reach.
    /// Missing components are kept as they are.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String, RootfsError> {
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            current.push(part);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                break;
            }
            let joined = current.join("/");
            if let Some(TreeNode {
                kind: Kind::Symlink(target),
                ..
            }) = self.nodes.get(&joined)
            {
                hops += 1;
                if hops > 40 {
                    return Err(RootfsError::SymlinkLoop(path.to_string()));
                }
                current.pop();
                if target.starts_with('/') {
                    current.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
        }
        Ok(current.join("/"))
    }

    /// Put `kind` at `path`, creating missing parent directories (mode 0755) and following
    /// symbolic links in the parents, as unpacking onto a mounted tree would.
    fn insert(&mut self, path: &str, mode: u32, kind: Kind) -> Result<(), RootfsError> {
        let resolved = self.resolve(path, false)?;
        if resolved.is_empty() {
            // The root itself: only its mode can change.
            if kind == Kind::Dir {
                self.nodes.get_mut("").expect("root exists").mode = mode;
            }
            return Ok(());
        }
        self.ensure_parents(&resolved)?;
        match (self.nodes.get_mut(&resolved), &kind) {
            (Some(existing), Kind::Dir) if existing.kind == Kind::Dir => existing.mode = mode,
            // dpkg keeps a symlink where a later package ships a directory (how usrmerge
            // links survive); the contents then land in the link's target.
            (
                Some(TreeNode {
                    kind: Kind::Symlink(_),
                    ..
                }),
                Kind::Dir,
            ) => {
                let target = self.resolve(&resolved, true)?;
                if target != resolved && !self.nodes.contains_key(&target) {
                    self.ensure_parents(&target)?;
                    self.nodes.insert(target, TreeNode { mode, kind });
                }
            }
            (
                Some(TreeNode {
                    kind: Kind::Dir, ..
                }),
                _,
            ) => {
                // Replacing a directory by a file would orphan its children.
                self.remove_subtree(&resolved);
                self.nodes.insert(resolved, TreeNode { mode, kind });
            }
            _ => {
                self.nodes.insert(resolved, TreeNode { mode, kind });
            }
        }
        Ok(())
    }

    /// Make every ancestor of the (already resolved) `path` a directory.
    fn ensure_parents(&mut self, path: &str) -> Result<(), RootfsError> {
        let mut end = 0;
        while let Some(offset) = path[end..].find('/') {
            let parent = &path[..end + offset];
            match self.nodes.get(parent) {
                Some(TreeNode {
                    kind: Kind::Dir, ..
                }) => {}
                None => {
                    self.nodes.insert(
                        parent.to_string(),
                        TreeNode {
                            mode: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
                Some(_) => return Err(RootfsError::NotADirectory(path.to_string())),
            }
            end += offset + 1;
        }
        Ok(())
    }

    fn remove_subtree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, _)| key.clone())
            .collect();
        for key in doomed {
            self.nodes.remove(&key);
        }
    }

    /// The bytes of the regular file `path` reaches (symbolic links followed).
    pub fn read_file(&self, path: &str) -> Result<Arc<Vec<u8>>, RootfsError> {
        let resolved = self.resolve(path, true)?;
        match self.nodes.get(&resolved) {
            Some(TreeNode {
                kind: Kind::File(data),
                ..
            }) => Ok(data.clone()),
            _ => Err(RootfsError::Missing(path.to_string())),
        }
    }

    /// Whether `path` reaches an existing node (symbolic links followed).
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path, true)
            .map(|p| self.nodes.contains_key(&p))
            .unwrap_or(false)
    }
}

/// Where the guest's own scripts live inside the root image.
pub const CMBUILD_DIR: &str = "usr/lib/cmbuild";

/// Busybox applets the build driver relies on; they go to `usr/lib/cmbuild/bin`, which
/// the driver puts last on `PATH`, so Debian's own tools win wherever a package has them.
const DRIVER_APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "blockdev",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "devmem",
    "dirname",
    "echo",
    "env",
    "false",
    "find",
    "grep",
    "head",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mount",
    "mv",
    "poweroff",
    "printf",
    "rm",
    "sed",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "test",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "wc",
    "xargs",
];

/// `update-alternatives` links the packages' postinst scripts would register: the link,
/// then its candidates in Debian's priority order (the first present wins).
const ALTERNATIVES: &[(&str, &[&str])] = &[
    ("usr/bin/cc", &["usr/bin/gcc", "usr/bin/clang"]),
    ("usr/bin/c++", &["usr/bin/g++", "usr/bin/clang++"]),
    ("usr/bin/cpp", &["usr/bin/cpp-14", "usr/bin/clang-cpp"]),
];

/// Lay down the skeleton every root needs before packages: the merged-`/usr` links (Debian
/// trixie ships everything below `/usr`, and `base-files` would make these) and the mount
/// points the initramfs and the build driver use (the image itself is read-only).
pub fn add_skeleton(tree: &mut Tree) -> Result<(), RootfsError> {
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "root",
        "var",
    ] {
        tree.add_dir(dir, 0o755)?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        tree.add_symlink(link, target)?;
    }
    // Mount points: /init puts tmpfs on tmp, run, build and out (the drives' contents are
    // unpacked into build), so nothing in the image itself needs to be writable.
    for dir in ["proc", "sys", "dev", "run", "build", "out", "mnt"] {
        tree.add_dir(dir, 0o755)?;
    }
    tree.add_dir("tmp", 0o1777)?;
    Ok(())
}

/// Apply what the maintainer scripts would have done, after every package is installed:
/// alternatives, the minimal account database, and busybox applets for the driver.
pub fn apply_fixups(tree: &mut Tree) -> Result<(), RootfsError> {
    for (link, candidates) in ALTERNATIVES {
        if tree.exists(link) {
            continue;
        }
        if let Some(chosen) = candidates.iter().find(|c| tree.exists(c)) {
            tree.add_symlink(link, &format!("/{chosen}"))?;
        }
    }
    // cargo and rustc look the user up; builds run as root.
    tree.add_file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    )?;
    tree.add_file("etc/group", 0o644, b"root:x:0:\n".to_vec())?;
    tree.add_file("etc/hostname", 0o644, b"cmbuild\n".to_vec())?;
    if !tree.exists("usr/bin/busybox") {
        return Err(RootfsError::Missing("usr/bin/busybox".into()));
    }
    tree.add_dir(&format!("{CMBUILD_DIR}/bin"), 0o755)?;
    for applet in DRIVER_APPLETS {
        tree.add_symlink(&format!("{CMBUILD_DIR}/bin/{applet}"), "/usr/bin/busybox")?;
    }
    // The system shell: dash if a package brought it, else busybox.
    if !tree.exists("usr/bin/sh") {
        let shell = if tree.exists("usr/bin/dash") {
            "dash"
        } else {
            "busybox"
        };
        tree.add_symlink("usr/bin/sh", shell)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            node: Node::File(Arc::new(data.to_vec())),
        }
    }

    #[test]
    fn later_packages_win_and_hardlinks_share_bytes() {
        let mut tree = Tree::new();
        tree.install(&[file("etc/a", b"one")]).unwrap();
        tree.install(&[
            file("etc/a", b"two"),
            Entry {
                path: "etc/b".into(),
                mode: 0o644,
                node: Node::Hardlink("etc/a".into()),
            },
        ])
        .unwrap();
        assert_eq!(&**tree.read_file("etc/a").unwrap(), b"two");
        let (Kind::File(a), Kind::File(b)) = (
            &tree.get("etc/a").unwrap().kind,
            &tree.get("etc/b").unwrap().kind,
        ) else {
            panic!("not files")
        };
        assert!(Arc::ptr_eq(a, b));
        // Parents were created on the way.
        assert_eq!(tree.get("etc").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn usrmerge_links_redirect_package_contents() {
        let mut tree = Tree::new();
        add_skeleton(&mut tree).unwrap();
        tree.install(&[
            Entry {
                path: "lib".into(),
                mode: 0o755,
                node: Node::Dir,
            },
            file("lib/x86_64-linux-gnu/libc.so.6", b"elf"),
        ])
        .unwrap();
        assert_eq!(
            tree.get("lib").unwrap().kind,
            Kind::Symlink("usr/lib".into())
        );
        assert!(tree.get("usr/lib/x86_64-linux-gnu/libc.so.6").is_some());
        assert!(tree.get("lib/x86_64-linux-gnu/libc.so.6").is_none());
        assert_eq!(
            tree.resolve("lib64/../lib/x86_64-linux-gnu/libc.so.6", true)
                .unwrap(),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
    }

    #[test]
    fn symlink_loops_are_reported() {
        let mut tree = Tree::new();
        tree.add_symlink("a", "b").unwrap();
        tree.add_symlink("b", "/a").unwrap();
        assert!(matches!(
            tree.resolve("a/x", true),
            Err(RootfsError::SymlinkLoop(_))
        ));
    }

    #[test]
    fn fixups_pick_alternatives_in_priority_order() {
        let mut tree = Tree::new();
        add_skeleton(&mut tree).unwrap();
        tree.add_file("usr/bin/busybox", 0o755, b"bb".to_vec())
            .unwrap();
        tree.add_file("usr/lib/llvm-19/bin/clang", 0o755, b"c".to_vec())
            .unwrap();
        tree.add_symlink("usr/bin/clang", "../lib/llvm-19/bin/clang")
            .unwrap();
        apply_fixups(&mut tree).unwrap();
        assert_eq!(
            tree.get("usr/bin/cc").unwrap().kind,
            Kind::Symlink("/usr/bin/clang".into())
        );
        assert!(tree.get("usr/bin/c++").is_none(), "no candidate, no link");
        assert_eq!(&**tree.read_file("bin/sh").unwrap(), b"bb");

        tree.add_file("usr/bin/gcc", 0o755, b"g".to_vec()).unwrap();
        tree.nodes.remove("usr/bin/cc");
        apply_fixups(&mut tree).unwrap();
        assert_eq!(
            tree.get("usr/bin/cc").unwrap().kind,
            Kind::Symlink("/usr/bin/gcc".into())
        );
    }

    #[test]
    fn file_replacing_directory_drops_its_children() {
        let mut tree = Tree::new();
        tree.install(&[file("a/b/c", b"x")]).unwrap();
        tree.install(&[file("a/b", b"y")]).unwrap();
        assert!(tree.get("a/b/c").is_none());
        assert!(matches!(
            tree.install(&[file("a/b/d", b"z")]),
            Err(RootfsError::NotADirectory(_))
        ));
    }
}
