//! One module per subcommand: `Args` (parsed by clap) and `exec` (calls the library).

pub mod cid;
pub mod compare;
pub mod image;
pub mod machine;
pub mod mirror;
pub mod run;
pub mod vendor;
pub mod verify;

use std::process::ExitCode;

/// The answer of a subcommand that another issue has not delivered yet.
pub fn not_implemented(what: &str) -> anyhow::Result<ExitCode> {
    eprintln!("cmbuild: `{what}` is not implemented yet");
    Ok(ExitCode::from(2))
}
