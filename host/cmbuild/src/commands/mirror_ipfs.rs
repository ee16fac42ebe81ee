//! The vendor mirror and IPFS: `cmbuild mirror push|pull|export`, and the push behind
//! `cmbuild vendor --ipfs-api URL`.
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
use std::process::ExitCode;

use anyhow::{bail, Context};
use cmbuild_store::car::CarWriter;
use cmbuild_store::cid::Cid;
use cmbuild_store::kubo::{Kubo, KuboError};
use cmbuild_store::mirror::{Mirror, Stored, DEFAULT_DIR};

/// Tries per blob of a pull when the node's answer breaks off (the client already retries
/// failures to connect).
const PULL_ATTEMPTS: u32 = 3;

/// Add and pin every blob of the mirror on an IPFS node.
///
/// Each blob is added with the parameters that make the node's CIDs equal to cmbuild's
/// (`cid-version=1`, `raw-leaves`, `chunker=size-262144`); a blob the node names differently
/// is not pinned, and the command fails naming it.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The node's Kubo RPC API, e.g. http://127.0.0.1:5001
    #[arg(long, value_name = "URL")]
    ipfs_api: String,
    /// The mirror directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
}

/// Fetch, from an IPFS node, every blob the mirror index names but the mirror lacks.
///
/// Every blob is rehashed before it enters the mirror; bytes that do not hash to the CID the
/// index names are refused (exit 1, naming each refused blob).
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The node's Kubo RPC API, e.g. http://127.0.0.1:5001
    #[arg(long, value_name = "URL")]
    ipfs_api: String,
    /// The mirror directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
}

/// Write every blob of the mirror into a CARv1 archive (`ipfs dag import FILE` takes it).
///
/// The archive holds every block of each blob's UnixFS DAG, each block once; its roots are
/// the blob CIDs, sorted.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to write the archive.
    #[arg(long, value_name = "FILE")]
    car: PathBuf,
    /// The mirror directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
}

pub fn exec_push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let mirror = open_mirror(&args.mirror)?;
    let report = push_to(&mirror, &args.ipfs_api)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// `cmbuild vendor --ipfs-api URL`: pushes the whole mirror once vendoring is done.
pub fn push_after_vendor(mirror: &Mirror, ipfs_api: &str) -> anyhow::Result<()> {
    let report = push_to(mirror, ipfs_api)?;
    eprintln!("cmbuild vendor: {report}");
    Ok(())
}

fn push_to(mirror: &Mirror, ipfs_api: &str) -> anyhow::Result<PushReport> {
    let kubo = Kubo::new(ipfs_api)?;
    let mut report = push_mirror(mirror, &kubo)?;
    report.node = kubo.url().to_owned();
    Ok(report)
}

pub fn exec_pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let mirror = open_mirror(&args.mirror)?;
    let kubo = Kubo::new(&args.ipfs_api)?;
    let report = pull_mirror(&mirror, &kubo)?;
    println!(
        "pulled {} blobs ({} bytes) from {}; {} already present; {} refused",
        report.pulled,
        report.bytes,
        kubo.url(),
        report.present,
        report.refused.len()
    );
    if report.refused.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for refusal in &report.refused {
            eprintln!("refused {refusal}");
        }
        Ok(ExitCode::from(1))
    }
}

pub fn exec_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mirror = open_mirror(&args.mirror)?;
    let report = export_car(&mirror, &args.car)?;
    println!(
        "wrote {}: {} roots, {} blocks, {} bytes",
        args.car.display(),
        report.roots,
        report.blocks,
        report.bytes
    );
    Ok(ExitCode::SUCCESS)
}

fn open_mirror(dir: &Path) -> anyhow::Result<Mirror> {
    // Opening creates the directory; a mistyped --mirror must not become an empty mirror.
    if !dir.is_dir() {
        bail!(
            "no mirror at {} (`cmbuild vendor` makes one)",
            dir.display()
        );
    }
    Mirror::open(dir).with_context(|| format!("cannot open the mirror {}", dir.display()))
}

