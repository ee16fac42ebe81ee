//! The vendor mirror and IPFS: `cmbuild mirror verify|push|pull|export`, and the push
//! behind `cmbuild vendor --ipfs-api URL`.
//!
//! Nothing a node says is trusted. A push compares the node's CID of every blob with
//! cmbuild's before pinning it; a pull rehashes every blob the node sends, and only bytes
//! that hash to the CID the index names enter the mirror. An export streams each blob through
//! the same DAG builder that names it, so the CAR holds exactly the blocks `ipfs add
//! --cid-version=1 --raw-leaves` would make, and a blob that no longer matches its name stops
//! the export.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cmbuild_store::car::{CarError, CarWriter};
use cmbuild_store::cid::Cid;
use cmbuild_store::kubo::{Kubo, KuboError};
use cmbuild_store::mirror::{Mirror, MirrorError, Stored, VerifyReport};

/// Tries per blob of a pull when the node's answer breaks off (the client already retries
/// failures to connect).
const PULL_ATTEMPTS: u32 = 3;

/// Why a mirror operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorOpError {
    /// There is no mirror directory.
    #[error("no mirror at {0} (`cmbuild vendor` makes one)")]
    NoMirror(PathBuf),
    /// The mirror failed.
    #[error("the mirror {dir}")]
    Mirror {
        /// The mirror directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: MirrorError,
    },
    /// The IPFS node could not be used.
    #[error(transparent)]
    Kubo(#[from] KuboError),
    /// The node refused to add a blob.
    #[error("cannot add blob {cid} to the IPFS node")]
    Add {
        /// The blob.
        cid: Cid,
        /// The node's error.
        #[source]
        source: KuboError,
    },
    /// The node refused to pin a blob.
    #[error("cannot pin blob {cid} on the IPFS node")]
    Pin {
        /// The blob.
        cid: Cid,
        /// The node's error.
        #[source]
        source: KuboError,
    },
    /// The node names blobs differently from cmbuild.
    #[error(
        "the IPFS node at {node} names {} blob(s) differently from cmbuild; they were not pinned \
         (does it honour cid-version=1, raw-leaves=true, chunker=size-262144?):\n{}",
        .mismatches.len(),
        .mismatches.iter().map(|(ours, theirs)| format!("  {ours}: the node says {theirs}")).collect::<Vec<_>>().join("\n")
    )]
    Misnamed {
        /// The node's API URL.
        node: String,
        /// cmbuild's CID and the node's name for it.
        mismatches: Vec<(Cid, String)>,
    },
    /// The index names blobs the mirror does not hold.
    #[error(
        "the mirror {} lacks {} blob(s) its index names (`cmbuild mirror pull` can fetch them):\n{}",
        .dir.display(), .missing.len(), .missing.join("\n")
    )]
    MissingBlobs {
        /// The mirror directory.
        dir: PathBuf,
        /// One line per missing blob.
        missing: Vec<String>,
    },
    /// The mirror has nothing to export.
    #[error("the mirror {} holds no blobs; nothing to export", .0.display())]
    Empty(PathBuf),
    /// A blob's bytes do not match its CID.
    #[error(
        "blob {} does not match its CID (its bytes are {actual}); not exported \
         (`cmbuild mirror pull` can fetch a good copy)", .path.display()
    )]
    Corrupt {
        /// The blob's file.
        path: PathBuf,
        /// The CID of its bytes.
        actual: Cid,
    },
    /// Writing the CAR failed.
    #[error("cannot write {}", .path.display())]
    Car {
        /// The archive.
        path: PathBuf,
        /// What failed.
        #[source]
        source: CarError,
    },
    /// A file could not be read or written.
    #[error("{what} {}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A node's answer was refused (a pull goes on with the next blob).
    #[error("the node sent {sent} bytes{more} that hash to {got}, not to the CID asked for")]
    WrongBytes {
        /// How many bytes (at most the expected size).
        sent: u64,
        /// Whether more or fewer bytes than expected came.
        more: &'static str,
        /// What they hash to.
        got: Cid,
    },
    /// A node's answer broke off too often.
    #[error("the node's answer for {cid} broke off {attempts} times")]
    BrokeOff {
        /// The blob.
        cid: Cid,
        /// How many tries.
        attempts: u32,
        /// The last failure.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = MirrorOpError> = std::result::Result<T, E>;

fn mirror_err(mirror: &Mirror) -> impl Fn(MirrorError) -> MirrorOpError + '_ {
    move |source| MirrorOpError::Mirror {
        dir: mirror.root().to_path_buf(),
        source,
    }
}

