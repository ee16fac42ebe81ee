use std::path::PathBuf;
use std::process::ExitCode;

/// Manage Ed25519 signing keys for attestations and transparency logs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make a new Ed25519 key pair from the operating system's randomness.
    ///
    /// Writes the secret key to FILE (mode 0600: the 32-byte seed as hex) and the public key
    /// to FILE.pub (hex of the 32 raw bytes, one line, usable as a trusted-keys line), and
    /// prints the public key and its key ID (hex SHA-256 of the raw public key). Refuses to
    /// overwrite either file.
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Where the secret key goes; the public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Generate(args) => {
            let key = cmbuild::ops::key::generate(&args.out)?;
            println!("public key {}", key.public_hex);
            println!("keyid      {}", key.keyid);
            println!(
                "wrote {} (secret, mode 0600) and {}",
                args.out.display(),
                key.pub_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
