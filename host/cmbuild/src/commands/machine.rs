use std::process::ExitCode;

/// Run cmbuild's deterministic RISC-V machine directly (the low-level runner).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Boot a program or a kernel on the machine; console to stdout, a summary line to stderr.
    Run,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run => super::not_implemented("cmbuild machine run"),
    }
}
