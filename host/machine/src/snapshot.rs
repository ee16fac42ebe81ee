//! Snapshots: a machine's whole state as a few named files, to stop a run and resume it
//! later in exactly the same state (state hash, console output and all).
//!
//! This module works on bytes only, like the rest of the library: [`encode`] turns a
//! machine into its files (as pieces of bytes, page data borrowed from the machine's
//! memory), and [`parse_manifest`] then [`load`] turn files back into a machine. Storing
//! the files as a directory (atomically, with `fsync`) and reading them back (bounded by
//! the manifest's lengths) is the caller's: `cmbuild`'s `snapshot_dir` module.
//!
//! # Format (version 2; version 1 is still read)
//!
//! A snapshot is these files and nothing else (on disk: a directory holding them):
//!
//! | file | contents |
//! |---|---|
//! | `manifest` | ASCII text, described below |
//! | `state` | the canonical processor and device state, exactly the bytes of [`Machine::save_state`] (a board with the offload channel: its state last; answers the host gave that are not visible yet are not kept, the host gives them again) |
//! | `dtb` | the device tree blob the machine was built with (it also names the initrd and holds `/chosen/rng-seed`, which derive from the images' bytes a snapshot does not keep) |
//! | `ram.pages` | the non-zero pages of RAM |
//! | `flash-<i>.pages` | the non-zero pages of flash drive `i` (0, 1, ... in address order); for a drive with a `base`, the pages that differ from the base |
//!
//! ## `manifest`
//! One `key value` pair per line (`value` is the rest of the line after the first space,
//! possibly empty), LF line ends, the keys exactly in this order:
//!
//! ```text
//! cmbuild-machine-snapshot                 magic, a line of its own
//! format-version 2                         1 is read too (no `base` lines)
//! hash-scheme cmvm-sha256-v1               HASH_SCHEME of the build that wrote it
//! root-hash cmvm-sha256-v1:<64 hex>        the state hash at store time
//! mcycle <decimal>
//! ram-length <decimal>                     bytes
//! bootargs <text>                          /chosen/bootargs
//! images <n>                               then n lines, provenance only:
//! image <name> <length> <sha256 hex>       name: ram-image, bios, kernel or initrd
//! flash-drives <n>                         then for each drive, in address order:
//! flash-drive <index>
//! label <text>
//! shared <yes|no>
//! image-length <decimal>                   bytes of the drive's image (and host file)
//! start <0x hex>                           guest-physical address of the range
//! range-length <decimal>                   bytes of the range (2 MiB aligned)
//! host-file <text>                         always empty (see "Shared flash drives")
//! base <text>                              version 2 only: empty, or the caller's name of
//!                                          the bytes the drive's pages apply to (see "Bases")
//! files <n>                                then n lines, in the order of the table above:
//! file <name> <length> <sha256 hex>
//! checksum <sha256 hex>                    of every manifest byte before this line
//! end
//! ```
//!
//! Text values escape `%`, bytes below 0x20 and 0x7f as `%XX` (two upper-case hex digits);
//! nothing else is escaped. Numbers are plain decimal except `start`. The manifest has no
//! timestamps or host names: the same machine state stored twice gives identical files
//! (and no host paths).
//!
//! ## `*.pages`
//! Little-endian, no padding:
//!
//! ```text
//! magic          8 bytes  "CMVMPAGE"
//! version        u64      2 (1: page data stored plainly)
//! range length   u64      bytes (must equal the manifest's)
//! page count     u64      n
//! page indices   n x u64  strictly increasing, each < range length / 4096
//! page data      version 2: one zstd frame holding n x 4096 bytes, nothing after it;
//!                version 1: n x 4096 bytes; in the order of the indices
//! ```
//!
//! Pages not listed are zero (or, for a drive with a base, the base's); only pages with a
//! non-zero byte (that differ from the base) are written, so a machine with gigabytes of RAM
//! it never touched gives a snapshot of its used pages only. Version 2 files are what this
//! build writes; either version loads. Decompression writes straight into the machine's
//! memory, page by page, and stops at the announced size.
//!
//! ## Bases
//! A flash drive may name a base (`base <text>`): bytes the snapshot does not carry because
//! the resuming caller has them anyway (cmbuild's template machine: the guest image's root
//! drive, gigabytes, named by its content ID). Its pages file then holds only the pages
//! that differ from the base. The caller supplies the base's bytes when loading
//! ([`load_with_bases`]); the machine crate does not check them against the name (it knows
//! no content IDs) but the state hash, recomputed over what was loaded, covers them, so a
//! wrong base is refused like any other corruption.
//!
//! # Checks on load
//! A snapshot may come from anyone. [`parse_manifest`] and [`load`] refuse, with an error
//! naming what is wrong, a manifest with another magic, format version or hash scheme, a
//! manifest that does not match its `checksum` line or is malformed, RAM or a flash drive
//! of 64 GiB or more ([`crate::machine::MEMORY_LIMIT`]), a file longer than its contents
//! can be, a file whose length or SHA-256 differs from the manifest's, a pages file with a
//! bad header or index, a flash drive layout that this build would not give the same
//! configuration, state bytes that do not decode, an `mcycle` that differs from the
//! state's, and finally a state hash, recomputed from scratch over what was loaded, that
//! differs from the stored `root-hash`. Everything but the last two is checked before the
//! machine's memory is allocated (and an allocation the host refuses is an error, not an
//! abort); [`parse_manifest`] alone bounds every length a caller reads the files by.
//!
//! The processor state is legalised as it loads, as software could have left it: `pc`
//! even, every CSR through the legalisation of a `csrw` from M-mode over its reset value
//! (`mstatus.MPP = 2` becomes U, an unsupported `satp` mode leaves `satp` at reset, ...;
//! see [`crate::hart::csr::Csrs::legalize`]). A snapshot of a real run is already legal
//! and loads unchanged; the state hash is checked over the legalised state.
//!
//! # Writing
//! [`encode`] gives the files in the order of the table, then `manifest`, with their
//! lengths and SHA-256 digests. Console bytes the caller has not drained are not part of
//! a snapshot.
//!
//! # Shared flash drives
//! A snapshot holds every flash drive's contents, shared or not, and a resumed machine
//! starts from those contents, not from the host file (which may have changed since).
//! A snapshot never names host paths: where a shared drive's final contents go is the
//! resuming caller's to say (`cmbuild machine run --load DIR --flash-drive
//! label:NAME,filename:PATH,shared`), never the snapshot's, since a snapshot may come from
//! anyone. The `host-file` line is written empty; a value in a snapshot written by an
//! older build (which recorded the path there) is read as text and ignored.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::board::{DTB_SIZE, RAM_BASE};
use crate::bus::{Bus, FlashDrive};
use crate::hart::Hart;
use crate::machine::{
    dtb_leaf, root_hash_text, state_leaf, Machine, MachineConfig, HASH_SCHEME, MEMORY_LIMIT,
};
use crate::memory::{HostMemory, MemRange, PAGE_SIZE};
use crate::merkle::{self, Hash, PageTree};
use crate::state::StateError;

/// The first line of every manifest.
pub const MAGIC: &str = "cmbuild-machine-snapshot";
/// The snapshot format version this build writes (it reads this one and version 1).
pub const FORMAT_VERSION: u64 = 2;
/// The magic of a pages file.
pub const PAGES_MAGIC: &[u8; 8] = b"CMVMPAGE";
/// The version of the pages file layout this build writes (zstd-compressed page data; it
/// reads version 1, plain page data, too).
pub const PAGES_VERSION: u64 = 2;
/// The zstd level of page data: fast to write, and decompression speed hardly depends on it.
const ZSTD_LEVEL: i32 = 3;
/// Bytes of a pages file before the page indices.
const PAGES_HEADER: u64 = 32;
/// A manifest larger than this is not one (callers read at most this many bytes of it).
pub const MAX_MANIFEST: u64 = 1 << 20;
/// The most bytes the processor and device state can take (it is under a kilobyte).
const MAX_STATE: u64 = 1 << 20;

