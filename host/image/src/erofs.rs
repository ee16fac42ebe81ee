//! A reproducible EROFS image writer (uncompressed, 4 KiB blocks).
//!
//! The on-disk format follows the kernel's `Documentation/filesystems/erofs.rst`: a
//! 128-byte superblock at byte 1024, a metadata area of 32-byte compact inodes (each
//! optionally followed by its file's last partial block, "tail packing"), then plain data
//! blocks. Everything the output depends on comes from the tree: inodes are laid out in
//! byte order of their full paths, directory entries in byte order of their names, every
//! inode is owned by root and carries no time of its own (compact inodes take the
//! superblock's build time, which the caller fixes). Files that were hard links in their
//! package share their data blocks.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use crate::rootfs::{Kind, Tree};

const BLOCK: usize = 4096;
const BLOCK_BITS: u8 = 12;
const SUPER_OFFSET: usize = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
const INODE_SIZE: usize = 32;
const DIRENT_SIZE: usize = 12;
/// Tails up to this size are packed behind their inode; bigger ones get a block, because
/// packing them would waste the rest of the metadata block they do not fit in.
const MAX_INLINE_TAIL: usize = 2048;
/// The metadata area starts at block 1, right after the superblock's block.
const META_BLKADDR: u32 = 1;

const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;

const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const FT_SYMLINK: u8 = 7;

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// writing the EROFS image: {0}
    #[error("writing the EROFS image: {0}")]
    Io(#[from] std::io::Error),
    /// {0:?} is 4 GiB or larger, which compact inodes cannot describe
    #[error("{0:?} is 4 GiB or larger, which compact inodes cannot describe")]
    FileTooLarge(String),
    /// {0:?} has too many subdirectories
    #[error("{0:?} has too many subdirectories")]
    TooManyLinks(String),
    /// the image exceeds 2^32 blocks
    #[error("the image exceeds 2^32 blocks")]
    ImageTooLarge,
    /// the name {0:?} is too long
    #[error("the name {0:?} is too long")]
    NameTooLong(String),
}

/// What the superblock says beyond the tree itself.
#[derive(Debug, Clone)]
pub struct ErofsOptions {
    /// Fixed volume UUID (a random one would make every build differ).
    pub uuid: [u8; 16],
    /// Volume label: its first 15 bytes are written (Linux wants the 16-byte field
    /// NUL-terminated).
    pub volume_name: String,
    /// Seconds since the epoch reported as every inode's time.
    pub build_time: u64,
}

/// Where an inode's data lives.
enum Payload<'a> {
    Shared(&'a Arc<Vec<u8>>),
    Owned(Vec<u8>),
}

impl Payload<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Shared(data) => data,
            Payload::Owned(data) => data,
        }
    }
}

/// One inode as planned before anything is written.
struct Plan<'a> {
    path: &'a str,
    mode: u32,
    nlink: u16,
    size: usize,
    inline_tail: bool,
    /// Byte offset of the inode in the image.
    offset: usize,
    /// First data block (0 when the inode has no full blocks).
    blkaddr: u32,
    /// Number of data blocks (full blocks, plus a padded tail if not inline).
    blocks: usize,
    /// Data blocks are written by the first inode of a shared file only.
    writes_blocks: bool,
}

