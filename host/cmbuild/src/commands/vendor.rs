//! `cmbuild vendor`: fetch every input of a build into the mirror, once, online.
//!
//! The command is a pipeline of input kinds. Each kind turns its lock into a list of
//! [`Wanted`] files (index key, URL, pinned sha256); one fetch loop downloads whatever the
//! mirror lacks, verified, and records it in the index; then each kind may write what the
//! offline build needs (for crates: a cargo directory source and config). Kinds today:
//! crates.io packages of the project's Cargo.lock. The Debian packages of the guest-image
//! lock and the `--ipfs-api URL` push plug into [`exec`] at the marked places.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use cmbuild_store::cid::{Cid, Codec};
use cmbuild_store::crates::{write_directory_source, VendoredCrate};
use cmbuild_store::download::Downloader;
use cmbuild_store::lockfile::{read_lockfile, Package, Source};
use cmbuild_store::mirror::{Entry, Key, Mirror, DEFAULT_DIR};
use cmbuild_store::sha256::Sha256;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// Where `.crate` files are downloaded from, unless `CMBUILD_CRATES_URL` says otherwise.
const CRATES_URL: &str = "https://static.crates.io/crates";

/// Fetch every input of a build into the mirror (online, once).
///
/// Reads the project's Cargo.lock, downloads every crates.io package it lists, checks each
/// against the lock's checksum and stores it under its content ID; then fetches every
/// Debian package of the guest-image lock. Re-running downloads nothing already present.
/// Git dependencies, other registries and path dependencies outside the workspace are
/// refused, naming them. On any failure nothing partial is left in the mirror.
///
/// With `--cargo-config OUT.toml`, also unpacks the crates into the directory source
/// `OUT.crates/` next to OUT.toml and writes OUT.toml so that
/// `cargo build --offline --locked --config OUT.toml` builds from the mirror alone.
/// `CMBUILD_CRATES_URL` replaces the download base (default https://static.crates.io/crates).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The project's Cargo.toml (its workspace's Cargo.lock is read).
    #[arg(long, value_name = "PATH", default_value = "Cargo.toml")]
    manifest_path: PathBuf,
    /// The mirror directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
    /// Write a cargo config for offline builds from the mirror (and OUT.crates/ beside it).
    #[arg(long, value_name = "OUT.toml")]
    cargo_config: Option<PathBuf>,
    /// Vendor only the project's crates, not the guest image's Debian packages (enough for
    /// `cargo build --offline`; `cmbuild run` needs both).
    #[arg(long)]
    crates_only: bool,
    /// Then add and pin every blob of the mirror on this IPFS node (its Kubo RPC API, e.g.
    /// http://127.0.0.1:5001), refusing any blob the node names differently from cmbuild.
    #[arg(long, value_name = "URL")]
    ipfs_api: Option<String>,
}

/// One file the mirror must hold: its index key, where to get it, and its pinned sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: Key,
    pub url: String,
    pub sha256: Sha256,
    /// Size when the lock knows it (Debian does, Cargo.lock does not).
    pub size: Option<u64>,
}