/// Why a snapshot could not be encoded or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// the manifest is not a cmbuild machine snapshot manifest (its first line is {found:?})
    #[error(
        "the manifest is not a cmbuild machine snapshot manifest (its first line is {found:?})"
    )]
    NotASnapshot {
        /// What its first line holds.
        found: String,
    },
    /// snapshot format version {found:?} is not supported (this build reads versions 1 and 2)
    #[error(
        "snapshot format version {found:?} is not supported (this build reads versions 1 and 2)"
    )]
    Version {
        /// The version the manifest names.
        found: String,
    },
    /// the snapshot's hash scheme is {found:?}, this build computes cmvm-sha256-v1
    #[error("the snapshot's hash scheme is {found:?}, this build computes {HASH_SCHEME}")]
    Scheme {
        /// The scheme the manifest names.
        found: String,
    },
    /// the snapshot manifest does not match its checksum line (corrupted)
    #[error("the snapshot manifest does not match its checksum line (corrupted)")]
    ManifestChecksum,
    /// snapshot manifest line {line}: {message}
    #[error("snapshot manifest line {line}: {message}")]
    Manifest {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// snapshot file {file} is {actual} bytes, the manifest says {expected} (truncated or replaced)
    #[error("snapshot file {file} is {actual} bytes, the manifest says {expected} (truncated or replaced)")]
    FileLength {
        /// The file.
        file: String,
        /// Length in the manifest.
        expected: u64,
        /// Length on disk.
        actual: u64,
    },
    /// snapshot file {0} does not match its SHA-256 in the manifest (corrupted)
    #[error("snapshot file {0} does not match its SHA-256 in the manifest (corrupted)")]
    FileDigest(String),
    /// snapshot memory file {file}: {message}
    #[error("snapshot memory file {file}: {message}")]
    Pages {
        /// The pages file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// the snapshot's processor and device state does not load: {0}
    #[error("the snapshot's processor and device state does not load: {0}")]
    State(StateError),
    /// the snapshot's layout differs from what this build gives the same configuration: {0}
    #[error(
        "the snapshot's layout differs from what this build gives the same configuration: {0}"
    )]
    Layout(String),
    /// the snapshot's state holds mcycle {state}, its manifest says {manifest}
    #[error("the snapshot's state holds mcycle {state}, its manifest says {manifest}")]
    Mcycle {
        /// `mcycle` in the state file.
        state: u64,
        /// `mcycle` in the manifest.
        manifest: u64,
    },
    /// the state hash recomputed after loading is {computed}, the snapshot says {stored} (corrupted snapshot)
    #[error("the state hash recomputed after loading is {computed}, the snapshot says {stored} (corrupted snapshot)")]
    RootHash {
        /// `root-hash` of the manifest.
        stored: String,
        /// The hash of the loaded machine.
        computed: String,
    },
    /// the snapshot configuration does not describe the machine being stored: {0}
    #[error("the snapshot configuration does not describe the machine being stored: {0}")]
    ConfigMismatch(String),
    /// snapshot file {0} is missing
    #[error("snapshot file {0} is missing")]
    MissingFile(String),
    /// the host cannot allocate the {0} bytes of a memory range of the snapshot
    #[error("the host cannot allocate the {0} bytes of a memory range of the snapshot")]
    OutOfMemory(u64),
    /// flash drive {index} of the snapshot applies to base {name:?}: {message}
    #[error("flash drive {index} of the snapshot applies to base {name:?}: {message}")]
    Base {
        /// The drive.
        index: usize,
        /// The base's name in the manifest.
        name: String,
        /// What is wrong (not supplied, or of another length).
        message: String,
    },
}

/// Provenance of one image the machine was built from (not needed to rebuild it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// `ram-image`, `bios`, `kernel` or `initrd`.
    pub name: String,
    /// Its length in bytes.
    pub length: u64,
    /// SHA-256 of its bytes.
    pub sha256: Hash,
}

/// A flash drive as a snapshot records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveRecord {
    /// Its label.
    pub label: String,
    /// Length of its image (the range is rounded up to 2 MiB).
    pub image_length: u64,
    /// Whether the caller writes its contents back to a host file at the end of a run
    /// (which file is the caller's to say: a snapshot names none).
    pub shared: bool,
    /// The caller's name of the bytes the drive's pages apply to (see "Bases" in the module
    /// docs), or `None`: the pages apply to zeros.
    pub base: Option<String>,
}

/// The configuration a snapshot records: [`MachineConfig`] without the images' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Bytes of RAM.
    pub ram_length: u64,
    /// Kernel command line.
    pub bootargs: String,
    /// The images the machine was built from, for provenance.
    pub images: Vec<ImageRecord>,
    /// The flash drives, in address order.
    pub flash_drives: Vec<DriveRecord>,
}

impl SnapshotConfig {
    /// The record of `config`.
    pub fn from_config(config: &MachineConfig) -> Self {
        let images = [
            ("ram-image", &config.ram_image),
            ("bios", &config.bios),
            ("kernel", &config.kernel),
            ("initrd", &config.initrd),
        ]
        .into_iter()
        .filter_map(|(name, bytes)| {
            bytes.as_ref().map(|b| ImageRecord {
                name: name.to_string(),
                length: b.len() as u64,
                sha256: Sha256::digest(b).into(),
            })
        })
        .collect();
        Self {
            ram_length: config.ram_length,
            bootargs: config.bootargs.clone(),
            images,
            flash_drives: config
                .flash_drives
                .iter()
                .map(|f| DriveRecord {
                    label: f.label.clone(),
                    image_length: f.image.len() as u64,
                    shared: f.shared,
                    base: None,
                })
                .collect(),
        }
    }
}

/// A loaded snapshot: the machine, ready to run on, and what the manifest recorded.
#[derive(Debug)]
pub struct Snapshot {
    /// The machine in the stored state.
    pub machine: Machine,
    /// Its configuration.
    pub config: SnapshotConfig,
    /// The state hash at store time (verified to equal the loaded machine's).
    pub root_hash: String,
}

/// One file of an encoded snapshot: its name, and its bytes as pieces to be written one
/// after another (headers owned, page data borrowed from the machine's memory, so that
/// encoding copies no memory).
#[derive(Debug)]
pub struct SnapshotFile<'a> {
    /// The file's name (`state`, `dtb`, `ram.pages`, `flash-<i>.pages`, `manifest`).
    pub name: String,
    /// The bytes, in order.
    pub pieces: Vec<Cow<'a, [u8]>>,
    /// The total length of the pieces.
    pub length: u64,
    /// SHA-256 of the concatenated pieces.
    pub sha256: Hash,
}

impl<'a> SnapshotFile<'a> {
    fn new(name: &str, pieces: Vec<Cow<'a, [u8]>>) -> Self {
        let mut hasher = Sha256::new();
        let mut length = 0;
        for p in &pieces {
            hasher.update(p);
            length += p.len() as u64;
        }
        Self {
            name: name.to_string(),
            pieces,
            length,
            sha256: hasher.finalize().into(),
        }
    }

    /// The file's bytes in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

/// A machine encoded as snapshot files.
#[derive(Debug)]
pub struct EncodedSnapshot<'a> {
    /// The state hash of the machine (also in the manifest).
    pub root_hash: String,
    /// The files in the order of the module docs' table, then `manifest` last (a writer
    /// that writes them in this order and the manifest last never leaves a manifest that
    /// names files not yet written).
    pub files: Vec<SnapshotFile<'a>>,
}

impl EncodedSnapshot<'_> {
    /// The files as a map from name to bytes (copies; for tests and small machines).
    pub fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.files
            .iter()
            .map(|f| (f.name.clone(), f.to_vec()))
            .collect()
    }
}

/// Encodes `machine`, built from `config`, as snapshot files.
pub fn encode<'a>(
    machine: &'a mut Machine,
    config: &SnapshotConfig,
) -> Result<EncodedSnapshot<'a>, SnapshotError> {
    encode_with_bases(machine, config, &BTreeMap::new())
}

/// [`encode`], where each drive whose [`DriveRecord::base`] names a base is stored as its
/// differences from `bases[drive index]` (which must be given for each such drive).
pub fn encode_with_bases<'a>(
    machine: &'a mut Machine,
    config: &SnapshotConfig,
    bases: &BTreeMap<usize, &[u8]>,
) -> Result<EncodedSnapshot<'a>, SnapshotError> {
    check_config(machine, config)?;
    for (index, d) in config.flash_drives.iter().enumerate() {
        if let Some(name) = &d.base {
            if bases.get(&index).map(|b| b.len() as u64) != Some(d.image_length) {
                return Err(SnapshotError::Base {
                    index,
                    name: name.clone(),
                    message: format!("no base of {} bytes given to encode", d.image_length),
                });
            }
        }
    }
    let root_hash = machine.root_hash();
    let machine: &'a Machine = machine;
    let mut state = Vec::new();
    machine.save_state(&mut state);
    let mut files = vec![
        SnapshotFile::new("state", vec![Cow::Owned(state)]),
        SnapshotFile::new("dtb", vec![Cow::Borrowed(&machine.bus.dtb[..])]),
        SnapshotFile::new("ram.pages", pages_pieces(&machine.bus.ram, None)?),
    ];
    for (i, f) in machine.bus.flash.iter().enumerate() {
        let base = config.flash_drives[i]
            .base
            .as_ref()
            .and_then(|_| bases.get(&i).copied());
        files.push(SnapshotFile::new(
            &format!("flash-{i}.pages"),
            pages_pieces(&f.mem, base)?,
        ));
    }
    let entries: Vec<FileEntry> = files
        .iter()
        .map(|f| FileEntry {
            name: f.name.clone(),
            length: f.length,
            sha256: f.sha256,
        })
        .collect();
    let text = manifest_text(machine, config, &root_hash, &entries);
    files.push(SnapshotFile::new(
        "manifest",
        vec![Cow::Owned(text.into_bytes())],
    ));
    Ok(EncodedSnapshot { root_hash, files })
}

