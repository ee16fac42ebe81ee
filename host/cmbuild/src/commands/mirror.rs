use std::process::ExitCode;

/// Inspect and maintain the content-addressed vendor mirror.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rehash every blob of the mirror; exit 1 naming each blob whose bytes do not match its CID.
    Verify,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Verify => super::not_implemented("cmbuild mirror verify"),
    }
}