/// What the fetch loop did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchReport {
    pub downloaded: usize,
    pub bytes: u64,
    pub present: usize,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let project = CargoProject::read(&args.manifest_path)?;
    let mut wanted = project.wanted()?;
    // Debian packages of the guest-image lock: append their `Wanted` entries here.
    let guest_lock = if args.crates_only {
        None
    } else {
        let (guest_lock, guest_wanted) = super::vendor_debs::wanted_guest_packages()?;
        wanted.extend(guest_wanted);
        Some(guest_lock)
    };

    let mirror = Mirror::open(&args.mirror)
        .with_context(|| format!("opening the mirror {}", args.mirror.display()))?;
    let report = fetch_all(&mirror, &wanted, &Downloader::new())?;
    if let Some(guest_lock) = &guest_lock {
        super::vendor_debs::check_guest_packages(&mirror, guest_lock)?;
    }

    if let Some(config) = &args.cargo_config {
        let dir = write_cargo_config(&mirror, &project.crates_io, config)?;
        eprintln!(
            "cmbuild vendor: wrote {} (directory source {})",
            config.display(),
            dir.display()
        );
    }
    if let Some(url) = &args.ipfs_api {
        super::mirror_ipfs::push_after_vendor(&mirror, url)?;
    }

    eprintln!(
        "cmbuild vendor: {} crates from {}: {} downloaded ({}), {} already in {}",
        project.crates_io.len(),
        project.lock_path.display(),
        report.downloaded,
        HumanBytes(report.bytes),
        report.present,
        args.mirror.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The project's lock, checked: only crates.io packages and workspace members.
struct CargoProject {
    lock_path: PathBuf,
    crates_io: Vec<(Package, Sha256)>,
}

impl CargoProject {
    fn read(manifest: &Path) -> anyhow::Result<CargoProject> {
        if !manifest.is_file() {
            bail!("no Cargo.toml at {}", manifest.display());
        }
        let workspace = WorkspaceMetadata::read(manifest)?;
        let lock_path = workspace.root.join("Cargo.lock");
        let lock = read_lockfile(&lock_path)?;
        let mut refused = Vec::new();
        let mut crates_io = Vec::new();
        for package in lock.packages {
            match &package.source {
                Source::CratesIo { sha256 } => crates_io.push((package.clone(), *sha256)),
                Source::Local if workspace.has_member(&package) => {}
                Source::Local => refused.push(format!(
                    "{} {} (a path dependency outside the workspace)",
                    package.name, package.version
                )),
                Source::Git(url) => refused.push(format!(
                    "{} {} (git dependency {url})",
                    package.name, package.version
                )),
                Source::Other(source) => refused.push(format!(
                    "{} {} (from {source}, not crates.io)",
                    package.name, package.version
                )),
            }
        }
        if !refused.is_empty() {
            bail!(
                "{} cannot be vendored: cmbuild vendors crates.io packages and builds workspace \
                 members; these come from elsewhere:\n  {}",
                lock_path.display(),
                refused.join("\n  ")
            );
        }
        Ok(CargoProject {
            lock_path,
            crates_io,
        })
    }

    fn wanted(&self) -> anyhow::Result<Vec<Wanted>> {
        let base = std::env::var("CMBUILD_CRATES_URL").unwrap_or_else(|_| CRATES_URL.to_owned());
        let base = base.trim_end_matches('/');
        Ok(self
            .crates_io
            .iter()
            .map(|(package, sha256)| Wanted {
                key: Key::crate_(&package.name, &package.version),
                url: format!("{base}/{0}/{0}-{1}.crate", package.name, package.version),
                sha256: *sha256,
                size: None,
            })
            .collect())
    }
}

/// What `cargo metadata --no-deps` says about the workspace.
struct WorkspaceMetadata {
    root: PathBuf,
    members: BTreeSet<(String, String)>,
}

impl WorkspaceMetadata {
    fn read(manifest: &Path) -> anyhow::Result<WorkspaceMetadata> {
        let json = cmbuild::plan::read_cargo_metadata(manifest)?;
        let root = json["workspace_root"]
            .as_str()
            .context("`cargo metadata` gave no workspace_root")?;
        let members = json["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_owned(),
                    p["version"].as_str()?.to_owned(),
                ))
            })
            .collect();
        Ok(WorkspaceMetadata {
            root: PathBuf::from(root),
            members,
        })
    }

    fn has_member(&self, package: &Package) -> bool {
        self.members
            .contains(&(package.name.clone(), package.version.clone()))
    }
}

