//! The `cmbuild` command line: a thin layer over the host crates.
//!
//! Each subcommand lives in `commands/<name>.rs` with an `Args` struct (what clap parses)
//! and an `exec` function that fills an options struct and calls one `cmbuild::ops`
//! function. Errors are reported once, here, as `error: <cause chain>` (sanitised: see
//! `cmbuild::terminal`) with exit status 2; a check that ran and failed
//! (a mirror blob that does not verify, a reproducibility mismatch) exits 1.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Deterministic, emulator-sandboxed release builds for Rust projects.
///
/// `cmbuild vendor` fetches every input once (online) into a content-addressed mirror;
/// `cmbuild run --release TAG` then builds the release offline inside cmbuild's own
/// deterministic RISC-V machine, for every target triple, and anyone re-running it gets
/// the same bytes and the same machine state hash.
#[derive(Debug, Parser)]
#[command(
    name = "cmbuild",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Vendor(commands::vendor::Args),
    Cid(commands::cid::Args),
    Mirror(commands::mirror::Args),
    Machine(commands::machine::Args),
    Image(commands::image::Args),
    Run(commands::run::Args),
    Compare(commands::compare::Args),
    Verify(commands::verify::Args),
    Key(commands::key::Args),
    Attest(commands::attest::Args),
    VerifyAttestations(commands::verify_attestations::Args),
    Log(commands::log::Args),
    Prove(commands::prove::Args),
    VerifyProof(commands::verify_proof::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vendor(args) => commands::vendor::exec(args),
        Command::Cid(args) => commands::cid::exec(args),
        Command::Mirror(args) => commands::mirror::exec(args),
        Command::Machine(args) => commands::machine::exec(args),
        Command::Image(args) => commands::image::exec(args),
        Command::Run(args) => commands::run::exec(args),
        Command::Compare(args) => commands::compare::exec(args),
        Command::Verify(args) => commands::verify::exec(args),
        Command::Key(args) => commands::key::exec(args),
        Command::Attest(args) => commands::attest::exec(args),
        Command::VerifyAttestations(args) => commands::verify_attestations::exec(args),
        Command::Log(args) => commands::log::exec(args),
        Command::Prove(args) => commands::prove::exec(args),
        Command::VerifyProof(args) => commands::verify_proof::exec(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Errors may quote untrusted text (guest logs, published records, servers).
            eprintln!(
                "error: {}",
                cmbuild::terminal::sanitize(&format!("{err:#}"))
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        // Every subcommand, with its flattened argument groups: unique ids, valid defaults.
        super::Cli::command().debug_assert();
    }
}