/// What a push did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    pub pushed: usize,
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

/// Adds every blob of `mirror` to the node, checks the node's CID, and pins it.
pub fn push_mirror(mirror: &Mirror, kubo: &Kubo) -> anyhow::Result<PushReport> {
    let mut report = PushReport::default();
    let mut mismatches = Vec::new();
    for cid in list_blobs(mirror)? {
        // Never publish bytes that are not what their name says.
        let size = mirror
            .open_verified(&cid)?
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        let path = mirror.blob_path(&cid);
        let added = kubo
            .add_file(&path)
            .with_context(|| format!("cannot add blob {cid} to the IPFS node"))?;
        if added.cid() != Some(cid) {
            eprintln!(
                "the IPFS node names blob {cid} `{}`; not pinned",
                added.hash
            );
            mismatches.push((cid, added.hash));
            continue;
        }
        kubo.pin_add(&cid)
            .with_context(|| format!("cannot pin blob {cid} on the IPFS node"))?;
        eprintln!("pushed {cid} ({size} bytes)");
        report.pushed += 1;
        report.bytes += size;
    }
    if !mismatches.is_empty() {
        let list: Vec<String> = mismatches
            .iter()
            .map(|(ours, theirs)| format!("  {ours}: the node says {theirs}"))
            .collect();
        bail!(
            "the IPFS node at {} names {} blob(s) differently from cmbuild; they were not pinned \
             (does it honour cid-version=1, raw-leaves=true, chunker=size-262144?):\n{}",
            kubo.url(),
            mismatches.len(),
            list.join("\n")
        );
    }
    Ok(report)
}

/// A blob a pull did not let into the mirror, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub cid: Cid,
    /// The index names that wanted it.
    pub names: Vec<String>,
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
    pub pulled: usize,
    pub bytes: u64,
    pub present: usize,
    pub refused: Vec<Refusal>,
}

/// Fetches every blob the index names that is missing (or corrupt) in the mirror.
/// A node that cannot be reached at all is an error; a blob the node cannot serve, or
/// serves wrongly, is a [`Refusal`] and the pull goes on with the next.
pub fn pull_mirror(mirror: &Mirror, kubo: &Kubo) -> anyhow::Result<PullReport> {
    let index = mirror.load_index()?;
    // One CID may serve several names: fetch it once.
    let mut wanted: BTreeMap<Cid, (Vec<String>, u64)> = BTreeMap::new();
    for (key, entry) in &index.entries {
        let slot = wanted.entry(entry.cid).or_insert((Vec::new(), entry.size));
        slot.0.push(key.to_string());
    }
    let mut report = PullReport::default();
    for (cid, (names, size)) in wanted {
        if mirror.has_valid(&cid)? {
            report.present += 1;
            continue;
        }
        match fetch_blob(mirror, kubo, &cid, size) {
            Ok(stored) => {
                eprintln!(
                    "pulled {cid} ({} bytes) for {}",
                    stored.size,
                    names.join(", ")
                );
                report.pulled += 1;
                report.bytes += stored.size;
            }
            Err(err) if is_unreachable(&err) => return Err(err),
            Err(err) => report.refused.push(Refusal {
                cid,
                names,
                reason: format!("{err:#}"),
            }),
        }
    }
    Ok(report)
}

fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<KuboError>(),
            Some(KuboError::Unreachable { .. })
        )
    })
}