/// Loads a snapshot given as a map from file name to bytes (every check of
/// [`parse_manifest`] and [`load`]).
pub fn load_files(files: &BTreeMap<String, Vec<u8>>) -> Result<Snapshot, SnapshotError> {
    let manifest = files
        .get("manifest")
        .ok_or_else(|| SnapshotError::MissingFile("manifest".into()))?;
    let m = parse_manifest(manifest)?;
    let contents = m
        .files()
        .iter()
        .map(|e| {
            files
                .get(&e.name)
                .map(|b| b.as_slice())
                .ok_or_else(|| SnapshotError::MissingFile(e.name.clone()))
        })
        .collect::<Result<Vec<&[u8]>, _>>()?;
    load(&m, &contents)
}

/// Builds the machine a parsed manifest describes from the contents of its files
/// (`files[i]` holds [`Manifest::files`]`[i]`), checking everything (see the module docs).
/// A snapshot whose drives name bases needs [`load_with_bases`].
pub fn load(m: &Manifest, files: &[&[u8]]) -> Result<Snapshot, SnapshotError> {
    load_with_bases(m, files, BTreeMap::new(), HashCheck::Recompute)
}

/// Whether [`load_with_bases`] recomputes the state hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    /// Recompute the state hash over everything loaded and refuse a snapshot whose hash
    /// differs from its manifest's (the page trees are then built, so the machine's next
    /// hash only rehashes what changed). For any snapshot that may come from anyone.
    Recompute,
    /// Do not: the caller has verified the files' bytes by content address against a record
    /// it trusts (cmbuild's template, taken from its own mirror by CID), and will hash the
    /// machine later anyway. Every other check still applies. Loading then costs the
    /// decompression and little else; the machine's first hash builds the page trees.
    Trusted,
}

/// The bytes a drive's pages apply to, supplied by the caller for a drive whose manifest
/// names a base (see "Bases" in the module docs).
#[derive(Debug)]
pub enum Base {
    /// The base's bytes, moved into the drive's memory (then zeros to the range's end).
    Bytes(Vec<u8>),
    /// Host memory the caller prepared as the whole range: the base's `image_length` bytes,
    /// then zeros (cmbuild: a copy-on-write mapping of the image file, so nothing is copied).
    Memory {
        /// Bytes of the base (the drive's image length).
        image_length: u64,
        /// The range's memory.
        memory: Box<dyn HostMemory>,
    },
}

impl Base {
    fn image_length(&self) -> u64 {
        match self {
            Base::Bytes(bytes) => bytes.len() as u64,
            Base::Memory { image_length, .. } => *image_length,
        }
    }
}

/// [`load`], taking each base a drive names from `bases` (by drive index; the bytes move
/// into the machine's memory without a copy), with the state-hash check `check`.
/// The pages files are decompressed straight into the machine's memory.
pub fn load_with_bases(
    m: &Manifest,
    files: &[&[u8]],
    bases: BTreeMap<usize, Base>,
    check: HashCheck,
) -> Result<Snapshot, SnapshotError> {
    let checked = check_files(m, files)?;
    let pages = checked.pages;
    assemble(
        m,
        checked.state,
        checked.dtb.to_vec(),
        bases,
        check,
        |i, mem| {
            let (name, bytes) = &pages[i];
            apply_pages(name, bytes, mem)
        },
    )
}

/// A snapshot checked and decompressed once, from which any number of machines start, each
/// with its memory copied from the decompressed pages (cmbuild's template: every build of a
/// run resumes from it). It holds the non-zero pages of RAM and the drives uncompressed.
#[derive(Debug)]
pub struct Prepared {
    manifest: Manifest,
    state: Vec<u8>,
    dtb: Vec<u8>,
    /// RAM's pages, then each flash drive's.
    pages: Vec<ExpandedPages>,
}

/// The pages a pages file lists, decompressed: their indices and their bytes, in order.
#[derive(Debug)]
struct ExpandedPages {
    indices: Vec<u64>,
    data: Vec<u8>,
}

impl ExpandedPages {
    /// Writes the pages into `mem` (the range they belong to).
    fn write_to(&self, mem: &mut MemRange) {
        for (k, &page) in self.indices.iter().enumerate() {
            let at = k * PAGE_SIZE as usize;
            mem.write_bytes(page * PAGE_SIZE, &self.data[at..at + PAGE_SIZE as usize]);
        }
    }
}

impl Prepared {
    /// Checks the files against the manifest (every check of [`load`] but those that need
    /// the machine and the state hash) and decompresses the pages.
    pub fn new(m: &Manifest, files: &[&[u8]]) -> Result<Self, SnapshotError> {
        let checked = check_files(m, files)?;
        let pages = checked
            .pages
            .iter()
            .map(|(name, bytes)| expand_pages(name, bytes))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            manifest: m.clone(),
            state: checked.state.to_vec(),
            dtb: checked.dtb.to_vec(),
            pages,
        })
    }

    /// The manifest it was prepared from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of decompressed page data it holds.
    pub fn page_bytes(&self) -> u64 {
        self.pages.iter().map(|p| p.data.len() as u64).sum()
    }

    /// A machine in the snapshot's state, as [`load_with_bases`] would build it from the
    /// same files (the same checks of the bases and, with [`HashCheck::Recompute`], of the
    /// state hash).
    pub fn instantiate(
        &self,
        bases: BTreeMap<usize, Base>,
        check: HashCheck,
    ) -> Result<Snapshot, SnapshotError> {
        let m = &self.manifest;
        assemble(m, &self.state, self.dtb.clone(), bases, check, |i, mem| {
            self.pages[i].write_to(mem);
            Ok(())
        })
    }

    /// The page trees of the machine [`Prepared::instantiate`] builds with `bases` (RAM's,
    /// then each flash drive's), without building it: RAM's from the snapshot's pages
    /// alone (no memory of RAM's length is allocated or written), each drive's from its
    /// base with the snapshot's pages written over it. For machines of this snapshot to
    /// adopt ([`Machine::adopt_page_trees`]) instead of hashing all their memory again.
    /// Checked: with the stored state and device tree they must give the stored root
    /// hash ([`SnapshotError::RootHash`] otherwise); a base that does not fit fails as in
    /// `instantiate`.
    pub fn page_trees(&self, bases: BTreeMap<usize, Base>) -> Result<Vec<PageTree>, SnapshotError> {
        self.page_trees_over(bases, BTreeMap::new())
    }

    /// [`Prepared::page_trees`], given the trees of some drives' bases (by drive index):
    /// each the tree of the drive's range holding its base alone (the base's bytes, then
    /// zeros; [`PageTree::build_in`]), which the snapshot's pages of that drive are set
    /// over instead of hashing the base again. Checked as `page_trees` is: a base tree
    /// that is not its base's gives another root hash ([`SnapshotError::RootHash`]).
    pub fn page_trees_over(
        &self,
        bases: BTreeMap<usize, Base>,
        mut base_trees: BTreeMap<usize, PageTree>,
    ) -> Result<Vec<PageTree>, SnapshotError> {
        let m = &self.manifest;
        let mut ram = PageTree::new_zeroed(m.config.ram_length);
        let p = &self.pages[0];
        let indices: Vec<usize> = p.indices.iter().map(|&i| i as usize).collect();
        ram.set_pages(&indices, &p.data)
            .map_err(|e| SnapshotError::Pages {
                file: "ram.pages".into(),
                message: e.to_string(),
            })?;
        let mut trees = vec![ram];
        for (i, mut drive) in flash_drives(m, bases)?.into_iter().enumerate() {
            let pages = &self.pages[1 + i];
            let given = base_trees.remove(&i);
            let tree = match given.filter(|t| t.length() == drive.mem.bytes().len() as u64) {
                Some(mut tree) => {
                    let indices: Vec<usize> = pages.indices.iter().map(|&p| p as usize).collect();
                    tree.set_pages(&indices, &pages.data)
                        .map_err(|e| SnapshotError::Pages {
                            file: format!("flash-{i}.pages"),
                            message: e.to_string(),
                        })?;
                    tree
                }
                None => {
                    pages.write_to(&mut drive.mem);
                    PageTree::build(drive.mem.bytes())
                }
            };
            trees.push(tree);
        }
        let mut leaves = vec![state_leaf(&self.state), dtb_leaf(&self.dtb)];
        leaves.extend(trees.iter().map(PageTree::root));
        let computed = root_hash_text(&merkle::combine_leaves(&leaves));
        if computed != m.root_hash {
            return Err(SnapshotError::RootHash {
                stored: m.root_hash.clone(),
                computed,
            });
        }
        Ok(trees)
    }
}

