use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cmbuild_trust::keys::SecretKey;
use cmbuild_trust::statement::{attest, rfc3339_utc, AttestOptions};

/// Sign what a build directory holds: an in-toto statement with SLSA provenance, in DSSE.
///
/// Reads BUILD_DIR/manifest.json and machine.json (as untrusted input), rehashes every
/// artifact, and signs with KEY an in-toto Statement v1 with one subject per artifact
/// (`<triple>/<bin>`, sha256) and a SLSA Provenance v1 predicate: the commit, release,
/// targets, toolchains and pins; every machine input by CID (and sha256 where the CID gives
/// it); the builder ID, the cmbuild version and each machine's root hash and mcycle. The
/// statement is canonical JSON with no timestamp (unless --timestamp), so attesting the same
/// build with the same key twice gives the same bytes.
///
/// Example: cmbuild attest builds/v0.1.0 --key ~/.config/cmbuild/builder.key
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The build directory (holding manifest.json and machine.json), e.g. builds/v0.1.0.
    build_dir: PathBuf,
    /// The secret key file (`cmbuild key generate` makes one).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Where the DSSE envelope goes; default: BUILD_DIR/attestation-<first 16 digits of the
    /// key ID>.json. An existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The builder ID recorded in the provenance (a URI naming you); default:
    /// `urn:cmbuild:keyid:<key ID>`.
    #[arg(long, value_name = "URI")]
    builder_id: Option<String>,
    /// Record the current time (UTC) as runDetails.metadata.finishedOn.
    #[arg(long)]
    timestamp: bool,
}

pub fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let key = SecretKey::read(&args.key)
        .with_context(|| format!("reading the key {}", args.key.display()))?;
    let keyid = key.public().keyid();
    let facts = cmbuild_trust::build::read_build_dir(&args.build_dir)
        .with_context(|| format!("reading the build {}", args.build_dir.display()))?;
    let timestamp = if args.timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        Some(rfc3339_utc(now.as_secs()))
    } else {
        None
    };
    let opts = AttestOptions {
        builder_id: args
            .builder_id
            .unwrap_or_else(|| format!("urn:cmbuild:keyid:{keyid}")),
        cmbuild_version: env!("CARGO_PKG_VERSION").to_owned(),
        timestamp,
    };
    let envelope = attest(&facts, &opts, &key)?;
    let out = args.out.unwrap_or_else(|| {
        args.build_dir
            .join(format!("attestation-{}.json", &keyid[..16]))
    });
    let bytes = envelope.to_file_bytes()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .with_context(|| format!("creating {}", out.display()))?;
    std::io::Write::write_all(&mut file, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "attested {} artifact(s) and {} machine(s) of commit {} with key {}",
        facts.artifacts.len(),
        facts.machines.len(),
        facts.commit,
        keyid
    );
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