/// Downloads every wanted file the mirror lacks (or holds corrupt), verified, and records
/// each in the index as soon as it is stored.
pub fn fetch_all(
    mirror: &Mirror,
    wanted: &[Wanted],
    downloader: &Downloader,
) -> anyhow::Result<FetchReport> {
    let index = mirror.load_index()?;
    let mut report = FetchReport::default();
    let mut missing = Vec::new();
    for item in wanted {
        if let Some(cid) = present_cid(mirror, &index, item)? {
            report.present += 1;
            if index.get(&item.key).map(|e| e.cid) != Some(cid) {
                let size = std::fs::metadata(mirror.blob_path(&cid))?.len();
                let entry = Entry {
                    cid,
                    sha256: item.sha256,
                    size,
                    url: Some(item.url.clone()),
                };
                mirror.record([(item.key.clone(), entry)])?;
            }
        } else {
            missing.push(item);
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }

    let mut progress = Progress::new(&missing);
    for item in missing {
        let started = progress.bytes_done;
        let mut announced = item.size.is_some();
        let mut on_bytes = |done: u64, total: Option<u64>| {
            if let (false, Some(total)) = (announced, total) {
                progress.add_length(total);
                announced = true;
            }
            progress.show(started + done);
        };
        let stored = downloader
            .fetch_to_mirror(&item.url, &item.sha256, mirror, &mut on_bytes)
            .with_context(|| format!("downloading {}", item.key))?;
        mirror.record([(
            item.key.clone(),
            Entry::new(&stored, Some(item.url.clone())),
        )])?;
        report.downloaded += 1;
        report.bytes += stored.size;
        progress.finish_item(stored.size);
    }
    progress.done();
    Ok(report)
}

/// The CID of a wanted file the mirror already holds intact, if any.
fn present_cid(
    mirror: &Mirror,
    index: &cmbuild_store::mirror::Index,
    item: &Wanted,
) -> anyhow::Result<Option<Cid>> {
    if let Some(entry) = index.get(&item.key) {
        if entry.sha256 == item.sha256 && mirror.has_valid(&entry.cid)? {
            return Ok(Some(entry.cid));
        }
    }
    // A file of at most one chunk is a raw leaf named by its sha256: found without an index.
    let leaf = Cid::new(Codec::Raw, *item.sha256.as_bytes());
    Ok(mirror.has_valid(&leaf)?.then_some(leaf))
}

/// The progress bar on stderr (hidden when stderr is not a terminal, where the one-line
/// summaries say enough). With sizes known up front (Debian packages) it counts bytes, and
/// files of unknown size add their announced length as they start; with no size known
/// (Cargo.lock has none) it counts files and shows the bytes in its message.
struct Progress {
    bar: ProgressBar,
    by_bytes: bool,
    files_done: usize,
    files: usize,
    bytes_done: u64,
    started: Instant,
}

impl Progress {
    fn new(missing: &[&Wanted]) -> Progress {
        let known: u64 = missing.iter().filter_map(|w| w.size).sum();
        let by_bytes = missing.iter().any(|w| w.size.is_some());
        let (length, template) = if by_bytes {
            (
                known,
                "{spinner} vendoring [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
        } else {
            (
                missing.len() as u64,
                "{spinner} vendoring [{bar:30}] {pos}/{len} files, {msg} ETA {eta}",
            )
        };
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(length).with_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            )
        } else {
            ProgressBar::hidden()
        };
        let progress = Progress {
            bar,
            by_bytes,
            files_done: 0,
            files: missing.len(),
            bytes_done: 0,
            started: Instant::now(),
        };
        progress.show(0);
        progress
    }

    /// Shows `bytes` downloaded in all (finished files plus the current one).
    fn show(&self, bytes: u64) {
        if self.by_bytes {
            self.bar.set_position(bytes);
            self.bar
                .set_message(format!("{}/{} files", self.files_done, self.files));
        } else {
            self.bar
                .set_message(format!("{} downloaded", HumanBytes(bytes)));
        }
    }

    /// A download of unknown size announced its length.
    fn add_length(&self, length: u64) {
        if self.by_bytes {
            self.bar.inc_length(length);
        }
    }

    fn finish_item(&mut self, size: u64) {
        self.bytes_done += size;
        self.files_done += 1;
        if !self.by_bytes {
            self.bar.inc(1);
        }
        self.show(self.bytes_done);
    }

    fn done(&self) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "cmbuild vendor: downloaded {} files, {} in {:.1} s ({}/s)",
            self.files_done,
            HumanBytes(self.bytes_done),
            secs,
            HumanBytes((self.bytes_done as f64 / secs) as u64)
        );
    }
}