/// The files of a snapshot, checked against its manifest: the state, the device tree and
/// every pages file (header and index checked) by name.
struct CheckedFiles<'a> {
    state: &'a [u8],
    dtb: &'a [u8],
    pages: Vec<(String, &'a [u8])>,
}

fn check_files<'a>(m: &Manifest, files: &[&'a [u8]]) -> Result<CheckedFiles<'a>, SnapshotError> {
    if files.len() != m.files.len() {
        return Err(SnapshotError::MissingFile(format!(
            "{} of {}",
            m.files.len().saturating_sub(files.len()),
            m.files.len()
        )));
    }
    for (entry, bytes) in m.files.iter().zip(files) {
        check_file(entry, bytes)?;
    }
    let file = |name: &str| -> &'a [u8] {
        let i = m
            .files
            .iter()
            .position(|f| f.name == name)
            .expect("parse_manifest checked the file list");
        files[i]
    };
    let ram_length = m.config.ram_length;
    let mut pages = vec![("ram.pages".to_string(), file("ram.pages"))];
    for i in 0..m.ranges.len() {
        let name = format!("flash-{i}.pages");
        let bytes = file(&name);
        pages.push((name, bytes));
    }
    let range_lengths = std::iter::once(ram_length).chain(m.ranges.iter().map(|r| r.1));
    for ((name, bytes), length) in pages.iter().zip(range_lengths) {
        check_pages(name, bytes, length)?;
    }
    Ok(CheckedFiles {
        state: file("state"),
        dtb: file("dtb"),
        pages,
    })
}

/// Builds the machine of a manifest whose files were checked: checks the bases, allocates
/// the memory, has `apply(i, range)` write the pages of range `i` (0 = RAM, `1 + j` = flash
/// drive `j`), loads the state and checks `mcycle` and (with [`HashCheck::Recompute`]) the
/// state hash.
fn assemble(
    m: &Manifest,
    state: &[u8],
    dtb: Vec<u8>,
    bases: BTreeMap<usize, Base>,
    check: HashCheck,
    mut apply: impl FnMut(usize, &mut MemRange) -> Result<(), SnapshotError>,
) -> Result<Snapshot, SnapshotError> {
    let ram_length = m.config.ram_length;
    let flash = flash_drives(m, bases)?;
    let bus = Bus::new(alloc(RAM_BASE, ram_length)?, flash, dtb);
    let mut machine = Machine::from_parts(Hart::new(ram_length), bus);
    // A snapshot's pages are few and spread over large ranges: written on small host
    // pages (`MemRange::with_small_pages`).
    machine.bus.ram.with_small_pages(|ram| apply(0, ram))?;
    for (i, drive) in machine.bus.flash.iter_mut().enumerate() {
        drive.mem.with_small_pages(|mem| apply(1 + i, mem))?;
    }
    machine.load_state(state).map_err(SnapshotError::State)?;
    machine.memory_replaced();
    if machine.mcycle() != m.mcycle {
        return Err(SnapshotError::Mcycle {
            state: machine.mcycle(),
            manifest: m.mcycle,
        });
    }
    if check == HashCheck::Trusted {
        return Ok(Snapshot {
            machine,
            config: m.config.clone(),
            root_hash: m.root_hash.clone(),
        });
    }
    // From scratch (no page tree exists yet after `memory_replaced`): this is the check of
    // the loaded bytes, and it leaves the trees built for the next hash.
    let computed = root_hash_text(&machine.root_hash_bytes());
    if computed != m.root_hash {
        return Err(SnapshotError::RootHash {
            stored: m.root_hash.clone(),
            computed,
        });
    }
    Ok(Snapshot {
        machine,
        config: m.config.clone(),
        root_hash: m.root_hash.clone(),
    })
}

/// A memory range of `length` zero bytes at `start`, or the error of a host that refuses
/// the allocation. (Every size reaching here was checked and is bounded.)
fn alloc(start: u64, length: u64) -> Result<MemRange, SnapshotError> {
    MemRange::try_new(start, length).ok_or(SnapshotError::OutOfMemory(length))
}

/// The flash drives of manifest `m`, each over its base from `bases` (checked to fit) or
/// zeros, before the snapshot's pages are written.
fn flash_drives(
    m: &Manifest,
    mut bases: BTreeMap<usize, Base>,
) -> Result<Vec<FlashDrive>, SnapshotError> {
    let mut base_bytes = Vec::new();
    for (index, (d, &(_, range_length))) in m.config.flash_drives.iter().zip(&m.ranges).enumerate()
    {
        let Some(name) = &d.base else {
            base_bytes.push(None);
            continue;
        };
        let bad = |message: String| SnapshotError::Base {
            index,
            name: name.clone(),
            message,
        };
        let base = bases
            .remove(&index)
            .ok_or_else(|| bad("the caller supplied no such base".into()))?;
        if base.image_length() != d.image_length {
            return Err(bad(format!(
                "{} bytes supplied, the drive's image has {}",
                base.image_length(),
                d.image_length
            )));
        }
        if let Base::Memory { memory, .. } = &base {
            if memory.length() as u64 != range_length {
                return Err(bad(format!(
                    "{} bytes of memory supplied for a range of {range_length}",
                    memory.length()
                )));
            }
        }
        base_bytes.push(Some(base));
    }
    // Everything above was checked before any of the machine's memory is allocated, and
    // the sizes are bounded; an allocation the host still refuses is an error too.
    m.config
        .flash_drives
        .iter()
        .zip(&m.ranges)
        .zip(base_bytes)
        .map(|((d, &(start, length)), base)| {
            Ok(FlashDrive {
                label: d.label.clone(),
                shared: d.shared,
                image_length: d.image_length,
                mem: match base {
                    Some(Base::Bytes(bytes)) => MemRange::from_vec(start, bytes, length),
                    Some(Base::Memory { memory, .. }) => MemRange::from_host_memory(start, memory)
                        .ok_or(SnapshotError::OutOfMemory(length))?,
                    None => alloc(start, length)?,
                },
            })
        })
        .collect()
}

fn check_config(machine: &Machine, config: &SnapshotConfig) -> Result<(), SnapshotError> {
    let mismatch = |s: String| Err(SnapshotError::ConfigMismatch(s));
    if config.ram_length != machine.bus.ram.len() {
        return mismatch(format!(
            "RAM length {} but the machine has {}",
            config.ram_length,
            machine.bus.ram.len()
        ));
    }
    if config.flash_drives.len() != machine.bus.flash.len() {
        return mismatch(format!(
            "{} flash drives but the machine has {}",
            config.flash_drives.len(),
            machine.bus.flash.len()
        ));
    }
    for (d, f) in config.flash_drives.iter().zip(&machine.bus.flash) {
        if d.label != f.label || d.image_length != f.image_length || d.shared != f.shared {
            return mismatch(format!(
                "flash drive {:?} ({} bytes, shared {}) but the machine has {:?} ({} bytes, shared {})",
                d.label, d.image_length, d.shared, f.label, f.image_length, f.shared
            ));
        }
    }
    Ok(())
}

/// One `file` line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's name.
    pub name: String,
    /// Its length in bytes (checked against the machine's sizes by [`parse_manifest`]:
    /// a caller may read this many bytes and no more).
    pub length: u64,
    /// SHA-256 of its bytes.
    pub sha256: Hash,
}

/// A parsed and checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    root_hash: String,
    mcycle: u64,
    config: SnapshotConfig,
    /// (start, range length) of each flash drive.
    ranges: Vec<(u64, u64)>,
    files: Vec<FileEntry>,
}

impl Manifest {
    /// The files the snapshot consists of besides the manifest, in their fixed order.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The configuration the manifest records.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// The state hash it records.
    pub fn root_hash(&self) -> &str {
        &self.root_hash
    }

    /// Bytes of flash drive `index`'s range (its image rounded up to the board's drive
    /// alignment): the length of the memory a [`Base::Memory`] for it must have.
    pub fn drive_range_length(&self, index: usize) -> Option<u64> {
        self.ranges.get(index).map(|&(_, length)| length)
    }
}

