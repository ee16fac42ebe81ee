//! The template machine: the guest image booted once to its ready point, kept in the
//! mirror, and resumed by every build.
//!
//! # The ready point
//! The build driver (`guest-image/build-driver.sh`), once the root is mounted and the
//! toolchain answers (`rustc -V`, `cargo -V`), drops the block caches of the input, output
//! and scratch drives and yields to the host: an HTIF yield (device 2, command 0, written
//! through `/dev/mem`), which makes [`Machine::run`] return [`Break::Yielded`] right after
//! the storing instruction, at an `mcycle` that depends on the image and the machine
//! settings only. Up to there no byte of the input, output or scratch drive was read but
//! the kernel's partition scan at probe, whose cached (zero) pages the driver drops on both
//! sides of the yield; the drives have the fixed sizes of [`MachineSettings`], so the
//! device tree (and its rng seed, computed over the empty drives) is the template's.
//!
//! # What is kept
//! The machine at the ready point is snapshotted (`cmbuild_machine::snapshot`, format 2:
//! zstd-compressed pages; the root drive stored as a base named by the root image's CID, so
//! the template holds only RAM, the device state and the few pages that differ from
//! zeros). The snapshot's files go into one deterministic tar ([`pack`]), stored in the
//! mirror by CID; `<mirror>/templates/<sha256 of the key>.json` ([`TemplateRecord`]) maps
//! the template's key ([`template_key`]: the image's CIDs, the boot arguments, the machine
//! settings, the hash scheme, the snapshot format and cmbuild's version) to that CID and to
//! the template's state hash, the **template hash**.
//!
//! # Resuming
//! [`obtain`] finds the template in the mirror (derives it by booting when it is missing,
//! refused or does not match the pinned template hash), [`resume`] loads it (the state
//! hash is recomputed over everything loaded and compared with the record), and the build
//! writes its input drive before running on. The guest goes on right after its yield and
//! reads the input drive. A build's root hash is the state hash of the machine that
//! started from the template (whose hash `machine.json` records as `template_hash`) with
//! that input drive: identical whether the template was derived just now or loaded.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cmbuild_machine::devices::htif::YIELD_DEVICE;
use cmbuild_machine::machine::{Break, Machine, HASH_SCHEME};
use cmbuild_machine::memory::MemRange;
use cmbuild_machine::snapshot::{self, HashCheck, SnapshotConfig, SnapshotError};
use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use crate::guest::{Drive, GuestImage, MachineSettings, BOOTARGS};
use crate::mapped::DriveImage;

/// A guest that has not reached its ready point by this mcycle never will (a boot takes
/// about 2e9).
pub const MAX_READY_MCYCLE: u64 = 100_000_000_000;

/// The data of the guest's ready-point yield (`tohost = 2 << 56 | 0`).
pub const READY_YIELD: u64 = 0;

/// Identifies the record format.
pub const RECORD_SCHEMA: &str = "cmbuild-template-v1";

/// Largest template blob read back (RAM of a booted guest, compressed).
const MAX_TEMPLATE_BLOB: u64 = 8 << 30;

/// The pin of the template hash of the default machine settings in `digests.lock.env`.
pub const TEMPLATE_PIN: &str = "GUEST_TEMPLATE_HASH";

/// The pin of the offloading build machines' template (the default settings with the
/// offload channel, `crate::run::OFFLOAD_LATENCY`) in `digests.lock.env`.
pub const PARENT_TEMPLATE_PIN: &str = "GUEST_PARENT_TEMPLATE_HASH";

/// A pinned template hash and the pin that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin<'a> {
    /// The pin's key ([`TEMPLATE_PIN`] or [`PARENT_TEMPLATE_PIN`]).
    pub key: &'static str,
    /// The hash it pins.
    pub hash: &'a str,
}

impl Pin<'_> {
    /// `Err` unless `derived` is the pinned hash.
    fn check(&self, derived: &str) -> Result<(), TemplateError> {
        match self.hash == derived {
            true => Ok(()),
            false => Err(TemplateError::PinMismatch {
                pin: self.key,
                pinned: self.hash.to_owned(),
                derived: derived.to_owned(),
            }),
        }
    }
}

/// Why a template could not be derived, stored or resumed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// the guest used the offload channel (tag {0}) before its ready point
    #[error("the guest used the offload channel (tag {0}) before its ready point")]
    OffloadBeforeReady(u64),
    /// the template machine could not be built: {0}
    #[error("the template machine could not be built: {0}")]
    Machine(String),
    /// the guest image halted (exit code {code}) before its ready point; last console lines:\n{console}
    #[error("the guest image halted (exit code {code}) before its ready point; last console lines:\n{console}")]
    Halted {
        /// The exit code.
        code: u64,
        /// The end of the console.
        console: String,
    },
    /// the guest image did not reach its ready point within {0} cycles; last console lines:\n{1}
    #[error(
        "the guest image did not reach its ready point within {0} cycles; last console lines:\n{1}"
    )]
    NotReady(u64, String),
    /// the guest yielded with {0:#x}, not the ready point's {READY_YIELD:#x}
    #[error("the guest yielded with {0:#x}, not the ready point's {READY_YIELD:#x}")]
    UnexpectedYield(u64),
    /// the template snapshot
    #[error("the template snapshot")]
    Snapshot(#[from] SnapshotError),
    /// the template blob is malformed: {0}
    #[error("the template blob is malformed: {0}")]
    Blob(String),
    /// the mirror
    #[error("the mirror")]
    Mirror(#[from] cmbuild_store::mirror::MirrorError),
    /// cannot {0} {1}
    #[error("cannot {0} {1}")]
    Io(&'static str, PathBuf, #[source] std::io::Error),
    /// the template record {0} is malformed: {1}
    #[error("the template record {0} is malformed: {1}")]
    Record(PathBuf, String),
    /// the template derived from this image has hash {derived}, but {pin} pins {pinned}
    #[error("the template derived from this image has hash {derived}, but {pin} pins {pinned} (a different image, cmbuild or machine; `cmbuild image template` re-pins it)")]
    PinMismatch {
        /// The pin's key.
        pin: &'static str,
        /// The pinned hash.
        pinned: String,
        /// The hash derived.
        derived: String,
    },
    /// the input ({len} bytes) is larger than the input drive ({max} bytes); raise --input-mib
    #[error(
        "the input ({len} bytes) is larger than the input drive ({max} bytes); raise --input-mib"
    )]
    InputTooLarge {
        /// The input's length.
        len: u64,
        /// The drive's length.
        max: u64,
    },
    /// the glibc floor's sysroots ({len} bytes) do not fit the scratch drive ({max} bytes)
    #[error("the glibc floor's sysroots ({len} bytes) do not fit the scratch drive ({max} bytes)")]
    ScratchTooSmall {
        /// The image's length.
        len: u64,
        /// The drive's length.
        max: u64,
    },
}