/// Opens an existing mirror (opening creates the directory; a mistyped `--mirror` must
/// not become an empty mirror).
pub fn open_existing(dir: &Path) -> Result<Mirror> {
    if !dir.is_dir() {
        return Err(MirrorOpError::NoMirror(dir.to_path_buf()));
    }
    Mirror::open(dir).map_err(|source| MirrorOpError::Mirror {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Rehashes every blob of the mirror in `dir`.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let mirror = open_existing(dir)?;
    mirror.verify_all().map_err(mirror_err(&mirror))
}

/// What a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs added and pinned.
    pub pushed: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The node's API URL.
    pub node: String,
}

impl std::fmt::Display for PushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pushed {} blobs ({} bytes) to {} and pinned them",
            self.pushed, self.bytes, self.node
        )
    }
}

/// Adds and pins every blob of `mirror` on the node at `ipfs_api`.
pub fn push(mirror: &Mirror, ipfs_api: &str, note: &mut dyn FnMut(&str)) -> Result<PushReport> {
    let kubo = Kubo::new(ipfs_api)?;
    let mut report = push_mirror(mirror, &kubo, note)?;
    report.node = kubo.url().to_owned();
    Ok(report)
}

/// Adds every blob of `mirror` to the node, checks the node's CID, and pins it; `note`
/// hears of each blob.
pub fn push_mirror(mirror: &Mirror, kubo: &Kubo, note: &mut dyn FnMut(&str)) -> Result<PushReport> {
    let mut report = PushReport::default();
    let mut mismatches = Vec::new();
    for cid in list_blobs(mirror, note)? {
        // Never publish bytes that are not what their name says.
        let size = mirror
            .open_verified(&cid)
            .map_err(mirror_err(mirror))?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        let path = mirror.blob_path(&cid);
        let added = kubo
            .add_file(&path)
            .map_err(|source| MirrorOpError::Add { cid, source })?;
        if added.cid() != Some(cid) {
            note(&format!(
                "the IPFS node names blob {cid} `{}`; not pinned",
                crate::terminal::sanitize(&added.hash)
            ));
            mismatches.push((cid, added.hash));
            continue;
        }
        kubo.pin_add(&cid)
            .map_err(|source| MirrorOpError::Pin { cid, source })?;
        note(&format!("pushed {cid} ({size} bytes)"));
        report.pushed += 1;
        report.bytes += size;
    }
    if !mismatches.is_empty() {
        return Err(MirrorOpError::Misnamed {
            node: kubo.url().to_owned(),
            mismatches,
        });
    }
    Ok(report)
}

/// A blob a pull did not let into the mirror, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The blob.
    pub cid: Cid,
    /// The index names that wanted it.
    pub names: Vec<String>,
    /// Why it was refused.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.cid,
            self.names.join(", "),
            self.reason
        )
    }
}

/// What a pull did.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Blobs fetched.
    pub pulled: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Blobs already present.
    pub present: usize,
    /// Blobs refused.
    pub refused: Vec<Refusal>,
    /// The node's API URL.
    pub node: String,
}

/// Fetches, from the node at `ipfs_api`, every blob the index names that is missing.
pub fn pull(mirror: &Mirror, ipfs_api: &str, note: &mut dyn FnMut(&str)) -> Result<PullReport> {
    let kubo = Kubo::new(ipfs_api)?;
    let mut report = pull_mirror(mirror, &kubo, note)?;
    report.node = kubo.url().to_owned();
    Ok(report)
}