fn manifest_text(
    machine: &Machine,
    config: &SnapshotConfig,
    root_hash: &str,
    files: &[FileEntry],
) -> String {
    let mut t = String::new();
    let mut line = |key: &str, value: &str| {
        t.push_str(key);
        t.push(' ');
        t.push_str(value);
        t.push('\n');
    };
    line("format-version", &FORMAT_VERSION.to_string());
    line("hash-scheme", HASH_SCHEME);
    line("root-hash", root_hash);
    line("mcycle", &machine.mcycle().to_string());
    line("ram-length", &config.ram_length.to_string());
    line("bootargs", &escape(&config.bootargs));
    line("images", &config.images.len().to_string());
    for im in &config.images {
        line(
            "image",
            &format!("{} {} {}", im.name, im.length, hex(&im.sha256)),
        );
    }
    line("flash-drives", &config.flash_drives.len().to_string());
    for (i, (d, f)) in config
        .flash_drives
        .iter()
        .zip(&machine.bus.flash)
        .enumerate()
    {
        line("flash-drive", &i.to_string());
        line("label", &escape(&d.label));
        line("shared", if d.shared { "yes" } else { "no" });
        line("image-length", &d.image_length.to_string());
        line("start", &format!("{:#x}", f.mem.start));
        line("range-length", &f.mem.len().to_string());
        line("host-file", "");
        line("base", &escape(d.base.as_deref().unwrap_or_default()));
    }
    line("files", &files.len().to_string());
    for f in files {
        line(
            "file",
            &format!("{} {} {}", f.name, f.length, hex(&f.sha256)),
        );
    }
    let body = format!("{MAGIC}\n{t}");
    let checksum = hex(&Sha256::digest(body.as_bytes()));
    format!("{body}checksum {checksum}\nend\n")
}

/// The most bytes a pages file of a range of `length` bytes can take: every page listed,
/// and zstd's worst case over their data.
fn pages_file_limit(length: u64) -> u64 {
    let pages = length / PAGE_SIZE;
    let data = pages.saturating_mul(PAGE_SIZE);
    pages
        .saturating_mul(8 + PAGE_SIZE)
        .saturating_add(data / 128)
        .saturating_add(PAGES_HEADER + (1 << 20))
}

/// The pages file of `mem` (version 2) as pieces: the header and index, then the page data
/// as one zstd frame. The pages written are those with a non-zero byte, or, over a `base`,
/// those that differ from it (the base read as zero-extended to the range).
fn pages_pieces<'a>(
    mem: &'a MemRange,
    base: Option<&[u8]>,
) -> Result<Vec<Cow<'a, [u8]>>, SnapshotError> {
    let bytes = mem.bytes();
    let differs = |i: usize, page: &[u8]| match base {
        None => page.iter().any(|&b| b != 0),
        Some(base) => {
            let from = (i * PAGE_SIZE as usize).min(base.len());
            let to = (from + PAGE_SIZE as usize).min(base.len());
            let under = &base[from..to];
            page[..under.len()] != *under || page[under.len()..].iter().any(|&b| b != 0)
        }
    };
    let pages: Vec<u64> = bytes
        .chunks(PAGE_SIZE as usize)
        .enumerate()
        .filter(|(i, page)| differs(*i, page))
        .map(|(i, _)| i as u64)
        .collect();
    let mut header = Vec::with_capacity(PAGES_HEADER as usize + 8 * pages.len());
    header.extend_from_slice(PAGES_MAGIC);
    header.extend_from_slice(&PAGES_VERSION.to_le_bytes());
    header.extend_from_slice(&mem.len().to_le_bytes());
    header.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for &p in &pages {
        header.extend_from_slice(&p.to_le_bytes());
    }
    let compress_error = |e: std::io::Error| SnapshotError::Pages {
        file: "(being written)".into(),
        message: format!("zstd: {e}"),
    };
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(compress_error)?;
    for &p in &pages {
        let from = (p * PAGE_SIZE) as usize;
        std::io::Write::write_all(&mut encoder, &bytes[from..from + PAGE_SIZE as usize])
            .map_err(compress_error)?;
    }
    let data = encoder.finish().map_err(compress_error)?;
    Ok(vec![Cow::Owned(header), Cow::Owned(data)])
}