/// The image's content IDs a template is derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCids {
    /// `vmlinux`.
    pub kernel: Cid,
    /// `fw_jump.bin`.
    pub firmware: Cid,
    /// `initramfs.cpio`.
    pub initrd: Cid,
    /// `rootfs.erofs` (also the name of the root drive's base in the snapshot).
    pub rootfs: Cid,
    /// The selected toolchain's layer (also the name of the toolchain drive's base).
    pub toolchain: Cid,
}

/// The text that identifies a template: everything it is a function of. Two builds with
/// the same key resume from the same template.
pub fn template_key(cids: &ImageCids, settings: &MachineSettings) -> String {
    format!(
        "{RECORD_SCHEMA}\ncmbuild {}\nhash-scheme {HASH_SCHEME}\nsnapshot-format {}\n\
         kernel {}\nfirmware {}\ninitrd {}\nrootfs {}\ntoolchain {}\nbootargs {BOOTARGS}\n\
         ram-length {}\ninput-length {}\noutput-length {}\nscratch-length {}\n",
        env!("CARGO_PKG_VERSION"),
        snapshot::FORMAT_VERSION,
        cids.kernel,
        cids.firmware,
        cids.initrd,
        cids.rootfs,
        cids.toolchain,
        settings.ram_length,
        settings.input_length,
        settings.output_length,
        settings.scratch_length,
    ) + &match settings.offload_latency {
        // Only a parent of an offloaded build has the channel; every other key is as it
        // was before the channel existed.
        Some(latency) => format!("offload-latency {latency}\n"),
        None => String::new(),
    }
}

/// What `<mirror>/templates/<key digest>.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRecord {
    /// Always [`RECORD_SCHEMA`].
    pub schema: String,
    /// [`template_key`].
    pub key: String,
    /// The template blob's CID in the mirror.
    pub cid: Cid,
    /// The template hash (the state hash at the ready point).
    pub root_hash: String,
    /// `mcycle` at the ready point.
    pub mcycle: u64,
}

/// A template ready to resume: its blob, hash and CID.
#[derive(Clone, Debug)]
pub struct Template {
    /// The packed snapshot ([`pack`]).
    pub blob: Vec<u8>,
    /// Its record.
    pub record: TemplateRecord,
    /// Whether it was derived (booted) now rather than found in the mirror.
    pub derived: bool,
    /// The blob unpacked, checked and decompressed, once for every machine resumed from it
    /// ([`Template::prepare`]).
    prepared: OnceLock<Arc<snapshot::Prepared>>,
    /// The page trees of the state hash at the ready point ([`Template::resume`]).
    trees: Arc<std::sync::Mutex<ReadyTrees>>,
}

/// The page trees of a machine at the ready point, for every later machine resumed with
/// the same drive images.
#[derive(Clone, Default)]
enum ReadyTrees {
    /// Not asked for yet.
    #[default]
    None,
    /// Built, but they did not give the record's hash: not used, not built again.
    Refused,
    /// Being built, on a thread of their own.
    Building,
    /// Built, with the drive images they were built with.
    Built {
        rootfs: DriveImage,
        toolchain: DriveImage,
        trees: Vec<cmbuild_machine::merkle::PageTree>,
    },
}

impl ReadyTrees {
    /// The trees, if built with these drive images.
    fn for_images(
        &self,
        rootfs: &DriveImage,
        toolchain: &DriveImage,
    ) -> Option<&Vec<cmbuild_machine::merkle::PageTree>> {
        match self {
            ReadyTrees::Built {
                rootfs: r,
                toolchain: t,
                trees,
            } if r.same(rootfs) && t.same(toolchain) => Some(trees),
            _ => None,
        }
    }
}

impl std::fmt::Debug for ReadyTrees {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyTrees::None => write!(f, "None"),
            ReadyTrees::Refused => write!(f, "Refused"),
            ReadyTrees::Building => write!(f, "Building"),
            ReadyTrees::Built { trees, .. } => write!(f, "Built({} page trees)", trees.len()),
        }
    }
}

impl Template {
    fn new(blob: Vec<u8>, record: TemplateRecord, derived: bool) -> Self {
        Self {
            blob,
            record,
            derived,
            prepared: OnceLock::new(),
            trees: Default::default(),
        }
    }

    /// The blob unpacked, its files checked against its manifest and its pages decompressed:
    /// done on the first call, kept for every later [`Template::resume`].
    pub fn prepare(&self) -> Result<&snapshot::Prepared, TemplateError> {
        if let Some(prepared) = self.prepared.get() {
            return Ok(prepared);
        }
        let prepared = Arc::new(prepare_blob(&self.blob)?);
        Ok(self.prepared.get_or_init(|| prepared))
    }