/// Write `tree` as an EROFS image; returns the number of bytes written.
pub fn write_erofs(
    tree: &Tree,
    options: &ErofsOptions,
    out: &mut impl Write,
) -> Result<u64, ErofsError> {
    let nodes = tree.nodes();
    // Children of each directory, already in name order because full paths sharing a
    // parent prefix sort like their last components.
    let mut children: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for path in nodes.keys().filter(|p| !p.is_empty()) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        children
            .entry(parent)
            .or_default()
            .push((name, path.as_str()));
    }
    // Directory entries sort by raw name bytes, "." and ".." among them.
    let dir_names = |path: &str| -> Vec<(Vec<u8>, String, u8)> {
        let mut names: Vec<(Vec<u8>, String, u8)> = vec![
            (b".".to_vec(), path.to_string(), FT_DIR),
            (b"..".to_vec(), parent_of(path).to_string(), FT_DIR),
        ];
        for (name, child) in children.get(path).map(Vec::as_slice).unwrap_or(&[]) {
            let file_type = match nodes[*child].kind {
                Kind::Dir => FT_DIR,
                Kind::File(_) => FT_REG_FILE,
                Kind::Symlink(_) => FT_SYMLINK,
            };
            names.push((name.as_bytes().to_vec(), child.to_string(), file_type));
        }
        names.sort();
        names
    };

    // Pass 1: sizes and inode offsets.
    let mut plans: Vec<Plan> = Vec::with_capacity(nodes.len());
    let mut index_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut cursor = META_BLKADDR as usize * BLOCK;
    for (path, node) in nodes {
        let (mode, size, nlink) = match &node.kind {
            Kind::Dir => {
                let names = dir_names(path);
                let subdirs = names.iter().filter(|n| n.2 == FT_DIR).count();
                let nlink =
                    u16::try_from(subdirs).map_err(|_| ErofsError::TooManyLinks(path.clone()))?;
                (S_IFDIR | node.mode, dir_size(&names)?, nlink)
            }
            Kind::File(data) => (S_IFREG | node.mode, data.len(), 1),
            Kind::Symlink(target) => (S_IFLNK | 0o777, target.len(), 1),
        };
        if u32::try_from(size).is_err() {
            return Err(ErofsError::FileTooLarge(path.clone()));
        }
        let tail = size % BLOCK;
        let inline_tail = tail > 0 && tail <= MAX_INLINE_TAIL;
        if inline_tail && cursor % BLOCK + INODE_SIZE + tail > BLOCK {
            // The kernel reads an inode and its tail from one block.
            cursor = cursor.next_multiple_of(BLOCK);
        }
        let blocks = if inline_tail {
            size / BLOCK
        } else {
            size.div_ceil(BLOCK)
        };
        index_of.insert(path, plans.len());
        plans.push(Plan {
            path,
            mode,
            nlink,
            size,
            inline_tail,
            offset: cursor,
            blkaddr: 0,
            blocks,
            writes_blocks: false,
        });
        let used = INODE_SIZE + if inline_tail { tail } else { 0 };
        cursor += used.next_multiple_of(INODE_SIZE);
    }
    let meta_end = cursor.next_multiple_of(BLOCK);

    // Pass 2: data blocks, in inode order; a shared file's blocks are written once.
    let mut next_block = meta_end / BLOCK;
    let mut shared_at: BTreeMap<usize, u32> = BTreeMap::new();
    for plan in &mut plans {
        if plan.blocks == 0 {
            continue;
        }
        if let Kind::File(data) = &nodes[plan.path].kind {
            let key = Arc::as_ptr(data) as usize;
            if let Some(&blkaddr) = shared_at.get(&key) {
                plan.blkaddr = blkaddr;
                continue;
            }
            shared_at.insert(key, block_addr(next_block)?);
        }
        plan.blkaddr = block_addr(next_block)?;
        plan.writes_blocks = true;
        next_block += plan.blocks;
    }
    let total_blocks = block_addr(next_block)?;
    let nid_of = |path: &str| -> u64 {
        ((plans[index_of[path]].offset - META_BLKADDR as usize * BLOCK) / INODE_SIZE) as u64
    };

    // Pass 3: the metadata area in memory (small), the data blocks streamed.
    let mut head = vec![0u8; meta_end];
    write_superblock(
        &mut head,
        options,
        nid_of(""),
        plans.len() as u64,
        total_blocks,
    )?;
    let mut payloads: Vec<Payload> = Vec::with_capacity(plans.len());
    for (ino, plan) in plans.iter().enumerate() {
        let payload = match &nodes[plan.path].kind {
            Kind::Dir => {
                let names: Vec<(Vec<u8>, u64, u8)> = dir_names(plan.path)
                    .into_iter()
                    .map(|(name, target, ft)| (name, nid_of(&target), ft))
                    .collect();
                Payload::Owned(dir_bytes(&names))
            }
            Kind::File(data) => Payload::Shared(data),
            Kind::Symlink(target) => Payload::Owned(target.as_bytes().to_vec()),
        };
        debug_assert_eq!(payload.bytes().len(), plan.size);
        let layout = if plan.inline_tail {
            LAYOUT_FLAT_INLINE
        } else {
            LAYOUT_FLAT_PLAIN
        };
        let inode = &mut head[plan.offset..plan.offset + INODE_SIZE];
        inode[0..2].copy_from_slice(&(layout << 1).to_le_bytes());
        inode[4..6].copy_from_slice(&(plan.mode as u16).to_le_bytes());
        inode[6..8].copy_from_slice(&plan.nlink.to_le_bytes());
        inode[8..12].copy_from_slice(&(plan.size as u32).to_le_bytes());
        inode[16..20].copy_from_slice(&plan.blkaddr.to_le_bytes());
        inode[20..24].copy_from_slice(&(ino as u32 + 1).to_le_bytes());
        // uid, gid and the reserved words stay zero: everything belongs to root.
        if plan.inline_tail {
            let tail = &payload.bytes()[plan.size / BLOCK * BLOCK..];
            let at = plan.offset + INODE_SIZE;
            head[at..at + tail.len()].copy_from_slice(tail);
        }
        payloads.push(payload);
    }
    out.write_all(&head)?;
    let mut written = head.len() as u64;
    let zeros = [0u8; BLOCK];
    for (plan, payload) in plans.iter().zip(&payloads) {
        if !plan.writes_blocks {
            continue;
        }
        let bytes = payload.bytes();
        let full = if plan.inline_tail {
            plan.size / BLOCK * BLOCK
        } else {
            plan.size
        };
        out.write_all(&bytes[..full])?;
        let pad = plan.blocks * BLOCK - full;
        out.write_all(&zeros[..pad])?;
        written += (plan.blocks * BLOCK) as u64;
    }
    out.flush()?;
    Ok(written)
}

