//! A reproducible `newc` cpio writer (the initramfs format the kernel unpacks).
//!
//! Entries come from a [`Tree`] in byte order of their paths (so parents precede children),
//! with sequential inode numbers, root ownership and one fixed mtime; hard links are written
//! as separate copies so no inode-sharing rules of the unpacker matter. Device nodes, which
//! packages never carry, are added by the caller (the kernel needs `/dev/console` before
//! `/init` can mount devtmpfs).

use std::io::Write;

use crate::rootfs::{Kind, Tree};

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// writing the cpio archive: {0}
    #[error("writing the cpio archive: {0}")]
    Io(#[from] std::io::Error),
    /// {0:?} is too large for a newc archive
    #[error("{0:?} is too large for a newc archive")]
    TooLarge(String),
}

/// A character device node to add after the tree's entries.
#[derive(Debug, Clone)]
pub struct CharDevice {
    /// Path inside the archive.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
}

/// Write `tree` (without its root) and `devices` as a newc archive with trailer.
pub fn write_cpio(
    tree: &Tree,
    devices: &[CharDevice],
    mtime: u32,
    out: &mut impl Write,
) -> Result<(), CpioError> {
    let mut ino = 0u32;
    let mut offset = 0usize;
    for (path, node) in tree.nodes().iter().filter(|(p, _)| !p.is_empty()) {
        ino += 1;
        let (mode, nlink, data): (u32, u32, &[u8]) = match &node.kind {
            Kind::Dir => (0o040000 | node.mode, 2, &[]),
            Kind::File(data) => (0o100000 | node.mode, 1, data),
            Kind::Symlink(target) => (0o120777, 1, target.as_bytes()),
        };
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.clone()))?;
        let header = Header {
            ino,
            mode,
            nlink,
            mtime,
            size,
            rdev: (0, 0),
        };
        write_entry(out, &mut offset, &header, path, data)?;
    }
    for device in devices {
        ino += 1;
        let header = Header {
            ino,
            mode: 0o020000 | device.mode,
            nlink: 1,
            mtime,
            size: 0,
            rdev: (device.major, device.minor),
        };
        write_entry(out, &mut offset, &header, &device.path, &[])?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
    };
    write_entry(out, &mut offset, &trailer, "TRAILER!!!", &[])?;
    out.flush()?;
    Ok(())
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

fn write_entry(
    out: &mut impl Write,
    offset: &mut usize,
    header: &Header,
    name: &str,
    data: &[u8],
) -> Result<(), CpioError> {
    let name_size = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check.
    let text = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        header.ino,
        header.mode,
        0,
        0,
        header.nlink,
        header.mtime,
        header.size,
        0,
        0,
        header.rdev.0,
        header.rdev.1,
        name_size,
        0
    );
    out.write_all(text.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    *offset += text.len() + name_size;
    pad(out, offset)?;
    out.write_all(data)?;
    *offset += data.len();
    pad(out, offset)?;
    Ok(())
}

/// Header+name and data are each padded to a multiple of four bytes.
fn pad(out: &mut impl Write, offset: &mut usize) -> Result<(), CpioError> {
    let padding = offset.next_multiple_of(4) - *offset;
    out.write_all(&[0u8; 3][..padding])?;
    *offset += padding;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_aligned_sorted_and_ends_with_trailer() {
        let mut tree = Tree::new();
        tree.add_file("init", 0o755, b"#!/bin/sh\n".to_vec())
            .unwrap();
        tree.add_symlink("bin/sh", "busybox").unwrap();
        let devices = [CharDevice {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        }];
        let mut out = Vec::new();
        write_cpio(&tree, &devices, 0, &mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        // Walk the archive back.
        let mut pos = 0;
        let mut names = Vec::new();
        loop {
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&out[pos + 6 + i * 8..pos + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap() as usize
            };
            assert_eq!(&out[pos..pos + 6], b"070701");
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&out[pos + 110..pos + 110 + namesize - 1])
                .unwrap()
                .to_string();
            if name == "dev/console" {
                assert_eq!((mode, field(9), field(10)), (0o020600, 5, 1));
            }
            if name == "bin/sh" {
                let data_at = (pos + 110 + namesize).next_multiple_of(4);
                assert_eq!(&out[data_at..data_at + size], b"busybox");
            }
            pos = ((pos + 110 + namesize).next_multiple_of(4) + size).next_multiple_of(4);
            names.push(name);
            if names.last().unwrap() == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(pos, out.len());
        assert_eq!(
            names,
            ["bin", "bin/sh", "init", "dev/console", "TRAILER!!!"]
        );
    }
}
