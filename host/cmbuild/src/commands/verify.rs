use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Rebuild what a published manifest lists, then compare the rebuild with it.
///
/// Reads PUBLISHED_DIR/manifest.json (untrusted), checks that the project's git has the
/// commit it names, rebuilds exactly the targets it lists with `cmbuild run`, and compares
/// artifacts and machine root hashes as `cmbuild compare` does. Ends with
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
    /// The content-addressed mirror `cmbuild vendor` filled.
    #[arg(long, default_value = "vendor-mirror", value_name = "DIR")]
    mirror: PathBuf,
    /// Where `cmbuild image build` wrote the guest image (used for pinned image files that
    /// are not in the mirror; every file is checked against its pinned CID).
    #[arg(long, default_value = "build/image", value_name = "DIR")]
    image_dir: PathBuf,
    /// Where the rebuild goes (default: a fresh directory under builds/verify).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A digests.lock.env to use instead of the one cmbuild was built with.
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// Machines run at once; default: the number of cores.
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let manifest = cmbuild::manifest::read_manifest(&args.published.join("manifest.json"))?;
    let rev = cmbuild::project::resolve_revision(&args.project, &manifest.commit)
        .with_context(|| format!("the published build is of commit {}", manifest.commit))?;
    let targets: BTreeSet<&str> = manifest
        .artifacts
        .iter()
        .map(|a| a.target.as_str())
        .collect();
    anyhow::ensure!(
        !targets.is_empty(),
        "the published manifest lists no artifacts"
    );
    let pins_text = match &args.pins {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => cmbuild::pins::BUILTIN.to_owned(),
    };
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("builds/verify").join(&rev.commit[..12]));
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut dirs = Vec::new();
    for target in &targets {
        // One run per target keeps each machine's identity independent of the others.
        let opts = cmbuild::run::RunOptions {
            project_dir: args.project.clone(),
            rev: rev.commit.clone(),
            target: Some((*target).to_owned()),
            profile: None,
            out_dir: out.join(target),
            mirror_dir: args.mirror.clone(),
            image_dir: Some(args.image_dir.clone()),
            jobs,
            machine: Default::default(),
            machine_per_target: true,
            pins: cmbuild::pins::parse(&pins_text)?,
        };
        let printer = super::run::ProgressPrinter::new("cmbuild verify");
        let summary = cmbuild::run::run_release(&opts, &|p| printer.show(p))?;
        dirs.push(summary.dir);
    }
    // One verdict over every target's comparison.
    let mut combined = cmbuild::compare::Report::default();
    for dir in &dirs {
        let report =
            cmbuild::compare::compare_builds(dir, &args.published, &super::compare::cid_of_file)?;
        combined.compared.extend(report.compared);
        combined.findings.extend(report.findings);
    }
    Ok(super::compare::print_report(&combined))
}
