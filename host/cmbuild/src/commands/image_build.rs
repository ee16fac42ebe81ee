//! `cmbuild image build`: assemble the guest image offline from the mirror, record the
//! content IDs of its four base files and of each toolchain layer in `digests.lock.env`,
//! or, with `--check`, prove the pinned ones still come out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cmbuild::ops::image::{build, ImageBuildOptions};
use cmbuild_image::image::Step;

use super::common::MirrorArg;

/// Assemble kernel, firmware, initramfs, root image and every toolchain layer offline from
/// the mirror.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    mirror: MirrorArg,
    /// Where the image files are written.
    #[arg(long, value_name = "DIR", default_value = "build/image")]
    out: PathBuf,
    /// The base layer's lock.
    #[arg(long, value_name = "FILE", default_value = "guest-image/lock.json")]
    lock: PathBuf,
    /// The toolchain layers' locks (each layer is built and pinned).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "guest-image/toolchains.lock.json"
    )]
    toolchains: PathBuf,
    /// The container layer's lock (the layer `run --dockerfile` uses; built and pinned
    /// when the file exists).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "guest-image/containers.lock.json"
    )]
    containers: PathBuf,
    /// The pins file updated (or, with --check, compared).
    #[arg(long, value_name = "FILE", default_value = "digests.lock.env")]
    digests: PathBuf,
    /// Compare the result with the pins instead of writing them; fail naming what drifted.
    #[arg(long)]
    check: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let opts = ImageBuildOptions {
        mirror_dir: args.mirror.dir,
        out_dir: args.out.clone(),
        lock: args.lock,
        toolchains: args.toolchains,
        containers: args.containers,
        digests: args.digests.clone(),
        check: args.check,
    };
    let mut progress = |step: Step| match step {
        Step::Extracting { name, index, total } => {
            eprintln!("image build: [{}/{total}] extracting {name}", index + 1)
        }
        Step::Writing(file) => eprintln!("image build: writing {file}"),
    };
    let pins = build(&opts, &mut progress)?;
    if !args.check {
        for pin in &pins {
            println!("{}={}  # {}", pin.key, pin.cid, pin.what);
        }
        eprintln!(
            "image build: wrote {} and {} in {:.0?}",
            args.out.display(),
            args.digests.display(),
            started.elapsed()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut drifted = 0;
    for pin in &pins {
        match &pin.pinned {
            _ if pin.reproduces() => println!("ok      {}={}", pin.key, pin.cid),
            Some(pinned) => {
                drifted += 1;
                eprintln!(
                    "DRIFTED {}: {} is pinned as {pinned}, this build gives {}",
                    pin.what, pin.key, pin.cid
                );
            }
            None => {
                drifted += 1;
                eprintln!(
                    "MISSING {}: {} has no {} (this build gives {})",
                    pin.what,
                    args.digests.display(),
                    pin.key,
                    pin.cid
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
    Ok(ExitCode::SUCCESS)
}
