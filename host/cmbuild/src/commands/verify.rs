use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::ops::verify::{verify, VerifyOptions};

use super::common::{ImageDirArg, JobsArg, MirrorArg, PinsArg};

/// Rebuild what a published manifest lists, then compare the rebuild with it.
///
/// Reads PUBLISHED_DIR/manifest.json and machine.json (untrusted; every name in them is
/// checked before use), checks that the project's git has the commit the manifest names
/// and that the release name (a tag, say v1.2.0) names that commit there too, rebuilds it
/// under that name with `cmbuild run` one machine per published machine (a single target, or the
/// project's targets together for a --single-machine build) on the machine settings
/// machine.json records (RAM, drive sizes), and compares artifacts, machine inputs and
/// machine root hashes as `cmbuild compare` does. Ends with
/// `Reproducibility check PASSED` (exit 0) or `Reproducibility check FAILED` (exit 1).
///
/// Example: cmbuild verify ~/Downloads/app-v1.2.0 --project ~/src/app
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Directory holding the published manifest.json, machine.json and artifacts.
    published: PathBuf,
    /// The project's source (any directory inside its git repository).
    #[arg(long, default_value = ".", value_name = "DIR")]
    project: PathBuf,
    #[command(flatten)]
    mirror: MirrorArg,
    #[command(flatten)]
    image_dir: ImageDirArg,
    /// Where the rebuild goes (default: a fresh directory under builds/verify).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    pins: PinsArg,
    #[command(flatten)]
    jobs: JobsArg,
    /// For an offloaded release: compute every rustc job of the rebuild in a sibling
    /// machine, even those the mirror's cache holds (a verifier who did not fill the
    /// mirror itself). Without it, jobs this mirror has seen come from its cache.
    #[arg(long)]
    recompute_jobs: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let opts = VerifyOptions {
        published: args.published,
        project_dir: args.project,
        mirror_dir: args.mirror.dir,
        image_dir: Some(args.image_dir.dir),
        out: args.out,
        jobs: args.jobs.get(),
        pins: args.pins.load()?,
        recompute_jobs: args.recompute_jobs,
    };
    let printer = super::run::ProgressPrinter::new("cmbuild verify");
    let report = verify(&opts, &|p| printer.show(p));
    printer.clear();
    let report = report?;
    Ok(super::compare::print_report(&report))
}
