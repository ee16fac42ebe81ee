use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// A transparency log of attestations, kept as files (RFC 9162 Merkle tree).
///
/// The log directory holds log.pub (the log's public key), leaves (one SHA-256 of an
/// attestation file per line), entries/ (copies of the attestations) and heads/<size>.json
/// (every signed tree head ever published). Proofs are small JSON files that verify offline
/// with only the log's public key.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Append attestation files and publish a new signed tree head.
    ///
    /// Creates the log (and its log.pub from --key) if DIR holds none. Checks the log's
    /// current head against its entries first, and refuses an attestation already logged.
    Append(AppendArgs),
    /// Print the current signed tree head (after checking it against the entries).
    Head(HeadArgs),
    /// Write an inclusion proof (--attestation) or a consistency proof (--from-size).
    Prove(ProveArgs),
    /// Verify proofs offline, or audit a whole log directory.
    ///
    /// With --inclusion: the proof's tree head is signed by the log key and the path leads
    /// from the attestation to its root. With --consistency: both heads are signed and the
    /// newer tree extends the older; --old-head replaces the proof's older head with one you
    /// saw published, so a rewritten log fails. With only --log: every head in heads/ is
    /// checked against the entries. Exit 0 when everything verifies, 1 when a proof or the
    /// log is refused.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct AppendArgs {
    /// The log directory.
    #[arg(long, value_name = "DIR")]
    log: PathBuf,
    /// The log's secret key.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Attestation files to append, in this order.
    #[arg(required = true)]
    attestations: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct HeadArgs {
    /// The log directory.
    #[arg(long, value_name = "DIR")]
    log: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["attestation", "from_size"])))]
struct ProveArgs {
    /// The log directory.
    #[arg(long, value_name = "DIR")]
    log: PathBuf,
    /// Prove this attestation file is in the log.
    #[arg(long, value_name = "FILE")]
    attestation: Option<PathBuf>,
    /// The tree size to prove inclusion in (default: the current head).
    #[arg(long, value_name = "N", requires = "attestation")]
    size: Option<u64>,
    /// Prove the log's head of this size is a prefix of a later head.
    #[arg(long, value_name = "M")]
    from_size: Option<u64>,
    /// The later head's size (default: the current head).
    #[arg(long, value_name = "N", requires = "from_size")]
    to_size: Option<u64>,
    /// Where the proof goes (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["inclusion", "consistency", "log"])))]
struct VerifyArgs {
    /// A log directory: audit it, or take the log key from its log.pub.
    #[arg(long, value_name = "DIR")]
    log: Option<PathBuf>,
    /// The log's public key (required without --log).
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// An inclusion proof file.
    #[arg(long, value_name = "FILE", conflicts_with = "consistency")]
    inclusion: Option<PathBuf>,
    /// The attestation file the inclusion proof is for.
    #[arg(long, value_name = "FILE", requires = "inclusion")]
    attestation: Option<PathBuf>,
    /// A signed tree head the inclusion proof must lead to.
    #[arg(long, value_name = "FILE", requires = "inclusion")]
    head: Option<PathBuf>,
    /// A consistency proof file.
    #[arg(long, value_name = "FILE")]
    consistency: Option<PathBuf>,
    /// A signed tree head seen published earlier; the consistency proof must start there.
    #[arg(long, value_name = "FILE", requires = "consistency")]
    old_head: Option<PathBuf>,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    use cmbuild::ops::log::{self as ops, ProveRequest, VerifyRequest};
    match args.command {
        Command::Append(args) => {
            let head = ops::append(&args.log, &args.key, &args.attestations)?;
            println!(
                "appended {} attestation(s); the log now has {} entries, root {}",
                args.attestations.len(),
                head.tree_size,
                head.root_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Head(args) => {
            match ops::head(&args.log)? {
                Some(head) => print!("{}", String::from_utf8(head.to_file_bytes()?)?),
                None => println!("the log is empty"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prove(args) => {
            let request = match (args.attestation, args.from_size) {
                (Some(attestation), _) => ProveRequest::Inclusion {
                    attestation,
                    size: args.size,
                },
                (None, Some(from)) => ProveRequest::Consistency {
                    from,
                    to: args.to_size,
                },
                (None, None) => unreachable!("clap requires --attestation or --from-size"),
            };
            let bytes = ops::prove(&args.log, &request)?;
            match &args.out {
                Some(path) => {
                    std::fs::write(path, &bytes)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
                None => print!("{}", String::from_utf8(bytes)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let request = match (args.inclusion, args.consistency) {
                (Some(proof), _) => VerifyRequest::Inclusion {
                    proof,
                    attestation: args.attestation,
                    head: args.head,
                },
                (None, Some(proof)) => VerifyRequest::Consistency {
                    proof,
                    old_head: args.old_head,
                },
                (None, None) => VerifyRequest::Audit,
            };
            let verdict = ops::verify(args.log.as_deref(), args.log_key.as_deref(), &request)?;
            // The message may quote a proof's contents: untrusted.
            println!("{}", cmbuild::terminal::sanitize(&verdict.message));
            if verdict.passed {
                println!("Log check PASSED");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("Log check FAILED");
                Ok(ExitCode::from(1))
            }
        }
    }
}