/// Convenience for tests and small trees: the whole image in memory.
pub fn erofs_bytes(tree: &Tree, options: &ErofsOptions) -> Result<Vec<u8>, ErofsError> {
    let mut out = Vec::new();
    write_erofs(tree, options, &mut out)?;
    Ok(out)
}

fn block_addr(block: usize) -> Result<u32, ErofsError> {
    u32::try_from(block).map_err(|_| ErofsError::ImageTooLarge)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(parent, _)| parent)
        .unwrap_or("")
}

fn write_superblock(
    head: &mut [u8],
    options: &ErofsOptions,
    root_nid: u64,
    inodes: u64,
    blocks: u32,
) -> Result<(), ErofsError> {
    let root_nid = u16::try_from(root_nid).map_err(|_| ErofsError::ImageTooLarge)?;
    let sb = &mut head[SUPER_OFFSET..SUPER_OFFSET + 128];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    // checksum (4..8) and feature_compat (8..12) stay zero: no superblock checksum.
    sb[12] = BLOCK_BITS;
    sb[14..16].copy_from_slice(&root_nid.to_le_bytes());
    sb[16..24].copy_from_slice(&inodes.to_le_bytes());
    sb[24..32].copy_from_slice(&options.build_time.to_le_bytes());
    sb[36..40].copy_from_slice(&blocks.to_le_bytes());
    sb[40..44].copy_from_slice(&META_BLKADDR.to_le_bytes());
    sb[48..64].copy_from_slice(&options.uuid);
    // Linux refuses a volume name without a NUL terminator inside its 16 bytes.
    let name = options.volume_name.as_bytes();
    let len = name.len().min(15);
    sb[64..64 + len].copy_from_slice(&name[..len]);
    Ok(())
}

