//! `cmbuild image template`: boot the pinned guest image to its ready point, keep that
//! template machine in the mirror, and pin its hash in `digests.lock.env` (or, with
//! `--check`, prove the pinned hash still comes out).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cmbuild::guest::MachineSettings;
use cmbuild::pins;
use cmbuild::template::{self, Event};
use cmbuild_store::mirror::Mirror;

use super::common::{ImageDirArg, MirrorArg};

/// Boot the guest image to its ready point and keep that template machine in the mirror.
///
/// Every `cmbuild run` machine resumes from this template (deriving it on first use when
/// the mirror has none). This command always boots afresh, stores the result in the mirror
/// by CID, prints the template hash (the state hash at the ready point) and pins it in the
/// digests file as GUEST_TEMPLATE_HASH, for the default machine settings and the default
/// toolchain layer, and does the same for the offloading build machines' template (those
/// settings with the offload channel: `run --offload`) as GUEST_PARENT_TEMPLATE_HASH; with
/// --check it writes no pin and fails if a hash differs from the pinned one.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    mirror: MirrorArg,
    #[command(flatten)]
    image_dir: ImageDirArg,
    /// The pins file naming the image (read) and the template hashes (updated, or with
    /// --check, compared).
    #[arg(long, value_name = "FILE", default_value = "digests.lock.env")]
    digests: PathBuf,
    /// Compare the derived template hashes with the pinned ones instead of writing them.
    #[arg(long)]
    check: bool,
    /// Derive with the translator off (the interpreter alone); the hash must not change.
    #[arg(long)]
    no_jit: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.digests)
        .with_context(|| format!("reading {}", args.digests.display()))?;
    let mut pinned =
        pins::parse(&text).with_context(|| format!("reading {}", args.digests.display()))?;
    let mirror = Mirror::open(&args.mirror.dir)?;
    // The pinned templates are the default toolchain's.
    let toolchain = cmbuild_image::layers::shipped()?
        .default_version()
        .context("the shipped toolchain locks name no default toolchain")?;
    let image =
        cmbuild::run::read_pinned_image(&mirror, &pinned, Some(&args.image_dir.dir), toolchain)?;
    let cids = cmbuild::run::image_cids(&pinned, toolchain)?;
    let default = MachineSettings::default();
    let mut failed = false;
    for settings in [default, cmbuild::run::parent_settings(&default)] {
        let pin = cmbuild::run::template_pin(&settings, toolchain)
            .context("the default settings have no template pin")?;
        let started = Instant::now();
        let mut console = cmbuild::terminal::Stream::new();
        let mut notes = |event: Event<'_>| match event {
            Event::Note(note) => eprintln!("image template: {note}"),
            // The guest's console, sanitised: the boot up to the ready point.
            Event::Console(bytes) => eprint!("{}", console.push(bytes)),
        };
        let derived = if args.no_jit {
            template::derive_with(&mirror, &image, &cids, &settings, false, &mut notes)?
        } else {
            template::derive(&mirror, &image, &cids, &settings, &mut notes)?
        };
        let record = &derived.record;
        println!("{pin}={}", record.root_hash);
        eprintln!(
            "image template: {pin}: ready point at mcycle {}, template {} ({} bytes), derived in {:.1?}",
            record.mcycle,
            record.cid,
            derived.blob.len(),
            started.elapsed()
        );
        if !args.check {
            pinned.insert(pin.to_owned(), record.root_hash.clone());
            continue;
        }
        match pinned.get(pin) {
            Some(hash) if *hash == record.root_hash => {
                eprintln!("image template --check: the pinned {pin} reproduces");
            }
            Some(hash) => {
                failed = true;
                eprintln!(
                    "DRIFTED template: {pin} is pinned as {hash}, this image gives {}",
                    record.root_hash
                );
            }
            None => {
                failed = true;
                eprintln!(
                    "MISSING template: {} has no {pin} (this image gives {})",
                    args.digests.display(),
                    record.root_hash
                );
            }
        }
    }
    if args.check {
        return Ok(match failed {
            true => ExitCode::from(1),
            false => ExitCode::SUCCESS,
        });
    }
    cmbuild_store::atomic::write_atomically(&args.digests, pins::render(&pinned).as_bytes())
        .with_context(|| format!("writing {}", args.digests.display()))?;
    eprintln!("image template: pinned in {}", args.digests.display());
    Ok(ExitCode::SUCCESS)
}
