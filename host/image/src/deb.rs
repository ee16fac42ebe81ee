//! Debian package (`.deb`) extraction, in Rust and without dpkg.
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and `data.tar.*`;
//! only the data member matters for the image (maintainer scripts are replaced by the
//! fixups in `rootfs`). The data tar may be compressed with xz, zstd or gzip, or not at all.
//! Paths are normalised to relative, `/`-separated form; absolute paths and `..` components
//! are refused because a hostile package must not be able to write outside its tree.

use std::io::Read;
use std::sync::Arc;

/// Why a package could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// not a Debian package: {0}
    #[error("not a Debian package: {0}")]
    NotADeb(String),
    /// the package has no data.tar member
    #[error("the package has no data.tar member")]
    NoData,
    /// unsupported data member {0:?}
    #[error("unsupported data member {0:?}")]
    UnsupportedCompression(String),
    /// reading the data archive: {0}
    #[error("reading the data archive: {0}")]
    Io(#[from] std::io::Error),
    /// unsafe path {0:?} in the data archive
    #[error("unsafe path {0:?} in the data archive")]
    UnsafePath(String),
    /// unsupported tar entry type {kind:?} for {path:?}
    #[error("unsupported tar entry type {kind:?} for {path:?}")]
    UnsupportedEntry {
        /// The path concerned.
        path: String,
        /// The tar entry type byte.
        kind: u8,
    },
}

/// What a path in a package is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its bytes (shared, so hard links and merges stay cheap).
    File(Arc<Vec<u8>>),
    /// A symbolic link with its target, verbatim.
    Symlink(String),
    /// A hard link to another path of the same archive (normalised like any member path).
    Hardlink(String),
}

/// One member of a package's data archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path without a leading `./` or `/`; the empty string is the root.
    pub path: String,
    /// Permission bits (`0o7777`), without the file type.
    pub mode: u32,
    /// What it is.
    pub node: Node,
}

/// Extract every member of the package's data archive, in archive order.
pub fn extract_deb(deb: &[u8]) -> Result<Vec<Entry>, DebError> {
    let (name, data) = find_data_member(deb)?;
    let reader: Box<dyn Read + '_> = if name == "data.tar" {
        Box::new(data)
    } else if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(data))
    } else if name.ends_with(".zst") {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|err| DebError::Io(std::io::Error::other(err.to_string())))?,
        )
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        return Err(DebError::UnsupportedCompression(name));
    };
    read_tar(reader)
}

/// Walk the `ar` members and return the name and bytes of `data.tar*`.
fn find_data_member(deb: &[u8]) -> Result<(String, &[u8]), DebError> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !deb.starts_with(MAGIC) {
        return Err(DebError::NotADeb("missing ar magic".into()));
    }
    let mut pos = MAGIC.len();
    while pos < deb.len() {
        let header = deb
            .get(pos..pos + 60)
            .ok_or_else(|| DebError::NotADeb("truncated member header".into()))?;
        if &header[58..60] != b"`\n" {
            return Err(DebError::NotADeb("bad member header".into()));
        }
        // GNU ar ends names with '/'; dpkg pads them with spaces.
        let name = String::from_utf8_lossy(&header[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| DebError::NotADeb(format!("bad size of member {name:?}")))?;
        let start = pos + 60;
        let body = deb
            .get(start..start + size)
            .ok_or_else(|| DebError::NotADeb(format!("member {name:?} is truncated")))?;
        if name.starts_with("data.tar") {
            return Ok((name, body));
        }
        // Members are aligned to even offsets.
        pos = start + size + (size & 1);
    }
    Err(DebError::NoData)
}

/// Read a tar stream into entries with normalised paths.
pub fn read_tar(reader: impl Read) -> Result<Vec<Entry>, DebError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for member in archive.entries()? {
        let mut member = member?;
        let path = normalize_path(&member.path_bytes())?;
        let mode = member.header().mode()? & 0o7777;
        let kind = member.header().entry_type();
        let node = match kind {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(member.size() as usize);
                member.read_to_end(&mut data)?;
                Node::File(Arc::new(data))
            }
            tar::EntryType::Symlink => {
                let target = member.link_name_bytes().unwrap_or_default();
                let target = String::from_utf8(target.into_owned())
                    .map_err(|_| DebError::UnsafePath(path.clone()))?;
                Node::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = member.link_name_bytes().unwrap_or_default();
                Node::Hardlink(normalize_path(&target)?)
            }
            // Extended headers are consumed by the tar reader itself; anything else
            // (devices, FIFOs) has no business in a package's data.
            other => {
                return Err(DebError::UnsupportedEntry {
                    path,
                    kind: other.as_byte(),
                })
            }
        };
        entries.push(Entry { path, mode, node });
    }
    Ok(entries)
}