    /// A machine at the ready point ([`resume_with_config`]'s, with [`HashCheck::Trusted`]),
    /// from the prepared template: its RAM is copied from the decompressed pages and its root
    /// and toolchain drives map `rootfs` and `toolchain` copy-on-write, so this costs little
    /// more than the copy of the RAM the guest had used.
    ///
    /// The page trees of the state hash are built once, on a thread of their own, from the
    /// template's pages and the drive images (`snapshot::Prepared::page_trees`: no second
    /// machine, and kept only if they give the record's hash); every machine resumed after
    /// that with the same drive images takes a copy, so that its hashes rehash only what it
    /// wrote. (A sibling machine's root hash at its halt would otherwise rehash the root
    /// and toolchain drives every time.)
    pub fn resume(
        &self,
        rootfs: &DriveImage,
        toolchain: &DriveImage,
    ) -> Result<(Machine, SnapshotConfig), TemplateError> {
        let prepared = self.prepare()?;
        let (mut machine, config) = instantiate(
            prepared,
            rootfs,
            toolchain,
            &self.record.root_hash,
            HashCheck::Trusted,
        )?;
        // A machine resumed before the trees are ready takes them at its first hash if
        // they are ready by then.
        let late = || -> cmbuild_machine::machine::LateTrees {
            let (slot, rootfs, toolchain) = (self.trees.clone(), rootfs.clone(), toolchain.clone());
            Box::new(move || {
                let ready = slot.lock().expect("no panics hold this lock");
                ready.for_images(&rootfs, &toolchain).cloned()
            })
        };
        let mut ready = self.trees.lock().expect("no panics hold this lock");
        if let Some(trees) = ready.for_images(rootfs, toolchain) {
            machine
                .adopt_page_trees(trees.clone())
                .map_err(|e| TemplateError::Machine(e.to_string()))?;
            return Ok((machine, config));
        }
        match &*ready {
            ReadyTrees::Building => machine.count_writes_from_here(late()),
            ReadyTrees::Refused => {}
            _ => {
                machine.count_writes_from_here(late());
                *ready = ReadyTrees::Building;
                let prepared = self.prepared.get().expect("prepared above").clone();
                let (rootfs, toolchain) = (rootfs.clone(), toolchain.clone());
                let (expected, slot) = (self.record.root_hash.clone(), self.trees.clone());
                std::thread::spawn(move || {
                    // From the template's pages and the drive images, with no second
                    // machine (its RAM would be gigabytes, allocated and written while the
                    // first build runs); checked against the record's root hash.
                    // The drives' trees are the images' own, shared with the run's other
                    // template (`DriveImage::page_tree`).
                    let built = drive_bases(&prepared, &rootfs, &toolchain)
                        .ok()
                        .filter(|_| prepared.manifest().root_hash() == expected)
                        .and_then(|bases| {
                            let trees = drive_trees(&prepared, &rootfs, &toolchain);
                            prepared.page_trees_over(bases, trees).ok()
                        });
                    *slot.lock().expect("no panics hold this lock") = match built {
                        Some(trees) => ReadyTrees::Built {
                            rootfs,
                            toolchain,
                            trees,
                        },
                        None => ReadyTrees::Refused,
                    };
                });
            }
        }
        Ok((machine, config))
    }
}

/// Where the record of `key` lives.
pub fn record_path(mirror: &Mirror, key: &str) -> PathBuf {
    mirror
        .root()
        .join("templates")
        .join(format!("{}.json", Sha256::of(key.as_bytes())))
}

/// Boots the image with `settings` to its ready point. Returns the machine there and the
/// snapshot configuration to store it with (the root and toolchain drives as bases, named
/// by their CIDs).
/// `console` receives the guest's console output as it comes.
/// `jit` false runs the interpreter alone (the result is the same).
pub fn boot_to_ready(
    image: &GuestImage,
    cids: &ImageCids,
    settings: &MachineSettings,
    jit: bool,
    console: &mut dyn FnMut(&[u8]),
) -> Result<(Machine, SnapshotConfig), TemplateError> {
    let config = settings.machine_config(image);
    let mut snapshot_config = SnapshotConfig::from_config(&config);
    snapshot_config.flash_drives[Drive::Root.index()].base = Some(cids.rootfs.to_string());
    snapshot_config.flash_drives[Drive::Toolchain.index()].base = Some(cids.toolchain.to_string());
    let mut machine =
        Machine::from_config(config).map_err(|e| TemplateError::Machine(e.to_string()))?;
    machine.hart.set_jit(jit);
    let mut tail = Vec::new();
    loop {
        let limit = (machine.mcycle() + 200_000_000).min(MAX_READY_MCYCLE);
        let stop = machine.run(limit);
        let bytes = machine.drain_console();
        console(&bytes);
        tail.extend_from_slice(&bytes);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
        let tail_text = || crate::terminal::sanitize(&String::from_utf8_lossy(&tail));
        match stop {
            Break::Yielded(READY_YIELD) => return Ok((machine, snapshot_config)),
            Break::Yielded(other) => return Err(TemplateError::UnexpectedYield(other)),
            Break::Halted(code) => {
                return Err(TemplateError::Halted {
                    code,
                    console: tail_text(),
                })
            }
            Break::MaxMcycle if machine.mcycle() >= MAX_READY_MCYCLE => {
                return Err(TemplateError::NotReady(MAX_READY_MCYCLE, tail_text()))
            }
            Break::MaxMcycle => {}
            // Nothing before the ready point may use the offload channel.
            Break::OffloadRequest(tag) | Break::OffloadWaiting(tag) => {
                return Err(TemplateError::OffloadBeforeReady(tag))
            }
        }
    }
}