/// Checks the header and index of a pages file for a range of `length` bytes.
fn check_pages(name: &str, bytes: &[u8], length: u64) -> Result<(), SnapshotError> {
    let bad = |message: String| SnapshotError::Pages {
        file: name.to_string(),
        message,
    };
    if (bytes.len() as u64) < PAGES_HEADER {
        return Err(bad(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if &bytes[..8] != PAGES_MAGIC {
        return Err(bad(format!(
            "bad magic {:?} (want {:?})",
            String::from_utf8_lossy(&bytes[..8]),
            String::from_utf8_lossy(PAGES_MAGIC)
        )));
    }
    let version = u64_at(bytes, 8);
    if version != 1 && version != PAGES_VERSION {
        return Err(bad(format!(
            "layout version {version} is not supported (want 1 or {PAGES_VERSION})"
        )));
    }
    let covers = u64_at(bytes, 16);
    if covers != length {
        return Err(bad(format!(
            "covers {covers} bytes, the range has {length}"
        )));
    }
    let count = u64_at(bytes, 24);
    let total_pages = length / PAGE_SIZE;
    let fits = count <= total_pages
        && match version {
            1 => {
                count
                    .checked_mul(8 + PAGE_SIZE)
                    .and_then(|b| b.checked_add(PAGES_HEADER))
                    == Some(bytes.len() as u64)
            }
            // The index must fit; the frame is checked as it is decompressed.
            _ => count
                .checked_mul(8)
                .and_then(|b| b.checked_add(PAGES_HEADER))
                .is_some_and(|index_end| index_end <= bytes.len() as u64),
        };
    if !fits {
        return Err(bad(format!(
            "{} bytes do not hold the {count} pages its header announces",
            bytes.len()
        )));
    }
    let mut previous = None;
    for k in 0..count {
        let page = u64_at(bytes, PAGES_HEADER + 8 * k);
        if page >= total_pages || previous.is_some_and(|p| p >= page) {
            return Err(bad(format!(
                "page index {page} (entry {k}) is out of range or out of order"
            )));
        }
        previous = Some(page);
    }
    Ok(())
}

/// Writes the pages of a pages file that [`check_pages`] accepted into `mem`; for version 2,
/// fails if the frame does not decompress to exactly the pages announced.
fn apply_pages(name: &str, bytes: &[u8], mem: &mut MemRange) -> Result<(), SnapshotError> {
    let count = u64_at(bytes, 24);
    let data_start = PAGES_HEADER + 8 * count;
    if u64_at(bytes, 8) == 1 {
        for k in 0..count {
            let page = u64_at(bytes, PAGES_HEADER + 8 * k);
            let at = (data_start + k * PAGE_SIZE) as usize;
            mem.write_bytes(page * PAGE_SIZE, &bytes[at..at + PAGE_SIZE as usize]);
        }
        return Ok(());
    }
    let bad = |message: String| SnapshotError::Pages {
        file: name.to_string(),
        message,
    };
    let mut decoder = zstd::stream::read::Decoder::with_buffer(&bytes[data_start as usize..])
        .map_err(|e| bad(format!("zstd: {e}")))?
        .single_frame();
    let mut page_buf = vec![0u8; PAGE_SIZE as usize];
    for k in 0..count {
        let page = u64_at(bytes, PAGES_HEADER + 8 * k);
        std::io::Read::read_exact(&mut decoder, &mut page_buf).map_err(|e| {
            bad(format!(
                "the page data ends or breaks at page {k} of {count}: {e}"
            ))
        })?;
        mem.write_bytes(page * PAGE_SIZE, &page_buf);
    }
    let mut extra = [0u8; 1];
    match std::io::Read::read(&mut decoder, &mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(bad(format!("the page data holds more than {count} pages"))),
        Err(e) => Err(bad(format!("zstd: {e}"))),
    }
}

/// Decompresses the pages of a pages file that [`check_pages`] accepted (the same checks
/// as [`apply_pages`]), into memory that fails to allocate as an error, not an abort.
fn expand_pages(name: &str, bytes: &[u8]) -> Result<ExpandedPages, SnapshotError> {
    let bad = |message: String| SnapshotError::Pages {
        file: name.to_string(),
        message,
    };
    let count = u64_at(bytes, 24);
    let data_start = PAGES_HEADER + 8 * count;
    let indices: Vec<u64> = (0..count)
        .map(|k| u64_at(bytes, PAGES_HEADER + 8 * k))
        .collect();
    let length = count * PAGE_SIZE;
    let mut data = Vec::new();
    data.try_reserve_exact(length as usize)
        .map_err(|_| SnapshotError::OutOfMemory(length))?;
    if u64_at(bytes, 8) == 1 {
        data.extend_from_slice(&bytes[data_start as usize..(data_start + length) as usize]);
        return Ok(ExpandedPages { indices, data });
    }
    data.resize(length as usize, 0);
    let mut decoder = zstd::stream::read::Decoder::with_buffer(&bytes[data_start as usize..])
        .map_err(|e| bad(format!("zstd: {e}")))?
        .single_frame();
    std::io::Read::read_exact(&mut decoder, &mut data).map_err(|e| {
        bad(format!(
            "the page data ends or breaks before {count} pages: {e}"
        ))
    })?;
    let mut extra = [0u8; 1];
    match std::io::Read::read(&mut decoder, &mut extra) {
        Ok(0) => Ok(ExpandedPages { indices, data }),
        Ok(_) => Err(bad(format!("the page data holds more than {count} pages"))),
        Err(e) => Err(bad(format!("zstd: {e}"))),
    }
}

/// The little-endian u64 at byte `at` (the caller checked the bounds).
fn u64_at(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a file's bytes against its manifest entry.
fn check_file(entry: &FileEntry, bytes: &[u8]) -> Result<(), SnapshotError> {
    if bytes.len() as u64 != entry.length {
        return Err(SnapshotError::FileLength {
            file: entry.name.clone(),
            expected: entry.length,
            actual: bytes.len() as u64,
        });
    }
    if <[u8; 32]>::from(Sha256::digest(bytes)) != entry.sha256 {
        return Err(SnapshotError::FileDigest(entry.name.clone()));
    }
    Ok(())
}

/// Reads the manifest's lines in their fixed order.
struct Lines<'a> {
    lines: Vec<&'a str>,
    next: usize,
}

impl<'a> Lines<'a> {
    fn err(&self, message: String) -> SnapshotError {
        SnapshotError::Manifest {
            line: self.next,
            message,
        }
    }

    /// The value of the next line, which must have key `key`.
    fn value(&mut self, key: &str) -> Result<&'a str, SnapshotError> {
        let Some(&line) = self.lines.get(self.next) else {
            return Err(SnapshotError::Manifest {
                line: self.next + 1,
                message: format!("the manifest ends where `{key}` was expected"),
            });
        };
        self.next += 1;
        match line.split_once(' ') {
            Some((k, v)) if k == key => Ok(v),
            None if line == key => Ok(""),
            _ => Err(self.err(format!("expected `{key}`, found {line:?}"))),
        }
    }

    fn number(&mut self, key: &str) -> Result<u64, SnapshotError> {
        let v = self.value(key)?;
        v.parse()
            .map_err(|_| self.err(format!("`{key}` is not a decimal number: {v:?}")))
    }

    fn text(&mut self, key: &str) -> Result<String, SnapshotError> {
        let v = self.value(key)?;
        unescape(v).ok_or_else(|| self.err(format!("`{key}` holds a bad escape: {v:?}")))
    }

    fn digest(&self, v: &str) -> Result<Hash, SnapshotError> {
        unhex(v).ok_or_else(|| self.err(format!("not a SHA-256 in hex: {v:?}")))
    }
}

/// Whether `text` ends with `checksum <sha256 of everything before that line>\nend\n`.
fn sealed(text: &str) -> bool {
    const KEY: &str = "checksum ";
    text.rfind("\nchecksum ").is_some_and(|at| {
        let tail = &text[at + 1..];
        tail.len() == KEY.len() + 64 + "\nend\n".len()
            && tail.ends_with("\nend\n")
            && unhex(&tail[KEY.len()..KEY.len() + 64]).is_some_and(|sum| {
                sum == <[u8; 32]>::from(Sha256::digest(&text.as_bytes()[..at + 1]))
            })
    })
}

/// Parses and checks a manifest (at most [`MAX_MANIFEST`] bytes): its syntax, seal, the
/// machine's sizes and layout, and the file list, so that the lengths it names bound what
/// the caller then reads.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, SnapshotError> {
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(SnapshotError::NotASnapshot {
            found: "(more than 1 MiB)".into(),
        });
    }
    let text = String::from_utf8_lossy(bytes);
    let text: &str = &text;
    let first = text.split('\n').next().unwrap_or_default();
    if first != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            found: first.chars().take(80).collect(),
        });
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut l = Lines {
        lines: body.split('\n').collect(),
        next: 1,
    };
    // Version and scheme first, so that a foreign snapshot is named as such.
    let version = match l.value("format-version")? {
        "1" => 1,
        "2" => 2,
        other => {
            return Err(SnapshotError::Version {
                found: other.to_string(),
            })
        }
    };
    let scheme = l.value("hash-scheme")?;
    if scheme != HASH_SCHEME {
        return Err(SnapshotError::Scheme {
            found: scheme.to_string(),
        });
    }
    // Every later field is covered by the checksum, so nothing corrupted is acted upon
    // (a corrupted length least of all).
    if !sealed(text) {
        return Err(SnapshotError::ManifestChecksum);
    }
    let root_hash = l.value("root-hash")?.to_string();
    let well_formed = root_hash
        .strip_prefix(HASH_SCHEME)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(unhex)
        .is_some_and(|h| root_hash_text(&h) == root_hash);
    if !well_formed {
        return Err(l.err(format!(
            "`root-hash` is not {HASH_SCHEME}:<64 lower-case hex>"
        )));
    }
    let mcycle = l.number("mcycle")?;
    let ram_length = l.number("ram-length")?;
    let bootargs = l.text("bootargs")?;
    let image_count = l.number("images")?;
    if image_count > 4 {
        return Err(l.err(format!("{image_count} images (at most 4)")));
    }
    let mut images = Vec::new();
    for _ in 0..image_count {
        let v = l.value("image")?;
        let parts: Vec<&str> = v.split(' ').collect();
        let [name, length, digest] = parts[..] else {
            return Err(l.err(format!("`image` wants NAME LENGTH SHA256, found {v:?}")));
        };
        images.push(ImageRecord {
            name: name.to_string(),
            length: length
                .parse()
                .map_err(|_| l.err(format!("bad image length {length:?}")))?,
            sha256: l.digest(digest)?,
        });
    }
    let drives = l.number("flash-drives")?;
    // A machine has a handful of drives; the bound keeps a corrupt count from allocating.
    if drives > 64 {
        return Err(l.err(format!("{drives} flash drives is not plausible")));
    }
    let mut flash_drives = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..drives {
        let index = l.number("flash-drive")?;
        if index != i {
            return Err(l.err(format!("flash drive {index} where {i} was expected")));
        }
        let label = l.text("label")?;
        let shared = match l.value("shared")? {
            "yes" => true,
            "no" => false,
            v => return Err(l.err(format!("`shared` is yes or no, not {v:?}"))),
        };
        let image_length = l.number("image-length")?;
        if image_length >= MEMORY_LIMIT {
            return Err(l.err(format!(
                "flash drive image length {image_length} is 64 GiB or more"
            )));
        }
        let start_text = l.value("start")?;
        let start = start_text
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| l.err(format!("`start` is not 0x-prefixed hex: {start_text:?}")))?;
        let range_length = l.number("range-length")?;
        if range_length >= MEMORY_LIMIT {
            return Err(l.err(format!(
                "flash drive range length {range_length} is 64 GiB or more"
            )));
        }
        if image_length > range_length {
            return Err(l.err(format!(
                "image length {image_length} exceeds the range length {range_length}"
            )));
        }
        // Ignored: see "Shared flash drives" in the module docs.
        l.text("host-file")?;
        let base = match version {
            1 => None,
            _ => Some(l.text("base")?).filter(|b| !b.is_empty()),
        };
        flash_drives.push(DriveRecord {
            label,
            image_length,
            shared,
            base,
        });
        ranges.push((start, range_length));
    }
    let mut expected_files = vec![
        "state".to_string(),
        "dtb".to_string(),
        "ram.pages".to_string(),
    ];
    expected_files.extend((0..drives).map(|i| format!("flash-{i}.pages")));
    let count = l.number("files")?;
    if count != expected_files.len() as u64 {
        return Err(l.err(format!(
            "{count} files listed, a machine with {drives} flash drives has {}",
            expected_files.len()
        )));
    }
    let mut files = Vec::new();
    for want in &expected_files {
        let v = l.value("file")?;
        let parts: Vec<&str> = v.split(' ').collect();
        let [name, length, digest] = parts[..] else {
            return Err(l.err(format!("`file` wants NAME LENGTH SHA256, found {v:?}")));
        };
        if name != want {
            return Err(l.err(format!("file {name:?} where {want:?} was expected")));
        }
        files.push(FileEntry {
            name: name.to_string(),
            length: length
                .parse()
                .map_err(|_| l.err(format!("bad length {length:?} of {name}")))?,
            sha256: l.digest(digest)?,
        });
    }
    l.value("checksum")?;
    l.value("end")?;
    if l.next != l.lines.len() {
        return Err(l.err("lines after `end`".into()));
    }
    let m = Manifest {
        root_hash,
        mcycle,
        config: SnapshotConfig {
            ram_length,
            bootargs,
            images,
            flash_drives,
        },
        ranges,
        files,
    };
    check_layout(&m)?;
    Ok(m)
}

