use std::process::ExitCode;

/// Resolve, lock and assemble the guest machine image from pinned Debian packages.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Resolve the package request against Debian's signed indices into the guest-image locks
    /// (base, toolchain layers, glibc floors).
    Lock(super::image_lock::Args),
    /// Assemble kernel, firmware, initramfs and root image offline from the mirror.
    Build(super::image_build::Args),
    /// Boot the guest image to its ready point (plain, and with the offload channel), keep
    /// both template machines in the mirror and pin their hashes (or, with --check, prove the
    /// pinned hashes reproduce).
    Template(super::image_template::Args),
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Lock(args) => super::image_lock::exec(args),
        Command::Build(args) => super::image_build::exec(args),
        Command::Template(args) => super::image_template::exec(args),
    }
}
