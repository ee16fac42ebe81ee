use std::path::PathBuf;
use std::process::ExitCode;

use cmbuild::compare::Finding;
use cmbuild::terminal::sanitize;

/// Compare two build outputs: the smaller set of artifacts must be inside the larger.
///
/// Each directory holds a `manifest.json` and a `machine.json` as written by `cmbuild run`;
/// both are treated as untrusted: paths must be relative with no `..` and no symlinks, and
/// every hash a manifest claims is recomputed from its file. A side with no artifacts or no
/// machine.json fails, and so does a machine without a counterpart that built the same
/// targets. Input drift (the builds used a different crate, version, Cargo.lock, toolchain,
/// machine input or machine setting) is reported apart from output drift (same inputs,
/// different bytes or machine root hashes). Ends with
/// `Reproducibility check PASSED` (exit 0) or `Reproducibility check FAILED` (exit 1).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// First build directory (containing manifest.json), e.g. builds/v0.1.0.
    a: PathBuf,
    /// Second build directory, e.g. a published release downloaded elsewhere.
    b: PathBuf,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let report = cmbuild::ops::compare::compare(&args.a, &args.b)?;
    Ok(print_report(&report))
}

/// Prints a comparison's findings, inputs first, and the verdict; returns the exit code.
pub fn print_report(report: &cmbuild::compare::Report) -> ExitCode {
    println!("compared {} artifact(s)", report.compared.len());
    for key in &report.compared {
        println!("  {}", sanitize(&key.to_string()));
    }
    let (inputs, others): (Vec<&Finding>, Vec<&Finding>) =
        report.findings.iter().partition(|f| f.is_input_drift());
    if !inputs.is_empty() {
        println!("input drift (the builds did not start from the same inputs):");
        for finding in inputs {
            println!("  {}", sanitize(&finding.to_string()));
        }
    }
    if !others.is_empty() {
        println!("problems:");
        for finding in others {
            println!("  {}", sanitize(&finding.to_string()));
        }
    }
    if report.passed() {
        println!("Reproducibility check PASSED");
        ExitCode::SUCCESS
    } else {
        println!("Reproducibility check FAILED");
        ExitCode::from(1)
    }
}
