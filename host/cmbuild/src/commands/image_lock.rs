//! `cmbuild image lock`: resolve `guest-image/packages.toml` against Debian's signed
//! indices, pin every package of each layer's closure by sha256 and CID, store each `.deb`
//! in the mirror, and write `guest-image/lock.json` (the base layer),
//! `guest-image/toolchains.lock.json` (one lock per toolchain layer) and
//! `guest-image/glibc-floors.lock.json` (one lock per glibc floor).

use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::ops::human_size;
use cmbuild::ops::image::{lock, ImageLockOptions, LockOutcome};
use cmbuild_image::debian::DEFAULT_KEYRING;
use cmbuild_image::lock::Request;
use cmbuild_image::locking::Progress;

use super::common::MirrorArg;

/// Resolve the package request against Debian's signed indices into the guest-image locks: the
/// base layer's, one per pinned toolchain layer and one per glibc floor.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    mirror: MirrorArg,
    /// The package request.
    #[arg(long, value_name = "FILE", default_value = "guest-image/packages.toml")]
    request: PathBuf,
    /// Where the base layer's lock is written.
    #[arg(long, value_name = "FILE", default_value = "guest-image/lock.json")]
    output: PathBuf,
    /// Where the toolchain layers' locks are written.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "guest-image/toolchains.lock.json"
    )]
    toolchains_output: PathBuf,
    /// Where the glibc floors' locks are written.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "guest-image/glibc-floors.lock.json"
    )]
    glibc_floors_output: PathBuf,
    /// Lock only the glibc floors: the base's and the toolchains' locks (so the image and
    /// every root hash) stay as they are.
    #[arg(long, conflicts_with = "containers_only")]
    glibc_floors_only: bool,
    /// Where the container layer's lock is written.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "guest-image/containers.lock.json"
    )]
    containers_output: PathBuf,
    /// Lock only the container layer (what `run --dockerfile` runs), over the base lock
    /// at --output as it is: the other locks (so every published root hash) stay as they
    /// are.
    #[arg(long)]
    containers_only: bool,
    /// The OpenPGP keyring InRelease must be signed with.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_KEYRING)]
    keyring: PathBuf,
    /// Resolve and list the closure only: download no package, write no lock.
    #[arg(long)]
    dry_run: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ImageLockOptions {
        mirror_dir: args.mirror.dir,
        request: args.request,
        output: args.output.clone(),
        toolchains_output: args.toolchains_output.clone(),
        floors_output: args.glibc_floors_output.clone(),
        glibc_floors_only: args.glibc_floors_only,
        containers_output: args.containers_output.clone(),
        containers_only: args.containers_only,
        keyring: args.keyring.clone(),
        dry_run: args.dry_run,
    };
    let floors_only = args.glibc_floors_only;
    let containers_only = args.containers_only;
    let mut announce = |request: &Request| {
        if containers_only {
            return eprintln!(
                "image lock: the container layer only, over {}, from {}, signed with a key of {}",
                args.output.display(),
                request.mirror,
                args.keyring.display()
            );
        }
        if floors_only {
            let floors: Vec<String> = request
                .glibc_floors
                .iter()
                .map(|(id, floor)| format!("{id} ({})", floor.suite))
                .collect();
            return eprintln!(
                "image lock: the glibc floors only ({}) from {}, signed with a key of {}",
                floors.join(", "),
                request.mirror,
                args.keyring.display()
            );
        }
        eprintln!(
            "image lock: {} {} for {} from {}, signed with a key of {}",
            request.suite,
            request.component,
            request.architectures().join(", "),
            request.mirror,
            args.keyring.display()
        )
    };
    let mut progress = |event: Progress| print_progress(&event, "image lock");
    match lock(&opts, &mut announce, &mut progress)? {
        LockOutcome::Resolved(layers) => {
            for (layer, packages) in &layers {
                for p in packages {
                    println!(
                        "{layer}: {} {} {} {}",
                        p.name, p.architecture, p.version, p.size
                    );
                }
                let bytes: u64 = packages.iter().map(|p| p.size).sum();
                eprintln!(
                    "image lock: dry run: {layer}: {} packages, {}",
                    packages.len(),
                    human_size(bytes)
                );
            }
            eprintln!("image lock: dry run: nothing downloaded or written");
        }
        LockOutcome::Written {
            base,
            toolchains,
            floors,
            containers,
        } => {
            if let Some(lock) = base {
                eprintln!(
                    "image lock: wrote {}: base layer, {} packages, {} (Debian {}, {})",
                    args.output.display(),
                    lock.packages.len(),
                    human_size(lock.total_size()),
                    lock.release_version,
                    lock.release_date
                );
            }
            if let Some(layer) = containers {
                eprintln!(
                    "image lock: wrote {}: container layer, {} packages, {} ({})",
                    args.containers_output.display(),
                    layer.packages.len(),
                    human_size(layer.total_size()),
                    layer.suite
                );
            }
            for floors in floors.iter() {
                for (id, floor) in &floors.floors {
                    eprintln!(
                        "image lock: wrote {}: glibc floor {id}, {} packages, {} (Debian {} {}), \
                         sysroots image {}",
                        args.glibc_floors_output.display(),
                        floor.packages.len(),
                        human_size(floor.total_size()),
                        floor.release_version,
                        floor.suite,
                        floors
                            .images
                            .get(id)
                            .map_or("none".into(), |c| c.to_string())
                    );
                }
            }
            let Some(toolchains) = toolchains else {
                return Ok(ExitCode::SUCCESS);
            };
            for (id, layer) in &toolchains.toolchains {
                eprintln!(
                    "image lock: wrote {}: toolchain {id}{}, {} packages, {} ({})",
                    args.toolchains_output.display(),
                    if *id == toolchains.default {
                        " (default)"
                    } else {
                        ""
                    },
                    layer.packages.len(),
                    human_size(layer.total_size()),
                    layer.suite
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One stderr line per step (each starting with `prefix`), so a long run shows where it is.
pub fn print_progress(event: &Progress, prefix: &str) {
    match event {
        Progress::Release {
            version,
            date,
            bytes,
        } => eprintln!(
            "{prefix}: InRelease ({}) signature good: Debian {version}, {date}",
            human_size(*bytes)
        ),
        Progress::Index {
            path,
            bytes,
            packages,
        } => eprintln!(
            "{prefix}: {path}: {} matches InRelease, {packages} packages",
            human_size(*bytes)
        ),
        Progress::Resolved {
            packages,
            bytes,
            to_download,
            bytes_to_download,
        } => eprintln!(
            "{prefix}: {packages} packages ({}); {to_download} to download ({})",
            human_size(*bytes),
            human_size(*bytes_to_download)
        ),
        Progress::Downloading {
            filename,
            size,
            done,
            of,
        } => eprintln!("  [{}/{of}] {filename} ({})", done + 1, human_size(*size)),
    }
}
