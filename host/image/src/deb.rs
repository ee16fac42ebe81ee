//! Debian package (`.deb`) extraction, in Rust and without dpkg.
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and `data.tar.*`;
//! only the data member matters for the image (maintainer scripts are replaced by the
//! fixups in `rootfs`). The data tar may be compressed with xz, zstd or gzip, or not at all.
//! Paths are normalised to relative, `/`-separated form; absolute paths and `..` components
//! are refused because a hostile package must not be able to write outside its tree.

use std::io::Read;
use std::sync::Arc;

use cmbuild_store::tarball::{Limits, TarError, TarReader};

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
    /// reading the data archive
    #[error("reading the data archive")]
    Tar(#[from] TarError),
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

/// Caps on a package's data archive: far above Debian's largest packages (the LLVM and
/// rustc libraries unpack to a few hundred MiB), far below what would exhaust the host.
pub const DATA_LIMITS: Limits = Limits {
    max_total: 2 << 30,
    max_entry: 1 << 30,
    max_long_name: 4096,
    max_pax: 64 << 10,
};

/// Reads the entries of an (uncompressed) tar stream within [`DATA_LIMITS`]; paths are
/// normalised and checked by [`normalize_path`].
pub fn read_tar(reader: impl Read) -> Result<Vec<Entry>, DebError> {
    let mut archive = TarReader::new(reader, DATA_LIMITS);
    let mut entries = Vec::new();
    while let Some(member) = archive.next_entry()? {
        let path = normalize_path(&member.path)?;
        let node = match member.kind {
            b'5' => Node::Dir,
            0 | b'0' | b'7' => Node::File(Arc::new(member.data)),
            b'2' => {
                let target = String::from_utf8(member.link)
                    .map_err(|_| DebError::UnsafePath(path.clone()))?;
                Node::Symlink(target)
            }
            b'1' => Node::Hardlink(normalize_path(&member.link)?),
            // Anything else (devices, FIFOs, global headers) has no business in a
            // package's data.
            other => return Err(DebError::UnsupportedEntry { path, kind: other }),
        };
        entries.push(Entry {
            path,
            mode: member.mode,
            node,
        });
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
    pub(crate) fn make_tar(
        files: &[(&str, &[u8], u32)],
        links: &[(&str, tar::EntryType, &str)],
    ) -> Vec<u8> {
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
    pub(crate) fn make_deb(data_name: &str, data: &[u8]) -> Vec<u8> {
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
    fn claimed_sizes_are_checked_before_any_buffer_is_sized() {
        let mut huge = tar::Header::new_gnu();
        huge.as_old_mut().name[..5].copy_from_slice(b"./big");
        huge.set_mode(0o644);
        huge.set_size(1 << 62);
        huge.set_cksum();
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(512 << 20);
        long.set_cksum();
        for header in [huge, long] {
            let data = [header.as_bytes().as_slice(), &[b'a'; 4096]].concat();
            let err = extract_deb(&make_deb("data.tar", &data)).unwrap_err();
            assert!(
                matches!(err, DebError::Tar(TarError::TooLarge { .. })),
                "{err:?}"
            );
        }
        // A member whose ar header claims more than the package holds.
        let mut deb = make_deb("data.tar", &make_tar(&[], &[]));
        let at = deb.len() - make_tar(&[], &[]).len() - 60 + 48;
        deb[at..at + 10].copy_from_slice(b"9999999999");
        assert!(matches!(extract_deb(&deb), Err(DebError::NotADeb(_))));
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

/// The data reader against the `tar` crate on every `.deb` in `$CMBUILD_CACHE/debian/debs`
/// (run with `cargo test -p cmbuild-image -- --ignored same_entries`).
#[cfg(test)]
mod differential {
    use super::*;

    #[test]
    #[ignore = "reads the Debian package cache"]
    fn same_entries_as_the_tar_crate_on_cached_debs() {
        let dir = crate::http::default_cache_dir()
            .unwrap()
            .join("debian/debs");
        let mut checked = 0;
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let deb = std::fs::read(&path).unwrap();
            let ours = extract_deb(&deb).unwrap();
            let (name, data) = find_data_member(&deb).unwrap();
            let reader: Box<dyn Read> = match name.as_str() {
                "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(data)),
                "data.tar.zst" => Box::new(ruzstd::decoding::StreamingDecoder::new(data).unwrap()),
                "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(data)),
                _ => Box::new(data),
            };
            let mut theirs = Vec::new();
            for member in tar::Archive::new(reader).entries().unwrap() {
                let mut member = member.unwrap();
                let path = normalize_path(&member.path_bytes()).unwrap();
                let mode = member.header().mode().unwrap() & 0o7777;
                let node = match member.header().entry_type() {
                    tar::EntryType::Directory => Node::Dir,
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let mut data = Vec::new();
                        member.read_to_end(&mut data).unwrap();
                        Node::File(Arc::new(data))
                    }
                    tar::EntryType::Symlink => Node::Symlink(
                        String::from_utf8(member.link_name_bytes().unwrap().into_owned()).unwrap(),
                    ),
                    tar::EntryType::Link => {
                        Node::Hardlink(normalize_path(&member.link_name_bytes().unwrap()).unwrap())
                    }
                    other => panic!("{other:?}"),
                };
                theirs.push(Entry { path, mode, node });
            }
            assert!(ours == theirs, "{}", path.display());
            checked += 1;
        }
        assert!(checked > 0);
        eprintln!("{checked} packages read identically");
    }
}
