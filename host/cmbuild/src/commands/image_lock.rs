//! `cmbuild image lock`: resolve `guest-image/packages.toml` against Debian's signed
//! indices, pin every package of the closure by sha256 and CID, store each `.deb` in the
//! mirror, and write `guest-image/lock.json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cmbuild_image::debian::DEFAULT_KEYRING;
use cmbuild_image::http::{default_cache_dir, HttpArchive};
use cmbuild_image::lock::Request;
use cmbuild_image::locking::{self, LockOptions, MirrorDebStore, Progress};
use cmbuild_store::mirror::{Mirror, DEFAULT_DIR};

/// Resolve the package request against Debian's signed indices into the guest-image lock.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The content-addressed mirror that receives every locked .deb.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
    /// The package request.
    #[arg(long, value_name = "FILE", default_value = "guest-image/packages.toml")]
    request: PathBuf,
    /// Where the lock is written.
    #[arg(long, value_name = "FILE", default_value = "guest-image/lock.json")]
    output: PathBuf,
    /// The OpenPGP keyring InRelease must be signed with.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_KEYRING)]
    keyring: PathBuf,
    /// Resolve and list the closure only: download no package, write no lock.
    #[arg(long)]
    dry_run: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let request = Request::parse(&text)?;
    let options = LockOptions {
        keyring: args.keyring.clone(),
    };
    let mut archive = HttpArchive::new(&request.mirror, default_cache_dir());
    eprintln!(
        "image lock: {} {} for {} from {}, signed with a key of {}",
        request.suite,
        request.component,
        request.architectures().join(", "),
        request.mirror,
        args.keyring.display()
    );
    let mut progress = |event: Progress| print_progress(&event, "image lock");
    let resolution = locking::resolve_request(&request, &options, &mut archive, &mut progress)?;
    if args.dry_run {
        for p in &resolution.packages {
            println!("{} {} {} {}", p.name, p.architecture, p.version, p.size);
        }
        let bytes: u64 = resolution.packages.iter().map(|p| p.size).sum();
        eprintln!(
            "image lock: dry run: {} packages, {}; nothing downloaded or written",
            resolution.packages.len(),
            human_size(bytes)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mirror = Mirror::open(&args.mirror)
        .with_context(|| format!("opening the mirror {}", args.mirror.display()))?;
    let mut store = MirrorDebStore::new(&mirror, &request.mirror);
    let lock = locking::pin_packages(
        &request,
        resolution,
        &mut archive,
        &mut store,
        &mut progress,
    )?;
    cmbuild_store::atomic::write_atomically(&args.output, lock.to_json().as_bytes())
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "image lock: wrote {}: {} packages, {} (Debian {}, {})",
        args.output.display(),
        lock.packages.len(),
        human_size(lock.total_size()),
        lock.release_version,
        lock.release_date
    );
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

/// Sizes as people read them: `12.9 MB` (powers of 1000, like Debian's tools).
pub fn human_size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(12_910_137), "12.9 MB");
        assert_eq!(human_size(1_500), "1.5 kB");
        assert_eq!(human_size(2_345_000_000), "2.35 GB");
    }
}