/// Fetches every blob the index names that is missing (or corrupt) in the mirror.
/// A node that cannot be reached at all is an error; a blob the node cannot serve, or
/// serves wrongly, is a [`Refusal`] and the pull goes on with the next. `note` hears of
/// each blob.
pub fn pull_mirror(mirror: &Mirror, kubo: &Kubo, note: &mut dyn FnMut(&str)) -> Result<PullReport> {
    let index = mirror.load_index().map_err(mirror_err(mirror))?;
    // One CID may serve several names: fetch it once.
    let mut wanted: BTreeMap<Cid, (Vec<String>, u64)> = BTreeMap::new();
    for (key, entry) in &index.entries {
        let slot = wanted.entry(entry.cid).or_insert((Vec::new(), entry.size));
        slot.0.push(key.to_string());
    }
    let mut report = PullReport::default();
    for (cid, (names, size)) in wanted {
        if mirror.has_valid(&cid).map_err(mirror_err(mirror))? {
            report.present += 1;
            continue;
        }
        match fetch_blob(mirror, kubo, &cid, size, note) {
            Ok(stored) => {
                note(&format!(
                    "pulled {cid} ({} bytes) for {}",
                    stored.size,
                    names.join(", ")
                ));
                report.pulled += 1;
                report.bytes += stored.size;
            }
            Err(err) if is_unreachable(&err) => return Err(err),
            Err(err) => report.refused.push(Refusal {
                cid,
                names,
                reason: crate::terminal::error_chain(&err),
            }),
        }
    }
    Ok(report)
}