/// Split sorted entries into directory blocks: each block holds its dirents, then their
/// names, and must fit 4 KiB; returns the entry count of each block.
fn dir_blocks<T>(names: &[(Vec<u8>, T, u8)]) -> Result<Vec<usize>, ErofsError> {
    let mut blocks = Vec::new();
    let mut used = 0;
    let mut count = 0;
    for (name, _, _) in names {
        let need = DIRENT_SIZE + name.len();
        if need > BLOCK || name.len() > 255 {
            return Err(ErofsError::NameTooLong(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        if used + need > BLOCK {
            blocks.push(count);
            used = 0;
            count = 0;
        }
        used += need;
        count += 1;
    }
    if count > 0 {
        blocks.push(count);
    }
    Ok(blocks)
}

/// The byte size of a directory: full blocks for all but the last, which is exact.
fn dir_size<T>(names: &[(Vec<u8>, T, u8)]) -> Result<usize, ErofsError> {
    let blocks = dir_blocks(names)?;
    let mut size = (blocks.len() - 1) * BLOCK;
    let last = &names[names.len() - blocks[blocks.len() - 1]..];
    size += last
        .iter()
        .map(|(n, _, _)| DIRENT_SIZE + n.len())
        .sum::<usize>();
    Ok(size)
}

/// Directory content: per block, dirents `{nid, nameoff, file_type}` then the names;
/// the kernel learns the entry count from the first `nameoff`.
fn dir_bytes(names: &[(Vec<u8>, u64, u8)]) -> Vec<u8> {
    let counts = dir_blocks(names).expect("sizes were checked when planning");
    let mut out = Vec::new();
    let mut start = 0;
    for (index, count) in counts.iter().enumerate() {
        let entries = &names[start..start + count];
        let mut block = Vec::with_capacity(BLOCK);
        let mut nameoff = count * DIRENT_SIZE;
        for (name, nid, file_type) in entries {
            block.extend_from_slice(&nid.to_le_bytes());
            block.extend_from_slice(&(nameoff as u16).to_le_bytes());
            block.push(*file_type);
            block.push(0);
            nameoff += name.len();
        }
        for (name, _, _) in entries {
            block.extend_from_slice(name);
        }
        if index + 1 < counts.len() {
            // Zero padding ends the last name of a full block.
            block.resize(BLOCK, 0);
        }
        out.extend_from_slice(&block);
        start += count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ErofsOptions {
        ErofsOptions {
            uuid: [7; 16],
            volume_name: "test".into(),
            build_time: 0,
        }
    }

    #[test]
    fn a_long_volume_name_keeps_its_nul_terminator() {
        let mut options = options();
        options.volume_name = "a-volume-name-of-20b".into();
        let image = erofs_bytes(&sample_tree(), &options).unwrap();
        let field = &image[SUPER_OFFSET + 64..SUPER_OFFSET + 80];
        assert_eq!(&field[..15], b"a-volume-name-o");
        assert_eq!(field[15], 0, "Linux needs the NUL");
    }

    fn sample_tree() -> Tree {
        let mut tree = Tree::new();
        tree.add_file("usr/bin/tool", 0o755, vec![0xab; 9000])
            .unwrap();
        tree.add_file("etc/small", 0o644, b"hello\n".to_vec())
            .unwrap();
        tree.add_file("etc/empty", 0o600, Vec::new()).unwrap();
        tree.add_file("etc/exact", 0o644, vec![1; BLOCK]).unwrap();
        tree.add_symlink("bin", "usr/bin").unwrap();
        tree.add_dir("tmp", 0o1777).unwrap();
        // Enough names to need several directory blocks.
        for i in 0..600 {
            tree.add_file(
                &format!("many/file-{i:04}"),
                0o644,
                i.to_string().into_bytes(),
            )
            .unwrap();
        }
        tree
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn superblock_describes_the_image() {
        let image = erofs_bytes(&sample_tree(), &options()).unwrap();
        assert_eq!(image.len() % BLOCK, 0);
        assert_eq!(u32_at(&image, SUPER_OFFSET), MAGIC);
        assert_eq!(image[SUPER_OFFSET + 12], 12);
        assert_eq!(
            u32_at(&image, SUPER_OFFSET + 36) as usize,
            image.len() / BLOCK
        );
        assert_eq!(&image[SUPER_OFFSET + 48..SUPER_OFFSET + 64], &[7; 16]);
        let root = BLOCK + u16_at(&image, SUPER_OFFSET + 14) as usize * INODE_SIZE;
        assert_eq!(u16_at(&image, root + 4) as u32, S_IFDIR | 0o755);
    }

    #[test]
    fn directory_blocks_hold_sorted_entries_within_4k() {
        let names: Vec<(Vec<u8>, u64, u8)> = (0..700)
            .map(|i| (format!("n{i:05}").into_bytes(), i as u64, FT_REG_FILE))
            .collect();
        let bytes = dir_bytes(&names);
        assert_eq!(bytes.len(), dir_size(&names).unwrap());
        // Walk the blocks the way the kernel does and collect the names back.
        let mut seen = Vec::new();
        for block in bytes.chunks(BLOCK) {
            let count = u16_at(block, 8) as usize / DIRENT_SIZE;
            for i in 0..count {
                let off = u16_at(block, i * DIRENT_SIZE + 8) as usize;
                let end = if i + 1 < count {
                    u16_at(block, (i + 1) * DIRENT_SIZE + 8) as usize
                } else {
                    block[off..]
                        .iter()
                        .position(|&b| b == 0)
                        .map_or(block.len(), |p| off + p)
                };
                seen.push(block[off..end].to_vec());
            }
        }
        let expected: Vec<Vec<u8>> = names.iter().map(|n| n.0.clone()).collect();
        assert_eq!(seen, expected);
        assert!(bytes.len() > BLOCK, "700 names need more than one block");
    }

    #[test]
    fn same_tree_gives_same_bytes_and_changes_show() {
        let a = erofs_bytes(&sample_tree(), &options()).unwrap();
        let b = erofs_bytes(&sample_tree(), &options()).unwrap();
        assert_eq!(a, b);
        let mut changed = sample_tree();
        changed
            .add_file("etc/small", 0o644, b"hellO\n".to_vec())
            .unwrap();
        assert_ne!(a, erofs_bytes(&changed, &options()).unwrap());
    }

    #[test]
    fn insertion_order_does_not_reach_the_image() {
        let paths = ["z/last", "a/first", "m/middle/deep", "a/second"];
        let mut forward = Tree::new();
        for path in paths {
            forward
                .add_file(path, 0o644, path.as_bytes().to_vec())
                .unwrap();
        }
        let mut backward = Tree::new();
        for path in paths.iter().rev() {
            backward
                .add_file(path, 0o644, path.as_bytes().to_vec())
                .unwrap();
        }
        assert_eq!(
            erofs_bytes(&forward, &options()).unwrap(),
            erofs_bytes(&backward, &options()).unwrap()
        );
    }

    #[test]
    fn hardlinked_files_share_blocks() {
        let mut tree = Tree::new();
        let data = Arc::new(vec![5u8; 3 * BLOCK]);
        tree.install(&[
            crate::deb::Entry {
                path: "a".into(),
                mode: 0o644,
                node: crate::deb::Node::File(data.clone()),
            },
            crate::deb::Entry {
                path: "b".into(),
                mode: 0o644,
                node: crate::deb::Node::Hardlink("a".into()),
            },
        ])
        .unwrap();
        let image = erofs_bytes(&tree, &options()).unwrap();
        // Superblock block + one metadata block + the three shared data blocks.
        assert_eq!(image.len(), 5 * BLOCK);
    }
}