/// Streams blob `cid` from the node into a staged mirror blob, and commits it only if its
/// bytes hash to `cid`.
fn fetch_blob(mirror: &Mirror, kubo: &Kubo, cid: &Cid, size: u64) -> anyhow::Result<Stored> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reader = kubo.cat_reader(cid)?;
        let mut writer = mirror.begin_blob()?;
        // One byte more than the index expects is enough to know the answer is wrong; a lying
        // node must not be able to fill the disk.
        match io::copy(&mut reader.take(size.saturating_add(1)), &mut writer) {
            Ok(_) => {}
            Err(err) if attempt < PULL_ATTEMPTS => {
                eprintln!("fetching {cid} broke off ({err}); trying again");
                continue;
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("the node's answer for {cid} broke off {attempt} times")
                })
            }
        }
        let staged = writer.finish()?;
        let got = *staged.stored();
        if got.cid != *cid {
            // Dropping the staged blob removes it: nothing of it enters the mirror.
            bail!(
                "the node sent {} bytes{} that hash to {}, not to the CID asked for",
                got.size.min(size),
                if got.size > size {
                    " and more"
                } else if got.size < size {
                    " (fewer than the index says)"
                } else {
                    ""
                },
                got.cid
            );
        }
        return Ok(staged.commit()?);
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub roots: usize,
    pub blocks: usize,
    pub bytes: u64,
}

/// Writes every blob of the mirror into a CARv1 at `car` (atomically: a temporary file in
/// the same directory, renamed at the end).
pub fn export_car(mirror: &Mirror, car: &Path) -> anyhow::Result<ExportReport> {
    let blobs = list_blobs(mirror)?;
    if blobs.is_empty() {
        bail!(
            "the mirror {} holds no blobs; nothing to export",
            mirror.root().display()
        );
    }
    let temp = TempPath::beside(car)?;
    let file =
        File::create(&temp.0).with_context(|| format!("cannot create {}", temp.0.display()))?;
    let mut writer = CarWriter::new(CountingWriter::new(BufWriter::new(file)), &blobs)?;
    for cid in &blobs {
        let path = mirror.blob_path(cid);
        let blob = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let root = writer
            .write_file(blob)
            .with_context(|| format!("cannot archive {}", path.display()))?;
        if root != *cid {
            bail!(
                "blob {} does not match its CID (its bytes are {root}); not exported \
                 (`cmbuild mirror pull` can fetch a good copy)",
                path.display()
            );
        }
    }
    let blocks = writer.block_count();
    let counted = writer.finish()?;
    let bytes = counted.count;
    let file = counted
        .inner
        .into_inner()
        .map_err(|err| err.into_error())
        .with_context(|| format!("cannot write {}", temp.0.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", temp.0.display()))?;
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
fn list_blobs(mirror: &Mirror) -> anyhow::Result<Vec<Cid>> {
    let mut names: BTreeMap<String, Cid> = BTreeMap::new();
    // The mirror's blobs directory, wherever its layout puts it: the parent of any blob path.
    let probe = mirror.blob_path(&cmbuild_store::cid::cid_of_bytes(b""));
    let dir = probe
        .parent()
        .context("the mirror has no blobs directory")?;
    let listing = match fs::read_dir(dir) {
        Ok(listing) => Some(listing),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in listing.into_iter().flatten() {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
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
            Err(_) => eprintln!("skipping {}: not named by a CID", entry.path().display()),
        }
    }
    let present: BTreeSet<Cid> = names.values().copied().collect();
    let missing: Vec<String> = mirror
        .load_index()?
        .entries
        .iter()
        .filter(|(_, entry)| !present.contains(&entry.cid))
        .map(|(key, entry)| format!("  {} ({key})", entry.cid))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the mirror {} lacks {} blob(s) its index names (`cmbuild mirror pull` can fetch them):\n{}",
            mirror.root().display(),
            missing.len(),
            missing.join("\n")
        );
    }
    Ok(names.into_values().collect())
}

/// A temporary file removed on drop unless persisted.
struct TempPath(PathBuf);

impl TempPath {
    fn beside(target: &Path) -> anyhow::Result<TempPath> {
        let name = target
            .file_name()
            .with_context(|| format!("{} is not a file name", target.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        Ok(TempPath(target.with_file_name(temp_name)))
    }

    fn persist(mut self, target: &Path) -> anyhow::Result<()> {
        let temp = std::mem::take(&mut self.0);
        fs::rename(&temp, target)
            .with_context(|| format!("cannot move {} into place", target.display()))
            .inspect_err(|_| {
                let _ = fs::remove_file(&temp);
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
