//! `cmbuild run`: one release build ([`crate::run::run_release`]), or, with
//! `--test-reproduce`, two independent ones compared.

use crate::compare::{CompareError, Report};
use crate::run::{run_release, Progress, RunError, RunOptions, RunSummary};

/// Why `cmbuild run` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A build failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The two builds could not be compared.
    #[error(transparent)]
    Compare(#[from] CompareError),
}

/// Builds the release once; with `reproduce`, twice — into `OUT/run1` and `OUT/run2` —
/// and compares the two. `on_run` is told of each run as it starts (`None`) and ends.
pub fn run(
    opts: &RunOptions,
    reproduce: bool,
    progress: &(dyn Fn(Progress) + Sync),
    on_run: &mut dyn FnMut(&str, Option<&RunSummary>),
) -> Result<Option<Report>, ReleaseError> {
    if !reproduce {
        let summary = run_release(opts, progress)?;
        on_run("", Some(&summary));
        return Ok(None);
    }
    let mut dirs = Vec::new();
    for name in ["run1", "run2"] {
        on_run(name, None);
        let summary = run_release(
            &RunOptions {
                out_dir: opts.out_dir.join(name),
                // The second run computes every offloaded job again rather than take the
                // first run's results from the cache, so that the comparison covers the
                // siblings too (each job's record names its sibling's root hash).
                recompute_jobs: opts.recompute_jobs || name == "run2",
                ..opts.clone()
            },
            progress,
        )?;
        on_run(name, Some(&summary));
        dirs.push(summary.dir);
    }
    Ok(Some(super::compare::compare(&dirs[0], &dirs[1])?))
}
