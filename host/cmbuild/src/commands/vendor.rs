use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::IsTerminal;
use std::time::Instant;

use cmbuild::ops::oci::OciOptions;
use cmbuild::ops::vendor::{
    vendor, FetchProgress, FloorChoice, ToolchainChoice, VendorOptions, Wanted, CRATES_URL,
};
use cmbuild_store::mirror::Kind;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::common::MirrorArg;

/// Fetch every input of a build into the mirror (online, once).
///
/// Reads the project's Cargo.lock, downloads every crates.io package it lists, checks each
/// against the lock's checksum and stores it under its content ID; then fetches every
/// Debian package of the guest image's base layer and of the toolchain layer the project
/// selects (`--toolchain`, else its rust-toolchain(.toml), else the default; every pinned
/// toolchain with `--all-toolchains`), and the packages of the glibc floor the project's
/// cmbuild.toml asks for (`glibc = "2.36"`; every pinned floor with `--all-glibc-floors`).
/// Re-running downloads nothing already present.
/// Git dependencies, other registries and path dependencies outside the workspace are
/// refused, naming them. On any failure nothing partial is left in the mirror.
///
/// With `--cargo-config OUT.toml`, also unpacks the crates into the directory source
/// `OUT.crates/` next to OUT.toml and writes OUT.toml so that
/// `cargo build --offline --locked --config OUT.toml` builds from the mirror alone.
/// `CMBUILD_CRATES_URL` replaces the download base (default https://static.crates.io/crates).
///
/// Container base images: `--dockerfile PATH` vendors every image the Dockerfile's `FROM`
/// lines (and `COPY --from=`, `RUN --mount=from=`) name, `--oci-image REF` one image. Each
/// must be pinned by digest, `[registry[:port]/]repository[:tag]@sha256:<64 hex>` (no
/// registry means Docker Hub, and `debian` means `library/debian` there); a Dockerfile line
/// without one is refused, naming the file, line and text. The index, the linux/riscv64
/// manifest, the config and every layer are fetched through the registry's OCI distribution
/// API over HTTPS (anonymous token auth), each checked against its digest and declared size,
/// and kept in the mirror by CID with a record per image, so that an offline build finds the
/// image by its digest. An image with no linux/riscv64 variant is refused, listing the
/// platforms it has. With images asked for and no Cargo.toml here (or with `--images-only`),
/// only the images are vendored.
///
/// Examples:
///   cmbuild vendor
///   cmbuild vendor --dockerfile Dockerfile
///   cmbuild vendor --images-only --oci-image docker.io/library/debian:trixie@sha256:<hex>
///   cmbuild vendor --oci-image 127.0.0.1:5000/test/base@sha256:<hex> \
///       --insecure-registry 127.0.0.1:5000
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The project's Cargo.toml (its workspace's Cargo.lock is read) [default: Cargo.toml].
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<PathBuf>,
    #[command(flatten)]
    mirror: MirrorArg,
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
    /// Fetch this pinned Rust toolchain's layer (`1.96`, `1.96.0`, `stable`) instead of the
    /// one the project's rust-toolchain(.toml) selects (or the default).
    #[arg(long, value_name = "VERSION", conflicts_with = "all_toolchains")]
    toolchain: Option<String>,
    /// Fetch every pinned Rust toolchain's layer.
    #[arg(long)]
    all_toolchains: bool,
    /// Fetch every pinned glibc floor's packages, not only the one the project's
    /// cmbuild.toml asks for.
    #[arg(long)]
    all_glibc_floors: bool,
    /// Fetch the container layer's packages (what `cmbuild run --dockerfile` builds with),
    /// as --dockerfile does.
    #[arg(long)]
    container_layer: bool,
    /// Vendor every base image this Dockerfile names (each must be pinned by @sha256 digest;
    /// repeatable).
    #[arg(long, value_name = "PATH")]
    dockerfile: Vec<PathBuf>,
    /// Vendor this container image for linux/riscv64:
    /// `[registry[:port]/]repository[:tag]@sha256:<64 hex>` (repeatable).
    #[arg(long, value_name = "REF@sha256:HEX")]
    oci_image: Vec<String>,
    /// Speak plain HTTP to this registry (`HOST:PORT`, loopback addresses only, e.g. a test
    /// registry on 127.0.0.1:5000); every other registry is reached over HTTPS (repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Vendor only the images of --dockerfile / --oci-image, not the Cargo project.
    #[arg(long, conflicts_with_all = ["crates_only", "cargo_config"])]
    images_only: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let oci = OciOptions {
        dockerfiles: args.dockerfile,
        images: args.oci_image,
        insecure_registries: args.insecure_registry,
    };
    if args.images_only && oci.is_empty() {
        anyhow::bail!("--images-only needs --dockerfile PATH or --oci-image REF");
    }
    // Images alone in a directory without a Cargo project: vendor just the images.
    let cargo_project = !args.images_only
        && (oci.is_empty() || args.manifest_path.is_some() || Path::new("Cargo.toml").is_file());
    let opts = VendorOptions {
        manifest_path: args
            .manifest_path
            .unwrap_or_else(|| PathBuf::from("Cargo.toml")),
        cargo_project,
        oci,
        mirror_dir: args.mirror.dir.clone(),
        cargo_config: args.cargo_config.clone(),
        crates_only: args.crates_only,
        ipfs_api: args.ipfs_api,
        crates_url: std::env::var("CMBUILD_CRATES_URL").unwrap_or_else(|_| CRATES_URL.to_owned()),
        container_layer: args.container_layer,
        glibc_floors: if args.all_glibc_floors {
            FloorChoice::All
        } else {
            FloorChoice::Project
        },
        toolchains: if args.all_toolchains {
            ToolchainChoice::All
        } else {
            ToolchainChoice::Project(args.toolchain)
        },
    };
    let report = vendor(&opts, &mut Bar::default())?;
    if let (Some(config), Some(dir)) = (&args.cargo_config, &report.directory_source) {
        eprintln!(
            "cmbuild vendor: wrote {} (directory source {})",
            config.display(),
            dir.display()
        );
    }
    if let Some(push) = &report.push {
        eprintln!("cmbuild vendor: {push}");
    }
    if let Some(lock_path) = &report.lock_path {
        eprintln!(
            "cmbuild vendor: {} crates from {} are in {}",
            report.crates,
            lock_path.display(),
            args.mirror.dir.display()
        );
    }
    if let Some(oci) = &report.oci {
        eprintln!(
            "cmbuild vendor: {} OCI images (linux/riscv64) are in {} ({} were already there)",
            oci.images.len(),
            args.mirror.dir.display(),
            oci.images_present
        );
    }
    for (kind, what) in [
        (Kind::Crate, "crates"),
        (Kind::Deb, "Debian packages"),
        (Kind::OciBlob, "OCI blobs"),
    ] {
        if let Some(counts) = report.fetch.per_kind.get(&kind) {
            eprintln!(
                "cmbuild vendor:   {what}: {} downloaded ({}), {} already there",
                counts.downloaded,
                HumanBytes(counts.bytes),
                counts.present
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The progress bar on stderr (hidden when stderr is not a terminal, where the one-line
/// summaries say enough). With sizes known up front (Debian packages) it counts bytes, and
/// files of unknown size add their announced length as they start; with no size known
/// (Cargo.lock has none) it counts files and shows the bytes in its message.
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
    by_bytes: bool,
    files_done: usize,
    files: usize,
    bytes_done: u64,
    started: Option<Instant>,
}

impl Bar {
    /// Shows `bytes` downloaded in all (finished files plus the current one).
    fn show(&self, bytes: u64) {
        let Some(bar) = &self.bar else { return };
        if self.by_bytes {
            bar.set_position(bytes);
            bar.set_message(format!("{}/{} files", self.files_done, self.files));
        } else {
            bar.set_message(format!("{} downloaded", HumanBytes(bytes)));
        }
    }
}

impl FetchProgress for Bar {
    fn begin(&mut self, missing: &[&Wanted]) {
        let known: u64 = missing.iter().filter_map(|w| w.size).sum();
        self.by_bytes = missing.iter().any(|w| w.size.is_some());
        let (length, template) = if self.by_bytes {
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
        self.bar = Some(if std::io::stderr().is_terminal() {
            ProgressBar::new(length).with_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            )
        } else {
            ProgressBar::hidden()
        });
        self.files = missing.len();
        self.started = Some(Instant::now());
        self.show(0);
    }

    fn length(&mut self, length: u64) {
        if let (true, Some(bar)) = (self.by_bytes, &self.bar) {
            bar.inc_length(length);
        }
    }

    fn bytes(&mut self, done: u64) {
        self.show(done);
    }

    fn stored(&mut self, size: u64) {
        self.bytes_done += size;
        self.files_done += 1;
        if let (false, Some(bar)) = (self.by_bytes, &self.bar) {
            bar.inc(1);
        }
        self.show(self.bytes_done);
    }

    fn end(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self
            .started
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
            .max(1e-3);
        eprintln!(
            "cmbuild vendor: downloaded {} files, {} in {:.1} s ({}/s)",
            self.files_done,
            HumanBytes(self.bytes_done),
            secs,
            HumanBytes((self.bytes_done as f64 / secs) as u64)
        );
    }

    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