/// Packs a machine at its ready point into a template blob: the snapshot's files as one
/// deterministic tar (in the snapshot's file order, mode 0644, owner 0, mtime 0), so that
/// `tar -x` of it is a snapshot directory `cmbuild machine run --load` reads. Returns the
/// blob and the state hash.
pub fn pack(
    machine: &mut Machine,
    config: &SnapshotConfig,
    image: &GuestImage,
) -> Result<(Vec<u8>, String), TemplateError> {
    let bases = BTreeMap::from([
        (Drive::Root.index(), &image.rootfs[..]),
        (Drive::Toolchain.index(), &image.toolchain[..]),
    ]);
    let encoded = snapshot::encode_with_bases(machine, config, &bases)?;
    let mut tar = tar::Builder::new(Vec::new());
    for file in &encoded.files {
        let mut header = tar::Header::new_ustar();
        header.set_size(file.length);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        let reader = ChainedPieces {
            pieces: &file.pieces,
            at: 0,
            offset: 0,
        };
        tar.append_data(&mut header, &file.name, reader)
            .map_err(|e| TemplateError::Blob(e.to_string()))?;
    }
    let blob = tar
        .into_inner()
        .map_err(|e| TemplateError::Blob(e.to_string()))?;
    Ok((blob, encoded.root_hash))
}

/// Reads the pieces of a snapshot file one after another.
struct ChainedPieces<'a, 'b> {
    pieces: &'a [std::borrow::Cow<'b, [u8]>],
    at: usize,
    offset: usize,
}

