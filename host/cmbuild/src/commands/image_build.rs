//! `cmbuild image build`: assemble the guest image offline from the mirror, record the
//! content IDs of its four files and of each triple's toolchain in `digests.lock.env`, or,
//! with `--check`, prove the pinned ones still come out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cmbuild_image::image::{self, Step, OUTPUTS};
use cmbuild_image::lock::Lock;
use cmbuild_store::cid::{cid_of_bytes, cid_of_file};
use cmbuild_store::mirror::{Mirror, DEFAULT_DIR};

/// Assemble kernel, firmware, initramfs and root image offline from the mirror.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The content-addressed mirror holding every locked .deb (`cmbuild vendor` fills it).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    mirror: PathBuf,
    /// Where the image files are written.
    #[arg(long, value_name = "DIR", default_value = "build/image")]
    out: PathBuf,
    /// The guest-image lock naming every package.
    #[arg(long, value_name = "FILE", default_value = "guest-image/lock.json")]
    lock: PathBuf,
    /// The pins file updated (or, with --check, compared).
    #[arg(long, value_name = "FILE", default_value = "digests.lock.env")]
    digests: PathBuf,
    /// Compare the result with the pins instead of writing them; fail naming what drifted.
    #[arg(long)]
    check: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.lock)
        .with_context(|| format!("reading the guest-image lock {}", args.lock.display()))?;
    let lock = Lock::parse(&text).with_context(|| format!("parsing {}", args.lock.display()))?;
    let mirror = Mirror::open(&args.mirror)
        .with_context(|| format!("opening the mirror {}", args.mirror.display()))?;
    let load =
        |package: &cmbuild_image::lock::LockedPackage| Ok(mirror.read_verified(&package.cid)?);
    let progress = |step: Step| match step {
        Step::Extracting { name, index, total } => {
            eprintln!("image build: [{}/{total}] extracting {name}", index + 1)
        }
        Step::Writing(file) => eprintln!("image build: writing {file}"),
    };
    let built = image::build_image(&lock, load, &args.out, progress).with_context(|| {
        format!(
            "building the guest image (is every locked package in {}? `cmbuild vendor` puts them there)",
            args.mirror.display()
        )
    })?;

    let mut pins = BTreeMap::new();
    for (key, file) in OUTPUTS {
        let path = &built.files[*file];
        let cid = cid_of_file(path).with_context(|| format!("hashing {}", path.display()))?;
        pins.insert(
            key.to_string(),
            (cid.to_string(), path.display().to_string()),
        );
    }
    for (triple, text) in &built.toolchains {
        let cid = cid_of_bytes(text.as_bytes());
        pins.insert(
            image::toolchain_key(triple),
            (cid.to_string(), format!("toolchain of {triple}")),
        );
    }

    let existing = match std::fs::read_to_string(&args.digests) {
        Ok(text) => image::parse_env(&text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !args.check => BTreeMap::new(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", args.digests.display())),
    };
    if args.check {
        let mut drifted = 0;
        for (key, (cid, what)) in &pins {
            match existing.get(key) {
                Some(pinned) if pinned == cid => println!("ok      {key}={cid}"),
                Some(pinned) => {
                    drifted += 1;
                    eprintln!(
                        "DRIFTED {what}: {key} is pinned as {pinned}, this build gives {cid}"
                    );
                }
                None => {
                    drifted += 1;
                    eprintln!(
                        "MISSING {what}: {} has no {key} (this build gives {cid})",
                        args.digests.display()
                    );
                }
            }
        }
        if drifted > 0 {
            eprintln!(
                "image build --check: FAILED, {drifted} pin(s) of {} do not reproduce",
                args.digests.display()
            );
            return Ok(ExitCode::from(1));
        }
        eprintln!(
            "image build --check: every pin reproduces ({:.0?})",
            started.elapsed()
        );
        return Ok(ExitCode::SUCCESS);
    }

    // Other pins in the file (written by other commands) are kept; ours are replaced.
    let mut merged = existing;
    for (key, (cid, what)) in &pins {
        println!("{key}={cid}  # {what}");
        merged.insert(key.clone(), cid.clone());
    }
    cmbuild_store::atomic::write_atomically(&args.digests, image::render_env(&merged).as_bytes())
        .with_context(|| format!("writing {}", args.digests.display()))?;
    eprintln!(
        "image build: wrote {} and {} in {:.0?}",
        args.out.display(),
        args.digests.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