/// Normalise a member path to relative form, refusing anything that could leave the tree.
pub fn normalize_path(raw: &[u8]) -> Result<String, DebError> {
    let text = std::str::from_utf8(raw).map_err(|_| DebError::UnsafePath(format!("{raw:?}")))?;
    if text.starts_with('/') {
        return Err(DebError::UnsafePath(text.to_string()));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(DebError::UnsafePath(text.to_string())),
            _ if part.contains('\0') => return Err(DebError::UnsafePath(text.to_string())),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a tar in memory; `links` are (path, type, target).
    fn make_tar(files: &[(&str, &[u8], u32)], links: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        builder.append_data(&mut dir, "./usr/", &[][..]).unwrap();
        for (path, data, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, *data).unwrap();
        }
        for (path, kind, target) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Wrap a data tar into an ar container the way dpkg-deb lays it out.
    fn make_deb(data_name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, body) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar.xz", &b"xx"[..]),
            (data_name, data),
        ] {
            let header = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                body.len()
            );
            assert_eq!(header.len(), 60);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    /// `data` compressed as a `.xz` stream (for tests of what reads them).
    pub(crate) fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        xz2::read::XzEncoder::new(data, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn extracts_files_links_and_modes_from_xz_data() {
        let tar = make_tar(
            &[
                ("./usr/bin/tool", b"#!/bin/sh\n", 0o4755),
                ("./usr/share/a", b"abc", 0o644),
            ],
            &[
                ("./usr/bin/alias", tar::EntryType::Symlink, "tool"),
                ("./usr/share/b", tar::EntryType::Link, "./usr/share/a"),
            ],
        );
        let entries = extract_deb(&make_deb("data.tar.xz", &xz(&tar))).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/bin/tool",
                "usr/share/a",
                "usr/bin/alias",
                "usr/share/b"
            ]
        );
        assert_eq!(entries[0].node, Node::Dir);
        assert_eq!(entries[1].mode, 0o4755);
        assert_eq!(
            entries[1].node,
            Node::File(Arc::new(b"#!/bin/sh\n".to_vec()))
        );
        assert_eq!(entries[3].node, Node::Symlink("tool".into()));
        assert_eq!(entries[4].node, Node::Hardlink("usr/share/a".into()));
    }

    #[test]
    fn extracts_gzip_and_plain_data() {
        let tar = make_tar(&[("./etc/x", b"odd", 0o600)], &[]);
        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(&tar[..], flate2::Compression::default())
            .read_to_end(&mut gz)
            .unwrap();
        for (name, body) in [("data.tar.gz", gz), ("data.tar", tar.clone())] {
            let entries = extract_deb(&make_deb(name, &body)).unwrap();
            assert_eq!(entries[1].path, "etc/x");
            assert_eq!(entries[1].mode, 0o600);
        }
    }

    #[test]
    fn refuses_parent_and_absolute_paths() {
        assert!(matches!(
            normalize_path(b"./a/../../etc"),
            Err(DebError::UnsafePath(_))
        ));
        assert!(matches!(
            normalize_path(b"/etc/passwd"),
            Err(DebError::UnsafePath(_))
        ));
        assert_eq!(normalize_path(b"./a//b/./c").unwrap(), "a/b/c");
        // A hard link pointing outside is refused too, not only member names.
        let tar = make_tar(&[], &[("./x", tar::EntryType::Link, "../../etc/shadow")]);
        assert!(matches!(
            extract_deb(&make_deb("data.tar", &tar)),
            Err(DebError::UnsafePath(_))
        ));
    }

    #[test]
    fn rejects_non_deb_and_missing_data() {
        assert!(matches!(
            extract_deb(b"PK\x03\x04"),
            Err(DebError::NotADeb(_))
        ));
        let mut deb = b"!<arch>\n".to_vec();
        deb.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "debian-binary", 0, 0, 0, 100644, 4
            )
            .as_bytes(),
        );
        deb.extend_from_slice(b"2.0\n");
        assert!(matches!(extract_deb(&deb), Err(DebError::NoData)));
    }
}