/// Checks the sizes a manifest names against what this build would give the same
/// configuration, and bounds every file's length by what its contents can hold.
fn check_layout(m: &Manifest) -> Result<(), SnapshotError> {
    let ram_length = m.config.ram_length;
    if ram_length == 0 || ram_length % PAGE_SIZE != 0 || ram_length >= MEMORY_LIMIT {
        return Err(SnapshotError::Layout(format!(
            "RAM length {ram_length} is not a nonzero multiple of 4096 below 64 GiB"
        )));
    }
    let lengths: Vec<u64> = m
        .config
        .flash_drives
        .iter()
        .map(|d| d.image_length)
        .collect();
    let placed = crate::fdt::place_flash_drives(ram_length, &lengths);
    for (i, (&have, &want)) in m.ranges.iter().zip(&placed).enumerate() {
        if have != want {
            return Err(SnapshotError::Layout(format!(
                "flash drive {i} would be at {:#x} with {} bytes, the snapshot has it at {:#x} with {} bytes",
                want.0, want.1, have.0, have.1
            )));
        }
    }
    let range_lengths = std::iter::once(ram_length).chain(m.ranges.iter().map(|r| r.1));
    let mut limits = vec![MAX_STATE, DTB_SIZE];
    limits.extend(range_lengths.map(pages_file_limit));
    for (entry, limit) in m.files.iter().zip(limits) {
        if entry.length > limit {
            return Err(SnapshotError::Layout(if entry.name == "dtb" {
                format!(
                    "the device tree has {} bytes, more than its window",
                    entry.length
                )
            } else {
                format!(
                    "file {} is said to hold {} bytes, more than the {limit} it can",
                    entry.name, entry.length
                )
            }));
        }
    }
    Ok(())
}