fn is_unreachable(err: &MirrorOpError) -> bool {
    if matches!(err, MirrorOpError::Kubo(KuboError::Unreachable { .. })) {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if matches!(
            c.downcast_ref::<KuboError>(),
            Some(KuboError::Unreachable { .. })
        ) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Streams blob `cid` from the node into a staged mirror blob, and commits it only if its
/// bytes hash to `cid`.
fn fetch_blob(
    mirror: &Mirror,
    kubo: &Kubo,
    cid: &Cid,
    size: u64,
    note: &mut dyn FnMut(&str),
) -> Result<Stored> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reader = kubo.cat_reader(cid)?;
        let mut writer = mirror.begin_blob().map_err(mirror_err(mirror))?;
        // One byte more than the index expects is enough to know the answer is wrong; a lying
        // node must not be able to fill the disk.
        match io::copy(&mut reader.take(size.saturating_add(1)), &mut writer) {
            Ok(_) => {}
            Err(err) if attempt < PULL_ATTEMPTS => {
                note(&format!("fetching {cid} broke off ({err}); trying again"));
                continue;
            }
            Err(source) => {
                return Err(MirrorOpError::BrokeOff {
                    cid: *cid,
                    attempts: attempt,
                    source,
                })
            }
        }
        let staged = writer.finish().map_err(mirror_err(mirror))?;
        let got = *staged.stored();
        if got.cid != *cid {
            // Dropping the staged blob removes it: nothing of it enters the mirror.
            return Err(MirrorOpError::WrongBytes {
                sent: got.size.min(size),
                more: if got.size > size {
                    " and more"
                } else if got.size < size {
                    " (fewer than the index says)"
                } else {
                    ""
                },
                got: got.cid,
            });
        }
        return staged.commit().map_err(mirror_err(mirror));
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Root CIDs (one per blob).
    pub roots: usize,
    /// Blocks written.
    pub blocks: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes every blob of the mirror into a CARv1 at `car` (atomically: a temporary file in
/// the same directory, renamed at the end).
pub fn export_car(mirror: &Mirror, car: &Path, note: &mut dyn FnMut(&str)) -> Result<ExportReport> {
    let blobs = list_blobs(mirror, note)?;
    if blobs.is_empty() {
        return Err(MirrorOpError::Empty(mirror.root().to_path_buf()));
    }
    let temp = TempPath::beside(car)?;
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorOpError::Io { what, path, source }
    };
    let car_err = |source| MirrorOpError::Car {
        path: car.to_path_buf(),
        source,
    };
    let file = File::create(&temp.0).map_err(io_err("cannot create", &temp.0))?;
    let mut writer =
        CarWriter::new(CountingWriter::new(BufWriter::new(file)), &blobs).map_err(car_err)?;
    for cid in &blobs {
        let path = mirror.blob_path(cid);
        let blob = File::open(&path).map_err(io_err("cannot open", &path))?;
        let root = writer.write_file(blob).map_err(car_err)?;
        if root != *cid {
            return Err(MirrorOpError::Corrupt { path, actual: root });
        }
    }
    let blocks = writer.block_count();
    let counted = writer.finish().map_err(car_err)?;
    let bytes = counted.count;
    let file = counted
        .inner
        .into_inner()
        .map_err(|err| err.into_error())
        .map_err(io_err("cannot write", &temp.0))?;
    file.sync_all().map_err(io_err("cannot write", &temp.0))?;
    temp.persist(car)?;
    Ok(ExportReport {
        roots: blobs.len(),
        blocks,
        bytes,
    })
}

/// Every blob of the mirror, sorted by CID text (the order `ls blobs/` shows). Fails if the
/// index names a blob that is not there: pushing or exporting part of the inputs would lose
/// the rest without a word.
fn list_blobs(mirror: &Mirror, note: &mut dyn FnMut(&str)) -> Result<Vec<Cid>> {
    let mut names: BTreeMap<String, Cid> = BTreeMap::new();
    // The mirror's blobs directory, wherever its layout puts it: the parent of any blob path.
    let probe = mirror.blob_path(&cmbuild_store::cid::cid_of_bytes(b""));
    let dir = probe.parent().unwrap_or(mirror.root());
    let list_err = |source| MirrorOpError::Io {
        what: "cannot list",
        path: dir.to_path_buf(),
        source,
    };
    let listing = match fs::read_dir(dir) {
        Ok(listing) => Some(listing),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(list_err(err)),
    };
    for entry in listing.into_iter().flatten() {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temporary files of writers start with a dot; anything else not named by a CID is
        // something `cmbuild mirror verify` reports.
        if name.starts_with('.') {
            continue;
        }
        match name.parse::<Cid>() {
            Ok(cid) => {
                names.insert(name, cid);
            }
            Err(_) => note(&format!(
                "skipping {}: not named by a CID",
                crate::terminal::sanitize(&entry.path().display().to_string())
            )),
        }
    }
    let present: BTreeSet<Cid> = names.values().copied().collect();
    let missing: Vec<String> = mirror
        .load_index()
        .map_err(mirror_err(mirror))?
        .entries
        .iter()
        .filter(|(_, entry)| !present.contains(&entry.cid))
        .map(|(key, entry)| format!("  {} ({key})", entry.cid))
        .collect();
    if !missing.is_empty() {
        return Err(MirrorOpError::MissingBlobs {
            dir: mirror.root().to_path_buf(),
            missing,
        });
    }
    Ok(names.into_values().collect())
}

/// A temporary file removed on drop unless persisted.
struct TempPath(PathBuf);

impl TempPath {
    fn beside(target: &Path) -> Result<TempPath> {
        let name = target.file_name().ok_or_else(|| MirrorOpError::Io {
            what: "not a file name:",
            path: target.to_path_buf(),
            source: io::ErrorKind::InvalidInput.into(),
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        Ok(TempPath(target.with_file_name(temp_name)))
    }

    fn persist(mut self, target: &Path) -> Result<()> {
        let temp = std::mem::take(&mut self.0);
        fs::rename(&temp, target).map_err(|source| {
            let _ = fs::remove_file(&temp);
            MirrorOpError::Io {
                what: "cannot move into place:",
                path: target.to_path_buf(),
                source,
            }
        })
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            // Best effort: the export already failed, and the file may never have been created.
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// Counts the bytes that go through, for the export summary.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
