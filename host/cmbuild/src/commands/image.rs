use std::process::ExitCode;

/// Resolve, lock and assemble the guest machine image from pinned Debian packages.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Resolve the package request against Debian trixie's signed indices into guest-image/lock.
    Lock,
    /// Assemble kernel, firmware, initramfs and root image offline from the mirror.
    Build,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Lock => super::not_implemented("cmbuild image lock"),
        Command::Build => super::not_implemented("cmbuild image build"),
    }
}