/// `%XX` for `%`, bytes below 0x20 and 0x7f; everything else as is.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || (c as u32) < 0x20 || c as u32 == 0x7f {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for a malformed escape or raw control character.
fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b < 0x20 || b == 0x7f {
            return None;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    #[test]
    fn escapes_round_trip_and_keep_lines_single() {
        for s in ["", "console=hvc0 earlycon", "100%\n\r\t\x7f", "é ü"] {
            let e = escape(s);
            assert!(!e.contains('\n') && !e.contains('\r'));
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("a%b c"), "a%25b c");
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("a\tb"), None);
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_digests() {
        let h: Hash = Sha256::digest(b"x").into();
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("00"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }

    #[test]
    fn manifest_seal_covers_every_byte_before_it() {
        let body = format!("{MAGIC}\nformat-version 1\n");
        let text = format!(
            "{body}checksum {}\nend\n",
            hex(&Sha256::digest(body.as_bytes()))
        );
        assert!(sealed(&text));
        assert!(!sealed(&text.replace("version 1", "version 2")));
        assert!(!sealed(&text[..text.len() - 1]));
    }

    #[test]
    fn pages_files_hold_only_nonzero_pages_and_round_trip() {
        let mut mem = MemRange::new(0x8000_0000, 64 * PAGE_SIZE);
        mem.write_bytes(3 * PAGE_SIZE + 17, b"hello");
        mem.write_bytes(40 * PAGE_SIZE - 1, b"xy");
        let pieces = pages_pieces(&mem, None).unwrap();
        // Header and index (pages 3, 39 and 40), then the compressed data.
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len() as u64, PAGES_HEADER + 3 * 8);
        let file = pieces.concat();
        assert!(file.len() < 3 * PAGE_SIZE as usize, "{} bytes", file.len());
        let mut back = MemRange::new(0x8000_0000, 64 * PAGE_SIZE);
        check_pages("t", &file, back.len()).unwrap();
        apply_pages("t", &file, &mut back).unwrap();
        assert_eq!(back.bytes(), mem.bytes());
        assert_eq!(
            merkle::range_root(back.bytes()),
            merkle::range_root(mem.bytes())
        );
        // Out-of-order indices are refused.
        let mut bad = file.clone();
        bad[32..40].copy_from_slice(&50u64.to_le_bytes());
        let err = check_pages("t", &bad, back.len()).unwrap_err();
        assert!(
            err.to_string().contains("out of range or out of order"),
            "{err}"
        );
        // A pages file for another range length is refused.
        let err = check_pages("t", &file, 32 * PAGE_SIZE).unwrap_err();
        assert!(err.to_string().contains("covers"), "{err}");
    }

    /// A version-1 pages file (plain page data) of `mem`'s non-zero pages.
    fn v1_pages_file(mem: &MemRange) -> Vec<u8> {
        let pages: Vec<u64> = (0..mem.len() / PAGE_SIZE)
            .filter(|&p| !merkle::is_zero(&mem.bytes()[(p * PAGE_SIZE) as usize..][..4096]))
            .collect();
        let mut file = PAGES_MAGIC.to_vec();
        for v in [1, mem.len(), pages.len() as u64] {
            file.extend_from_slice(&u64::to_le_bytes(v));
        }
        for &p in &pages {
            file.extend_from_slice(&p.to_le_bytes());
        }
        for &p in &pages {
            file.extend_from_slice(&mem.bytes()[(p * PAGE_SIZE) as usize..][..4096]);
        }
        file
    }

    #[test]
    fn plain_version_1_pages_still_load_and_broken_frames_are_refused() {
        let mut mem = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
        mem.write_bytes(5 * PAGE_SIZE, b"old format");
        let v1 = v1_pages_file(&mem);
        let mut back = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
        check_pages("t", &v1, back.len()).unwrap();
        apply_pages("t", &v1, &mut back).unwrap();
        assert_eq!(back.bytes(), mem.bytes());

        let v2 = pages_pieces(&mem, None).unwrap().concat();
        // Cut short, or with a page more announced than the frame holds: refused.
        for bad in [v2[..v2.len() - 3].to_vec(), {
            let mut more = v2.clone();
            more[24..32].copy_from_slice(&2u64.to_le_bytes());
            more.splice(40..40, 9u64.to_le_bytes());
            more
        }] {
            let mut m = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
            let err = check_pages("t", &bad, m.len())
                .and_then(|()| apply_pages("t", &bad, &mut m))
                .unwrap_err();
            assert!(err.to_string().contains("page data"), "{err}");
        }
        // A frame holding more pages than announced: refused.
        let mut two = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
        two.write_bytes(2 * PAGE_SIZE, b"a");
        two.write_bytes(9 * PAGE_SIZE, b"b");
        let mut fewer = pages_pieces(&two, None).unwrap().concat();
        fewer[24..32].copy_from_slice(&1u64.to_le_bytes());
        fewer.drain(40..48);
        let mut m = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
        check_pages("t", &fewer, m.len()).unwrap();
        let err = apply_pages("t", &fewer, &mut m).unwrap_err();
        assert!(err.to_string().contains("more than 1 pages"), "{err}");

        // Decompressed up front (a prepared snapshot), each file gives the same pages and
        // each broken one the same refusal.
        for file in [&v1, &v2] {
            let expanded = expand_pages("t", file).unwrap();
            let mut back = MemRange::new(0x8000_0000, 16 * PAGE_SIZE);
            for (k, &page) in expanded.indices.iter().enumerate() {
                let at = k * PAGE_SIZE as usize;
                back.write_bytes(
                    page * PAGE_SIZE,
                    &expanded.data[at..at + PAGE_SIZE as usize],
                );
            }
            assert_eq!(back.bytes(), mem.bytes());
        }
        let err = expand_pages("t", &v2[..v2.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("page data"), "{err}");
        let err = expand_pages("t", &fewer).unwrap_err();
        assert!(err.to_string().contains("more than 1 pages"), "{err}");
    }

    /// A machine of `ram_length` bytes of RAM (one `wfi`) and one flash drive holding
    /// `base`, and its snapshot configuration naming that drive's base "the root image".
    fn machine_over_a_base(base: &[u8], ram_length: u64) -> (Machine, SnapshotConfig) {
        let config = MachineConfig {
            ram_length,
            ram_image: Some(vec![0x73, 0x00, 0x50, 0x10]),
            flash_drives: vec![crate::machine::FlashConfig {
                label: "root".into(),
                image: base.to_vec(),
                shared: false,
            }],
            ..MachineConfig::default()
        };
        let mut sc = SnapshotConfig::from_config(&config);
        sc.flash_drives[0].base = Some("the root image".into());
        (Machine::new(&config).unwrap(), sc)
    }

    #[test]
    fn a_drive_over_a_base_stores_only_its_differences() {
        let base: Vec<u8> = (0..(1u32 << 20) + 100).map(|i| (i % 253) as u8).collect();
        let (mut m, sc) = machine_over_a_base(&base, 1 << 20);
        m.bus.flash[0].mem.write_bytes(4096 * 7, b"changed");
        let hash = m.root_hash();
        assert!(matches!(
            encode(&mut m, &sc).unwrap_err(),
            SnapshotError::Base { index: 0, .. }
        ));
        let bases = BTreeMap::from([(0, &base[..])]);
        let files = encode_with_bases(&mut m, &sc, &bases).unwrap().to_map();
        // One page differs from the base: the drive's file is tiny.
        assert!(
            files["flash-0.pages"].len() < 8192,
            "{}",
            files["flash-0.pages"].len()
        );
        let manifest = parse_manifest(&files["manifest"]).unwrap();
        assert_eq!(
            manifest.config().flash_drives[0].base.as_deref(),
            Some("the root image")
        );
        let contents: Vec<&[u8]> = manifest
            .files()
            .iter()
            .map(|f| files[&f.name].as_slice())
            .collect();
        let mut loaded = load_with_bases(
            &manifest,
            &contents,
            BTreeMap::from([(0, Base::Bytes(base.clone()))]),
            HashCheck::Recompute,
        )
        .unwrap()
        .machine;
        assert_eq!(loaded.root_hash(), hash);
        assert_eq!(loaded.bus.flash[0].mem.bytes(), m.bus.flash[0].mem.bytes());
        // No base, or another one: refused.
        let err = load(&manifest, &contents).unwrap_err();
        assert!(err.to_string().contains("supplied no such base"), "{err}");
        let mut other = base.clone();
        other[100] ^= 1;
        let err = load_with_bases(
            &manifest,
            &contents,
            BTreeMap::from([(0, Base::Bytes(other.clone()))]),
            HashCheck::Recompute,
        )
        .unwrap_err();
        assert!(matches!(err, SnapshotError::RootHash { .. }), "{err}");
        // Trusted, the same load is not checked: the machine's own hash then differs.
        let mut unchecked = load_with_bases(
            &manifest,
            &contents,
            BTreeMap::from([(0, Base::Bytes(other))]),
            HashCheck::Trusted,
        )
        .unwrap()
        .machine;
        assert_ne!(unchecked.root_hash(), hash);

        // Prepared once, instantiated twice over host memory holding the base: the same
        // machine as loading, and the base's memory is used as it is (no copy).
        let prepared = Prepared::new(&manifest, &contents).unwrap();
        let range = m.bus.flash[0].mem.len() as usize;
        for _ in 0..2 {
            let memory = TestMemory::new(&base, range);
            let at = memory.as_ptr();
            let bases = BTreeMap::from([(
                0,
                Base::Memory {
                    image_length: base.len() as u64,
                    memory: Box::new(memory),
                },
            )]);
            let mut from_prepared = prepared
                .instantiate(bases, HashCheck::Recompute)
                .unwrap()
                .machine;
            assert!(from_prepared.bus.flash[0].mem.is_supplied());
            assert_eq!(
                from_prepared.bus.flash[0].mem.bytes().as_ptr(),
                at.cast_const()
            );
            assert_eq!(from_prepared.root_hash(), hash);
            assert_eq!(from_prepared.bus.ram, m.bus.ram);
            assert_eq!(
                from_prepared.bus.flash[0].mem.bytes(),
                m.bus.flash[0].mem.bytes()
            );
            // It runs on like the original.
            assert_eq!(from_prepared.mcycle(), m.mcycle());
        }
        // Memory of another length than the range, or a base of another length: refused.
        let bases = |memory: TestMemory, image_length: u64| {
            BTreeMap::from([(
                0,
                Base::Memory {
                    image_length,
                    memory: Box::new(memory),
                },
            )])
        };
        let short = TestMemory::new(&base, range - 4096);
        let err = prepared
            .instantiate(bases(short, base.len() as u64), HashCheck::Trusted)
            .unwrap_err();
        assert!(matches!(err, SnapshotError::Base { index: 0, .. }), "{err}");
        let err = prepared
            .instantiate(
                bases(TestMemory::new(&base, range), base.len() as u64 - 1),
                HashCheck::Trusted,
            )
            .unwrap_err();
        assert!(matches!(err, SnapshotError::Base { index: 0, .. }), "{err}");
        // Another base under the memory: the recomputed hash refuses it.
        let memory = TestMemory::new(&other_base(&base), range);
        let err = prepared
            .instantiate(bases(memory, base.len() as u64), HashCheck::Recompute)
            .unwrap_err();
        assert!(matches!(err, SnapshotError::RootHash { .. }), "{err}");
    }

    /// The page trees `Prepared::page_trees` builds from a snapshot's pages and bases,
    /// without a machine, are those of the machine `instantiate` builds (and of the
    /// original): RAM with pages scattered over it, a drive over a base with a page
    /// changed. Over another base they do not give the stored root hash, and are refused.
    #[test]
    fn page_trees_from_a_prepared_snapshot_are_the_machine_s_own() {
        let base: Vec<u8> = (0..(1u32 << 20) + 100).map(|i| (i % 251) as u8).collect();
        let (mut m, sc) = machine_over_a_base(&base, 4 << 20);
        for page in [3u64, 4, 700, 1023] {
            m.bus.ram.write_bytes(page * 4096 + 17, &page.to_le_bytes());
        }
        m.bus.flash[0].mem.write_bytes(4096 * 9, b"changed");
        let bases = BTreeMap::from([(0, &base[..])]);
        let files = encode_with_bases(&mut m, &sc, &bases).unwrap().to_map();
        let manifest = parse_manifest(&files["manifest"]).unwrap();
        let contents: Vec<&[u8]> = manifest
            .files()
            .iter()
            .map(|f| files[&f.name].as_slice())
            .collect();
        let prepared = Prepared::new(&manifest, &contents).unwrap();
        let with = |b: &[u8]| BTreeMap::from([(0, Base::Bytes(b.to_vec()))]);
        let trees = prepared.page_trees(with(&base)).unwrap();
        let mut machine = prepared
            .instantiate(with(&base), HashCheck::Recompute)
            .unwrap()
            .machine;
        assert_eq!(trees, machine.page_trees());
        assert_eq!(trees, m.page_trees());
        let err = prepared.page_trees(with(&other_base(&base))).unwrap_err();
        assert!(matches!(err, SnapshotError::RootHash { .. }), "{err}");
        // Given its base's tree, the drive's tree is that with the snapshot's page of the
        // drive set over it; given another base's, the stored root hash refuses it.
        let range = m.bus.flash[0].mem.bytes().len() as u64;
        let given = |b: &[u8]| BTreeMap::from([(0, PageTree::build_in(b, range))]);
        let over = prepared.page_trees_over(with(&base), given(&base)).unwrap();
        assert_eq!(over, trees);
        let err = prepared
            .page_trees_over(with(&base), given(&other_base(&base)))
            .unwrap_err();
        assert!(matches!(err, SnapshotError::RootHash { .. }), "{err}");
    }

    fn other_base(base: &[u8]) -> Vec<u8> {
        let mut other = base.to_vec();
        other[5000] ^= 0x40;
        other
    }

    /// Host memory for tests: a leaked-then-reclaimed boxed slice.
    #[derive(Debug)]
    struct TestMemory {
        ptr: *mut u8,
        len: usize,
    }

    // SAFETY: the bytes are owned by this value alone.
    unsafe impl Send for TestMemory {}
    // SAFETY: shared access only reads.
    unsafe impl Sync for TestMemory {}

    impl TestMemory {
        /// `len` bytes: `base`, then zeros.
        fn new(base: &[u8], len: usize) -> Self {
            let mut bytes = vec![0u8; len].into_boxed_slice();
            let n = base.len().min(len);
            bytes[..n].copy_from_slice(&base[..n]);
            let len = bytes.len();
            Self {
                ptr: Box::into_raw(bytes).cast::<u8>(),
                len,
            }
        }
    }

    impl Drop for TestMemory {
        fn drop(&mut self) {
            // SAFETY: `ptr` and `len` come from `Box::into_raw` of a boxed slice in `new`.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
        }
    }

    // SAFETY: `ptr` is valid for `len` bytes until drop and only the range uses it; `len` is
    // a whole number of pages in these tests.
    unsafe impl HostMemory for TestMemory {
        fn as_ptr(&self) -> *mut u8 {
            self.ptr
        }
        fn length(&self) -> usize {
            self.len
        }
    }
}