/// The directory source that belongs to config file `config`: `OUT.crates/` beside `OUT.toml`.
pub fn directory_source_for(config: &Path) -> PathBuf {
    config.with_extension("crates")
}

/// Unpacks the project's crates next to `config` and writes the cargo config naming them.
fn write_cargo_config(
    mirror: &Mirror,
    crates_io: &[(Package, Sha256)],
    config: &Path,
) -> anyhow::Result<PathBuf> {
    let index = mirror.load_index()?;
    let mut crates = Vec::new();
    for (package, sha256) in crates_io {
        let key = Key::crate_(&package.name, &package.version);
        let entry = index
            .get(&key)
            .with_context(|| format!("the mirror index lacks {key}"))?;
        crates.push(VendoredCrate {
            name: package.name.clone(),
            version: package.version.clone(),
            sha256: *sha256,
            cid: entry.cid,
        });
    }
    let dir = directory_source_for(config);
    write_directory_source(mirror, &crates, &dir)
        .with_context(|| format!("unpacking the crates into {}", dir.display()))?;
    // An absolute path: cargo resolves relative ones against the current directory's
    // `.cargo`, not against this file.
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let dir_text = dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", dir.display()))?;
    let text = format!(
        "# Written by `cmbuild vendor`: builds from the vendored crates, offline:\n\
         #   cargo build --offline --locked --config {}\n\
         [source.crates-io]\n\
         replace-with = \"cmbuild-vendored\"\n\
         \n\
         [source.cmbuild-vendored]\n\
         directory = {}\n",
        config.display(),
        toml_string(dir_text)
    );
    cmbuild_store::atomic::write_atomically(config, text.as_bytes())
        .with_context(|| format!("writing {}", config.display()))?;
    Ok(dir)
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A URL nothing answers: any download attempt fails.
    const DEAD_URL: &str = "http://127.0.0.1:9/never";

    fn offline() -> Downloader {
        Downloader::new().with_retries(1, Duration::ZERO)
    }

    #[test]
    fn small_file_already_stored_is_found_by_its_sha256_without_downloading() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let bytes = b"a small .crate".to_vec();
        let stored = mirror.put_bytes(&bytes).unwrap();
        let wanted = Wanted {
            key: Key::crate_("small", "1.0.0"),
            url: DEAD_URL.to_owned(),
            sha256: Sha256::of(&bytes),
            size: None,
        };
        let report = fetch_all(&mirror, std::slice::from_ref(&wanted), &offline()).unwrap();
        assert_eq!((report.present, report.downloaded), (1, 0));
        let index = mirror.load_index().unwrap();
        let entry = index.get(&wanted.key).unwrap();
        assert_eq!((entry.cid, entry.size), (stored.cid, bytes.len() as u64));
    }

    #[test]
    fn corrupt_blob_is_not_counted_as_present() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let stored = mirror.put_bytes(b"original").unwrap();
        let wanted = Wanted {
            key: Key::crate_("c", "1.0.0"),
            url: DEAD_URL.to_owned(),
            sha256: stored.sha256,
            size: Some(8),
        };
        mirror
            .record([(wanted.key.clone(), Entry::new(&stored, None))])
            .unwrap();
        std::fs::write(mirror.blob_path(&stored.cid), b"tampered").unwrap();
        // The mirror copy is refused, so a download is attempted (and fails here).
        let err = fetch_all(&mirror, &[wanted], &offline()).unwrap_err();
        assert!(
            format!("{err:#}").contains("downloading crate/c/1.0.0"),
            "{err:#}"
        );
    }
}
