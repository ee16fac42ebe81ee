use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cmbuild_trust::keys::{read_public_key, PublicKey, SecretKey};
use cmbuild_trust::tlog::{ConsistencyProof, InclusionProof, Log, TreeHead};

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
    match args.command {
        Command::Append(args) => append(args),
        Command::Head(args) => {
            let log = Log::open(&args.log)?;
            match log.head()? {
                Some(head) => print!("{}", String::from_utf8(head.to_file_bytes()?)?),
                None => println!("the log is empty"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prove(args) => prove(args),
        Command::Verify(args) => verify(args),
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= cmbuild_trust::dsse::MAX_ENVELOPE_BYTES,
        "{} is larger than an attestation may be",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn append(args: AppendArgs) -> anyhow::Result<ExitCode> {
    let key = SecretKey::read(&args.key)
        .with_context(|| format!("reading the key {}", args.key.display()))?;
    let files = args
        .attestations
        .iter()
        .map(|p| read_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut log = Log::open_or_create(&args.log, &key)?;
    let head = log.append(&key, &files)?;
    println!(
        "appended {} attestation(s); the log now has {} entries, root {}",
        files.len(),
        head.tree_size,
        head.root_hash
    );
    Ok(ExitCode::SUCCESS)
}

fn prove(args: ProveArgs) -> anyhow::Result<ExitCode> {
    let log = Log::open(&args.log)?;
    let bytes = match (&args.attestation, args.from_size) {
        (Some(att), _) => log
            .prove_inclusion(&read_file(att)?, args.size)?
            .to_file_bytes()?,
        (None, Some(from)) => log.prove_consistency(from, args.to_size)?.to_file_bytes()?,
        (None, None) => unreachable!("clap requires --attestation or --from-size"),
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        None => print!("{}", String::from_utf8(bytes)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key: PublicKey = match (&args.log_key, &args.log) {
        (Some(path), _) => read_public_key(path)
            .with_context(|| format!("reading the log key {}", path.display()))?,
        (None, Some(dir)) => read_public_key(&dir.join("log.pub"))
            .with_context(|| format!("reading the log key of {}", dir.display()))?,
        (None, None) => anyhow::bail!("--log-key FILE is needed to verify a proof offline"),
    };
    let outcome = if let Some(path) = &args.inclusion {
        let proof = InclusionProof::read(path)?;
        let attestation = args.attestation.as_deref().map(read_file).transpose()?;
        let head = args.head.as_deref().map(TreeHead::read).transpose()?;
        proof
            .verify(&key, attestation.as_deref(), head.as_ref())
            .map(|()| {
                format!(
                    "entry {} is at index {} of the log's signed head of size {}",
                    proof.entry, proof.leaf_index, proof.tree_head.tree_size
                )
            })
    } else if let Some(path) = &args.consistency {
        let proof = ConsistencyProof::read(path)?;
        let old = args.old_head.as_deref().map(TreeHead::read).transpose()?;
        let from = old.as_ref().unwrap_or(&proof.from_head).tree_size;
        proof.verify(&key, old.as_ref()).map(|()| {
            format!(
                "the log's head of size {} extends its head of size {from}",
                proof.to_head.tree_size
            )
        })
    } else {
        let dir = args.log.as_deref().expect("clap requires one of the three");
        match Log::open(dir).and_then(|log| log.audit()) {
            Ok(sizes) => Ok(format!(
                "{}: {} signed head(s) match the entries",
                dir.display(),
                sizes.len()
            )),
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(msg) => {
            println!("{msg}");
            println!("Log check PASSED");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            println!("Log check FAILED");
            Ok(ExitCode::from(1))
        }
    }
}