impl Read for ChainedPieces<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(piece) = self.pieces.get(self.at) {
            if self.offset < piece.len() {
                let n = buf.len().min(piece.len() - self.offset);
                buf[..n].copy_from_slice(&piece[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            self.at += 1;
            self.offset = 0;
        }
        Ok(0)
    }
}

/// Splits a template blob into its files (regular files with plain names only, each at
/// most as long as the blob).
fn unpack(blob: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, TemplateError> {
    let bad = |m: String| TemplateError::Blob(m);
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(blob);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("an entry is not a regular file".into()));
        }
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.');
        if !plain || files.contains_key(&name) || files.len() >= 64 {
            return Err(bad(format!("unexpected entry {name:?}")));
        }
        let size = entry.size();
        if size > blob.len() as u64 {
            return Err(bad(format!("entry {name} claims {size} bytes")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(e.to_string()))?;
        files.insert(name, bytes);
    }
    Ok(files)
}

/// Loads a template blob into a machine at the ready point; the root and toolchain drives'
/// bases are `rootfs` and `toolchain` (moved in). Every check of `cmbuild_machine::snapshot`, and the snapshot's
/// state hash must be `expected`. With [`HashCheck::Recompute`] that hash is recomputed over
/// everything loaded (seconds: the root image and gigabytes of RAM and drives);
/// [`HashCheck::Trusted`] is for a blob read by its CID from the mirror under a record
/// [`obtain`] checked (and, for the default settings, against the pinned template hash),
/// whose root image was checked against its pin: the build's final state hash, computed
/// over everything, covers all of it anyway.
pub fn resume(
    blob: &[u8],
    rootfs: &DriveImage,
    toolchain: &DriveImage,
    expected: &str,
    check: HashCheck,
) -> Result<Machine, TemplateError> {
    resume_with_config(blob, rootfs, toolchain, expected, check).map(|(machine, _)| machine)
}

/// [`resume`], also returning the configuration the snapshot records, with no base (what a
/// snapshot of the resumed machine, written whole, records).
pub fn resume_with_config(
    blob: &[u8],
    rootfs: &DriveImage,
    toolchain: &DriveImage,
    expected: &str,
    check: HashCheck,
) -> Result<(Machine, SnapshotConfig), TemplateError> {
    instantiate(&prepare_blob(blob)?, rootfs, toolchain, expected, check)
}

/// Unpacks a template blob and prepares its snapshot (files checked, pages decompressed).
fn prepare_blob(blob: &[u8]) -> Result<snapshot::Prepared, TemplateError> {
    let files = unpack(blob)?;
    let manifest = files
        .get("manifest")
        .ok_or_else(|| TemplateError::Blob("no manifest".into()))?;
    let m = snapshot::parse_manifest(manifest)?;
    let contents = m
        .files()
        .iter()
        .map(|e| {
            files
                .get(&e.name)
                .map(Vec::as_slice)
                .ok_or_else(|| TemplateError::Blob(format!("no file {}", e.name)))
        })
        .collect::<Result<Vec<&[u8]>, _>>()?;
    Ok(snapshot::Prepared::new(&m, &contents)?)
}

/// A machine from a prepared template, over the root and toolchain drive images; the
/// snapshot's hash must be `expected`.
fn instantiate(
    prepared: &snapshot::Prepared,
    rootfs: &DriveImage,
    toolchain: &DriveImage,
    expected: &str,
    check: HashCheck,
) -> Result<(Machine, SnapshotConfig), TemplateError> {
    let loaded = prepared.instantiate(drive_bases(prepared, rootfs, toolchain)?, check)?;
    if loaded.root_hash != expected {
        return Err(TemplateError::Blob(format!(
            "it holds the state {}, its record says {expected}",
            loaded.root_hash
        )));
    }
    let mut config = loaded.config;
    for drive in &mut config.flash_drives {
        drive.base = None;
    }
    Ok((loaded.machine, config))
}

/// The root and toolchain drives' bases for machines of the template: `rootfs` and
/// `toolchain` mapped over their ranges.
fn drive_bases(
    prepared: &snapshot::Prepared,
    rootfs: &DriveImage,
    toolchain: &DriveImage,
) -> Result<BTreeMap<usize, snapshot::Base>, TemplateError> {
    let m = prepared.manifest();
    let mut bases = BTreeMap::new();
    for (drive, image) in [(Drive::Root, rootfs), (Drive::Toolchain, toolchain)] {
        let range = m
            .drive_range_length(drive.index())
            .ok_or_else(|| TemplateError::Blob(format!("no drive {}", drive.index())))?;
        let base = image
            .base(range)
            .map_err(|e| TemplateError::Blob(crate::terminal::error_chain(&e)))?;
        bases.insert(drive.index(), base);
    }
    Ok(bases)
}

/// The page trees of the root and toolchain drives holding `rootfs` and `toolchain` (by
/// drive index), for [`snapshot::Prepared::page_trees_over`]; a drive whose range the
/// manifest lacks, or too short for its image, has none (then its tree is built there, and
/// fails as `page_trees` would).
fn drive_trees(
    prepared: &snapshot::Prepared,
    rootfs: &DriveImage,
    toolchain: &DriveImage,
) -> BTreeMap<usize, cmbuild_machine::merkle::PageTree> {
    let m = prepared.manifest();
    [(Drive::Root, rootfs), (Drive::Toolchain, toolchain)]
        .into_iter()
        .filter_map(|(drive, image)| {
            let range = m.drive_range_length(drive.index())?;
            Some((drive.index(), image.page_tree(range)?))
        })
        .collect()
}

/// Writes `input` onto the input drive of a machine resumed from the template, and
/// answers the guest's yield: HTIF `fromhost` = `2 << 56 | input length` (the input is an
/// EROFS image the driver mounts; the length tells how much of the drive it fills).
pub fn fill_input(machine: &mut Machine, input: &[u8]) -> Result<(), TemplateError> {
    let drive = &mut machine.bus.flash[Drive::Input.index()];
    if input.len() as u64 > drive.image_length {
        return Err(TemplateError::InputTooLarge {
            len: input.len() as u64,
            max: drive.image_length,
        });
    }
    drive.mem.write_bytes(0, input);
    machine.bus.devices.htif.fromhost = (YIELD_DEVICE << 56) | input.len() as u64;
    Ok(())
}

/// Puts `image` (a glibc floor's sysroots, `crate::floor`; a container build's layer) on
/// the scratch drive of a machine resumed from the template, before it runs on. The
/// template's scratch drive is zeros and the guest drops its cache of it after the yield,
/// like the input's. A mapped image becomes the drive's memory as a private copy-on-write
/// mapping, with the image's page tree (`Machine::replace_drive`): the machines of a run
/// share its host pages and none hashes it again; bytes in memory are copied in.
pub fn fill_scratch(machine: &mut Machine, image: &DriveImage) -> Result<(), TemplateError> {
    let index = Drive::Scratch.index();
    let drive = &mut machine.bus.flash[index];
    if image.len() as u64 > drive.image_length {
        return Err(TemplateError::ScratchTooSmall {
            len: image.len() as u64,
            max: drive.image_length,
        });
    }
    let (start, range) = (drive.mem.start, drive.mem.len());
    let mapping = |e: &(dyn std::error::Error + 'static)| {
        TemplateError::Machine(crate::terminal::error_chain(e))
    };
    match image.private_memory(range).map_err(|e| mapping(&e))? {
        Some(memory) => {
            let mem = MemRange::from_host_memory(start, memory)
                .ok_or_else(|| TemplateError::Machine("a scratch range of partial pages".into()))?;
            let tree = image
                .page_tree(range)
                .ok_or(TemplateError::ScratchTooSmall {
                    len: image.len() as u64,
                    max: range,
                })?;
            machine
                .replace_drive(index, mem, tree)
                .map_err(|e| mapping(&e))?;
        }
        None => {
            drive.mem.write_bytes(0, image);
        }
    }
    Ok(())
}

/// What [`obtain`] reports as it goes.
pub enum Event<'a> {
    /// A line worth telling the user.
    Note(String),
    /// Console bytes of the template being booted.
    Console(&'a [u8]),
}

/// The template of `image` with `settings`: from the mirror if a valid one is recorded
/// there (and matches `pinned`, when given), else derived by booting, stored in the mirror
/// and recorded. `pinned` is the template hash the pins name for these settings, if any: a
/// derived template that differs from it is an error.
pub fn obtain(
    mirror: &Mirror,
    image: &GuestImage,
    cids: &ImageCids,
    settings: &MachineSettings,
    pinned: Option<Pin<'_>>,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Template, TemplateError> {
    let key = template_key(cids, settings);
    let path = record_path(mirror, &key);
    match read_record(mirror, &path, &key, pinned) {
        Ok(Some(template)) => return Ok(template),
        Ok(None) => {}
        Err(e) => events(Event::Note(format!(
            "the template recorded in {} is refused ({}); deriving it again",
            path.display(),
            crate::terminal::error_chain(&e)
        ))),
    }
    events(Event::Note(
        "deriving the template machine: booting the guest image to its ready point (first use)"
            .into(),
    ));
    let template = derive(mirror, image, cids, settings, events)?;
    if let Some(pinned) = pinned {
        pinned.check(&template.record.root_hash)?;
    }
    Ok(template)
}

/// Boots the template, stores it in the mirror and records it (whatever was recorded for
/// its key before is replaced).
pub fn derive(
    mirror: &Mirror,
    image: &GuestImage,
    cids: &ImageCids,
    settings: &MachineSettings,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Template, TemplateError> {
    derive_with(mirror, image, cids, settings, true, events)
}

/// [`derive`], with the translator on or off (`jit`).
pub fn derive_with(
    mirror: &Mirror,
    image: &GuestImage,
    cids: &ImageCids,
    settings: &MachineSettings,
    jit: bool,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Template, TemplateError> {
    let key = template_key(cids, settings);
    let (mut machine, config) = boot_to_ready(image, cids, settings, jit, &mut |bytes| {
        events(Event::Console(bytes))
    })?;
    let mcycle = machine.mcycle();
    let (blob, root_hash) = pack(&mut machine, &config, image)?;
    drop(machine);
    let stored = mirror.put_bytes(&blob)?;
    let record = TemplateRecord {
        schema: RECORD_SCHEMA.to_owned(),
        key: key.clone(),
        cid: stored.cid,
        root_hash,
        mcycle,
    };
    let path = record_path(mirror, &key);
    cmbuild_store::atomic::write_json_atomically(&path, &record)
        .map_err(|e| TemplateError::Io(e.action, e.path, e.source))?;
    events(Event::Note(format!(
        "template machine ready at mcycle {mcycle}: {} (template {}, {} bytes, kept in the mirror)",
        record.root_hash,
        record.cid,
        blob.len()
    )));
    Ok(Template::new(blob, record, true))
}

/// The recorded template of `key`, if there is a record; its blob is read verified by
/// CID, and its hash must be the pinned one.
fn read_record(
    mirror: &Mirror,
    path: &Path,
    key: &str,
    pinned: Option<Pin<'_>>,
) -> Result<Option<Template>, TemplateError> {
    let text = match std::fs::read(path) {
        Ok(text) if text.len() <= 64 << 10 => text,
        Ok(_) => return Err(TemplateError::Record(path.into(), "too large".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TemplateError::Io("read", path.into(), e)),
    };
    let record: TemplateRecord = serde_json::from_slice(&text)
        .map_err(|e| TemplateError::Record(path.into(), e.to_string()))?;
    if record.schema != RECORD_SCHEMA || record.key != key {
        return Err(TemplateError::Record(
            path.into(),
            "it is not the record of this template's key".into(),
        ));
    }
    if let Some(pinned) = pinned {
        pinned.check(&record.root_hash)?;
    }
    let size = std::fs::metadata(mirror.blob_path(&record.cid))
        .map(|m| m.len())
        .unwrap_or(0);
    if size > MAX_TEMPLATE_BLOB {
        return Err(TemplateError::Blob(format!("{size} bytes")));
    }
    let blob = mirror.read_verified(&record.cid)?;
    // The snapshot's own manifest must name the recorded state (resuming then recomputes
    // that state hash over everything it loads).
    let files = unpack(&blob)?;
    let manifest = files
        .get("manifest")
        .ok_or_else(|| TemplateError::Blob("no manifest".into()))?;
    let stored = snapshot::parse_manifest(manifest)?.root_hash().to_owned();
    if stored != record.root_hash {
        return Err(TemplateError::Blob(format!(
            "it holds the state {stored}, its record says {}",
            record.root_hash
        )));
    }
    Ok(Some(Template::new(blob, record, false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_store::cid::cid_of_bytes;

    const T0: u32 = 5;
    const T1: u32 = 6;
    const T2: u32 = 7;
    const T3: u32 = 28;
    const A1: u32 = 11;

    fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
        (((imm as u32) & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
    }
    fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
        i_type(imm, rs1, 0, rd, 0x13)
    }
    fn slli(rd: u32, rs1: u32, sh: i32) -> u32 {
        i_type(sh, rs1, 1, rd, 0x13)
    }
    fn ld(rd: u32, rs1: u32) -> u32 {
        i_type(0, rs1, 3, rd, 0x03)
    }
    fn sd(rs2: u32, rs1: u32) -> u32 {
        (rs2 << 20) | (rs1 << 15) | (3 << 12) | 0x23
    }
    /// `rd = value` for a value below 2^31 whose low 12 bits are zero.
    fn lui(rd: u32, value: u32) -> u32 {
        value | (rd << 7) | 0x37
    }

    /// A tiny "guest image": firmware that yields at its ready point (data 0), then copies
    /// the input drive's first 8 bytes to the output drive and halts.
    fn tiny_image(settings: &MachineSettings) -> GuestImage {
        let rootfs = vec![0x5a; 4096];
        let toolchain = vec![0x7c; 4096];
        let lengths = [
            rootfs.len() as u64,
            settings.input_length,
            settings.output_length,
            settings.scratch_length,
            toolchain.len() as u64,
        ];
        let placed = cmbuild_machine::fdt::place_flash_drives(settings.ram_length, &lengths);
        let (input, output) = (placed[1].0, placed[2].0);
        let program = [
            lui(T0, 0x4000_8000),
            addi(T1, 0, 2),
            slli(T1, T1, 56),
            sd(T1, T0), // the ready point
            lui(T2, (input >> 1) as u32),
            slli(T2, T2, 1),
            ld(A1, T2),
            lui(T3, (output >> 1) as u32),
            slli(T3, T3, 1),
            sd(A1, T3),
            addi(T1, 0, 1),
            sd(T1, T0),  // halt 0
            0x0000_006f, // j .
        ];
        GuestImage {
            kernel: b"not a kernel".to_vec(),
            firmware: program.iter().flat_map(|w| w.to_le_bytes()).collect(),
            initrd: b"not an initrd".to_vec(),
            rootfs: rootfs.into(),
            toolchain: toolchain.into(),
        }
    }

    fn settings() -> MachineSettings {
        MachineSettings {
            ram_length: 64 << 20,
            input_length: 2 << 20,
            output_length: 2 << 20,
            scratch_length: 2 << 20,
            max_mcycle: 1 << 30,
            offload_latency: None,
        }
    }

    fn cids(image: &GuestImage) -> ImageCids {
        ImageCids {
            kernel: cid_of_bytes(&image.kernel),
            firmware: cid_of_bytes(&image.firmware),
            initrd: cid_of_bytes(&image.initrd),
            rootfs: cid_of_bytes(&image.rootfs),
            toolchain: cid_of_bytes(&image.toolchain),
        }
    }

    /// A machine resumed from `template`'s blob (decompressed anew, no page trees).
    fn resumed(template: &Template, image: &GuestImage) -> Machine {
        resume(
            &template.blob,
            &image.rootfs,
            &image.toolchain,
            &template.record.root_hash,
            HashCheck::Trusted,
        )
        .unwrap()
    }

    /// Waits until `template`'s page trees are built aside (a resume started them).
    fn wait_for_trees(template: &Template) {
        let mut waited = 0;
        while !matches!(*template.trees.lock().unwrap(), ReadyTrees::Built { .. }) {
            assert!(waited < 1000, "the trees were never built");
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
    }

    /// Resumes `template`, fills the input and runs to halt: (root hash, mcycle, output).
    fn build(template: &Template, image: &GuestImage, input: &[u8]) -> (String, u64, Vec<u8>) {
        finish(&mut resumed(template, image), input)
    }

    /// Fills the input of a resumed machine and runs it to halt: (root hash, mcycle, output).
    fn finish(m: &mut Machine, input: &[u8]) -> (String, u64, Vec<u8>) {
        fill_input(m, input).unwrap();
        assert_eq!(m.run(1 << 30), Break::Halted(0));
        let output = crate::guest::drive_bytes(m, Drive::Output)[..8].to_vec();
        (m.root_hash(), m.mcycle(), output)
    }

    #[test]
    fn a_template_is_derived_once_then_reused_and_both_give_the_same_build() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let s = settings();
        let image = tiny_image(&s);
        let cids = cids(&image);
        let mut notes = Vec::new();
        let first = obtain(&mirror, &image, &cids, &s, None, &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n)
            }
        })
        .unwrap();
        assert!(first.derived);
        assert_eq!(first.record.mcycle, 4, "the yield is the 4th instruction");
        let again = obtain(&mirror, &image, &cids, &s, None, &mut |_| {}).unwrap();
        assert!(!again.derived);
        assert_eq!(again.record, first.record);
        assert_eq!(again.blob, first.blob);
        // The blob is deterministic: derived again, it has the same CID.
        let third = derive(&mirror, &image, &cids, &s, &mut |_| {}).unwrap();
        assert_eq!(third.record, first.record);

        // A build resumed from the stored template ends like one that ran on from the boot.
        let input = 0x1122_3344_5566_7788u64.to_le_bytes();
        let from_mirror = build(&again, &image, &input);
        let (mut direct, _) = boot_to_ready(&image, &cids, &s, true, &mut |_| {}).unwrap();
        fill_input(&mut direct, &input).unwrap();
        assert_eq!(direct.run(1 << 30), Break::Halted(0));
        assert_eq!(
            (direct.root_hash(), direct.mcycle()),
            (from_mirror.0.clone(), from_mirror.1)
        );
        assert_eq!(from_mirror.2, input);
        assert_eq!(direct.bus.devices.htif.fromhost, (2 << 56) | 8);
        // The interpreter alone reaches the same ready point.
        let (mut interpreted, config) =
            boot_to_ready(&image, &cids, &s, false, &mut |_| {}).unwrap();
        assert_eq!(
            pack(&mut interpreted, &config, &image).unwrap().1,
            first.record.root_hash
        );
        // Another input, another root hash from the same template.
        assert_ne!(build(&again, &image, &[9; 8]).0, from_mirror.0);
        // Resumed from the prepared template (decompressed once), over drive images mapped
        // from files: the same build, twice.
        let files = tempfile::tempdir().unwrap();
        let map = |name: &str, bytes: &[u8]| {
            let path = files.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            DriveImage::map_verified(&path, &cid_of_bytes(bytes)).unwrap()
        };
        let mapped = GuestImage {
            rootfs: map("rootfs", &image.rootfs),
            toolchain: map("toolchain", &image.toolchain),
            ..image.clone()
        };
        assert!(mapped.rootfs.path().is_some());
        for _ in 0..2 {
            let (mut m, _) = again.resume(&mapped.rootfs, &mapped.toolchain).unwrap();
            assert!(m.bus.flash[Drive::Root.index()].mem.is_supplied());
            fill_input(&mut m, &input).unwrap();
            assert_eq!(m.run(1 << 30), Break::Halted(0));
            assert_eq!(
                (m.root_hash(), m.mcycle()),
                (from_mirror.0.clone(), from_mirror.1)
            );
        }
        // The page trees were built aside by then (or soon), and a machine resumed after
        // that takes a copy of them: its hashes are still those of its contents.
        wait_for_trees(&again);
        let (mut m, _) = again.resume(&mapped.rootfs, &mapped.toolchain).unwrap();
        assert_eq!(m.root_hash(), again.record.root_hash);
        fill_input(&mut m, &input).unwrap();
        assert_eq!(m.run(1 << 30), Break::Halted(0));
        assert_eq!(m.root_hash(), from_mirror.0);
        assert_eq!(
            m.root_hash_bytes(),
            m.root_hash_from_scratch(),
            "adopted trees"
        );
        // A machine resumed while the trees were being built counts its writes, and takes
        // the trees at its hash: the same hash, over what it wrote only.
        let built = std::mem::replace(&mut *again.trees.lock().unwrap(), ReadyTrees::Building);
        let (mut m, _) = again.resume(&mapped.rootfs, &mapped.toolchain).unwrap();
        assert!(m.awaits_page_trees());
        *again.trees.lock().unwrap() = built;
        fill_input(&mut m, &input).unwrap();
        assert_eq!(m.run(1 << 30), Break::Halted(0));
        assert_eq!(m.root_hash(), from_mirror.0);
        assert!(!m.awaits_page_trees());
        assert_eq!(m.root_hash_bytes(), m.root_hash_from_scratch());
        // An input larger than the drive is refused.
        let mut m = resume(
            &again.blob,
            &image.rootfs,
            &image.toolchain,
            &again.record.root_hash,
            HashCheck::Recompute,
        )
        .unwrap();
        assert_eq!(m.root_hash(), again.record.root_hash);
        assert!(matches!(
            fill_input(&mut m, &vec![1; (s.input_length + 1) as usize]),
            Err(TemplateError::InputTooLarge { .. })
        ));
    }

    /// A scratch image in a memory file becomes the scratch drive's memory (mapped, not
    /// copied) and gives the build the same root hash as the same bytes copied in: with the
    /// template's trees adopted at resume, with them taken late, and with none.
    #[test]
    fn a_mapped_scratch_image_builds_like_one_copied_in() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let s = settings();
        let image = tiny_image(&s);
        let template = obtain(&mirror, &image, &cids(&image), &s, None, &mut |_| {}).unwrap();
        let input = 7u64.to_le_bytes();
        let bytes: Vec<u8> = (0..(1 << 20) + 100).map(|i| (i % 253) as u8 + 1).collect();
        let halted = |m: &mut Machine| finish(m, &input).0;
        let mut copied = resumed(&template, &image);
        fill_scratch(&mut copied, &DriveImage::from(bytes.clone())).unwrap();
        assert!(!copied.bus.flash[Drive::Scratch.index()].mem.is_supplied());
        let expected = halted(&mut copied);
        assert_ne!(
            expected,
            build(&template, &image, &input).0,
            "the scratch counts"
        );

        let mapped = DriveImage::in_memory_file("test-scratch", &bytes).unwrap();
        assert!(mapped.path().is_none());
        assert_eq!(&mapped[..], &bytes[..]);
        // The template's trees, built aside after the first resume.
        drop(template.resume(&image.rootfs, &image.toolchain).unwrap());
        wait_for_trees(&template);
        let built = template.trees.lock().unwrap().clone();
        for trees in ["none", "late", "adopted"] {
            *template.trees.lock().unwrap() = match trees {
                "none" => ReadyTrees::Refused,
                "late" => ReadyTrees::Building,
                _ => built.clone(),
            };
            let (mut m, _) = template.resume(&image.rootfs, &image.toolchain).unwrap();
            assert_eq!(m.awaits_page_trees(), trees == "late");
            // Ready by the machine's first hash.
            *template.trees.lock().unwrap() = built.clone();
            fill_scratch(&mut m, &mapped).unwrap();
            let drive = &m.bus.flash[Drive::Scratch.index()].mem;
            assert!(drive.is_supplied(), "{trees}");
            assert_eq!(&drive.bytes()[..bytes.len()], &bytes[..]);
            assert!(drive.bytes()[bytes.len()..].iter().all(|&b| b == 0));
            assert_eq!(halted(&mut m), expected, "{trees}");
            assert_eq!(m.root_hash_bytes(), m.root_hash_from_scratch(), "{trees}");
        }
        // Other machines' writes to their copies do not reach the image.
        assert_eq!(&mapped[..], &bytes[..]);
        // An image larger than the drive is refused.
        let (mut m, _) = template.resume(&image.rootfs, &image.toolchain).unwrap();
        let large = DriveImage::in_memory_file("large", &vec![1; (s.scratch_length + 1) as usize]);
        assert!(matches!(
            fill_scratch(&mut m, &large.unwrap()),
            Err(TemplateError::ScratchTooSmall { .. })
        ));
    }

    #[test]
    fn a_tampered_record_or_a_wrong_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let s = settings();
        let image = tiny_image(&s);
        let cids = cids(&image);
        let good = derive(&mirror, &image, &cids, &s, &mut |_| {}).unwrap();
        // The record claims another hash: refused, and the template derived again.
        let path = record_path(&mirror, &template_key(&cids, &s));
        let text = std::fs::read_to_string(&path).unwrap();
        let forged = text.replace(
            &good.record.root_hash,
            &format!("{HASH_SCHEME}:{}", "0".repeat(64)),
        );
        std::fs::write(&path, forged).unwrap();
        let mut notes = Vec::new();
        let mut note = |e: Event<'_>| {
            if let Event::Note(n) = e {
                notes.push(n)
            }
        };
        let back = obtain(&mirror, &image, &cids, &s, None, &mut note).unwrap();
        assert!(back.derived);
        assert_eq!(back.record, good.record);
        // A blob that resumes to another state than its record says is refused on resume.
        assert!(matches!(
            resume(
                &good.blob,
                &image.rootfs,
                &image.toolchain,
                "cmvm-sha256-v1:00",
                HashCheck::Trusted
            ),
            Err(TemplateError::Blob(_))
        ));
        // Another root image under the base: the recomputed state hash refuses it.
        assert!(matches!(
            resume(
                &good.blob,
                &vec![0x5b; 4096].into(),
                &image.toolchain,
                &good.record.root_hash,
                HashCheck::Recompute
            ),
            Err(TemplateError::Snapshot(SnapshotError::RootHash { .. }))
        ));
        // A pin that differs: the recorded template is refused, and so is a fresh one.
        let err = obtain(
            &mirror,
            &image,
            &cids,
            &s,
            Some(Pin {
                key: PARENT_TEMPLATE_PIN,
                hash: "cmvm-sha256-v1:11",
            }),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                TemplateError::PinMismatch {
                    pin: PARENT_TEMPLATE_PIN,
                    ..
                }
            ),
            "the error names the pin: {err}"
        );
        // The right pin: reused.
        let pinned = obtain(
            &mirror,
            &image,
            &cids,
            &s,
            Some(Pin {
                key: TEMPLATE_PIN,
                hash: &good.record.root_hash,
            }),
            &mut |_| {},
        )
        .unwrap();
        assert!(!pinned.derived);
        // A guest that halts before its ready point.
        let mut broken = image.clone();
        broken.firmware = [addi(T1, 0, 1), lui(T0, 0x4000_8000), sd(T1, T0)]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let err = derive(&mirror, &broken, &cids, &s, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, TemplateError::Halted { code: 0, .. }),
            "{err}"
        );
    }
}
