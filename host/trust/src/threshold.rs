//! k-of-n verification: do at least K distinct trusted keys attest the same build?
//!
//! Every envelope of a directory is checked against the trusted keys; the claim (commit,
//! subjects' SHA-256, machines' root hashes) of each validly signed statement is grouped by
//! signer. A key that signed two different claims about the same commit is an equivocator:
//! it is reported and counts for nothing. Claims about other commits than the reference's
//! are listed and otherwise ignored (a directory may hold attestations of several releases). The reference claim is the build directory's own claim when one is
//! given, otherwise the claim most keys support. The check passes when the reference has at
//! least K supporting keys and no other claim also reaches K.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::build::Claim;
use crate::dsse::{Envelope, INTOTO_PAYLOAD_TYPE, MAX_ENVELOPE_BYTES};
use crate::files;
use crate::keys::PublicKey;
use crate::statement::claim_of_statement;

/// Most files read from an attestation directory.
pub const MAX_ATTESTATION_FILES: usize = 10_000;
/// Most bytes read from an attestation directory, all files together.
pub const MAX_ATTESTATION_DIR_BYTES: u64 = 256 << 20;

/// Why the attestations could not be evaluated at all.
#[derive(Debug, thiserror::Error)]
pub enum ThresholdError {
    /// The directory could not be listed.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The directory holds more files than are read.
    #[error("{0} holds more than {MAX_ATTESTATION_FILES} attestation files")]
    TooMany(String),
    /// The directory's attestations are larger, together, than is read.
    #[error("the attestations in {0} are larger than {MAX_ATTESTATION_DIR_BYTES} bytes together")]
    TooLarge(String),
    /// The threshold is 0 or larger than the number of trusted keys.
    #[error(
        "threshold {threshold} is impossible with {keys} trusted key(s); it must be 1..={keys}"
    )]
    BadThreshold {
        /// K.
        threshold: usize,
        /// n.
        keys: usize,
    },
}

/// A group of keys that made the same claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The claim.
    pub claim: Claim,
    /// Key IDs of the (non-equivocating) keys that signed it.
    pub keyids: BTreeSet<String>,
    /// The files it came from.
    pub files: BTreeSet<String>,
}

/// The outcome of a k-of-n check.
#[derive(Clone, Debug, Default)]
pub struct ThresholdReport {
    /// K.
    pub threshold: usize,
    /// The claim the others are measured against (none if no claim leads).
    pub reference: Option<Group>,
    /// Whether the reference is the given build directory's claim.
    pub reference_is_build: bool,
    /// Every other claim about the reference's commit, with how it differs from the
    /// reference (every claim, when no claim leads).
    pub dissent: Vec<(Group, Vec<String>)>,
    /// Claims about other commits (other builds), which are neither counted nor rivals.
    pub other_commits: Vec<Group>,
    /// Keys that signed two different claims about the same commit.
    pub equivocators: BTreeSet<String>,
    /// Files or signatures that were not counted, and why.
    pub problems: Vec<String>,
    /// The verdict.
    pub passed: bool,
}

/// How claim `other` differs from `reference`, in words.
pub fn differences(reference: &Claim, other: &Claim) -> Vec<String> {
    let mut out = Vec::new();
    if reference.commit != other.commit {
        out.push(format!(
            "commit {} instead of {}",
            other.commit, reference.commit
        ));
    }
    for (what, a, b) in [
        ("artifact", &reference.subjects, &other.subjects),
        ("root hash of", &reference.roots, &other.roots),
    ] {
        for (name, value) in a {
            match b.get(name) {
                None => out.push(format!("{what} {name} missing")),
                Some(v) if v != value => out.push(format!("{what} {name}: {v} instead of {value}")),
                Some(_) => {}
            }
        }
        for name in b.keys().filter(|n| !a.contains_key(*n)) {
            out.push(format!("{what} {name} extra"));
        }
    }
    out
}

/// Files of a build directory that are never attestations, skipped so that attestations can
/// be shipped next to the artifacts.
pub const NOT_ATTESTATIONS: [&str; 2] = ["manifest.json", "machine.json"];

/// Reads every regular `*.json` file of `dir` (except [`NOT_ATTESTATIONS`]), sorted by name.
pub fn read_attestation_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, ThresholdError> {
    let io = |source| ThresholdError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json")
            && !NOT_ATTESTATIONS.contains(&name.as_str())
            && entry.file_type().map_err(io)?.is_file()
        {
            names.push(name);
            if names.len() > MAX_ATTESTATION_FILES {
                return Err(ThresholdError::TooMany(dir.display().to_string()));
            }
        }
    }
    names.sort();
    let mut total = 0u64;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes =
            files::read_capped(&path, MAX_ENVELOPE_BYTES).map_err(|source| ThresholdError::Io {
                path: path.display().to_string(),
                source,
            })?;
        total += bytes.len() as u64;
        if total > MAX_ATTESTATION_DIR_BYTES {
            return Err(ThresholdError::TooLarge(dir.display().to_string()));
        }
        out.push((path.display().to_string(), bytes));
    }
    Ok(out)
}

/// Evaluates attestation files (name, bytes) against `trusted` keys and threshold K,
/// measuring against `build` (a build directory's own claim) when given.
pub fn evaluate(
    attestations: &[(String, Vec<u8>)],
    trusted: &[PublicKey],
    threshold: usize,
    build: Option<&Claim>,
) -> Result<ThresholdReport, ThresholdError> {
    if threshold == 0 || threshold > trusted.len() {
        return Err(ThresholdError::BadThreshold {
            threshold,
            keys: trusted.len(),
        });
    }
    let mut report = ThresholdReport {
        threshold,
        ..ThresholdReport::default()
    };
    // keyid -> claim -> files
    let mut by_key: BTreeMap<String, BTreeMap<Claim, BTreeSet<String>>> = BTreeMap::new();
    for (file, bytes) in attestations {
        let env = match Envelope::parse(bytes) {
            Ok(env) => env,
            Err(e) => {
                report.problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        if env.payload_type != INTOTO_PAYLOAD_TYPE {
            report.problems.push(format!(
                "{file}: payload type {:?} is not {INTOTO_PAYLOAD_TYPE}",
                env.payload_type
            ));
            continue;
        }
        let (good, bad) = match env.verified_by(trusted) {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        for keyid in bad {
            report.problems.push(format!(
                "{file}: the signature claiming keyid {keyid} does not verify with any trusted key \
                 (an untrusted key, or a statement altered after signing)"
            ));
        }
        if good.is_empty() {
            continue;
        }
        let claim = match env.body().map(|b| claim_of_statement(&b)) {
            Ok(Ok((claim, _release))) => claim,
            Ok(Err(e)) => {
                report.problems.push(format!("{file}: {e}"));
                continue;
            }
            Err(e) => {
                report.problems.push(format!("{file}: {e}"));
                continue;
            }
        };
        for key in good {
            by_key
                .entry(key.keyid())
                .or_default()
                .entry(claim.clone())
                .or_default()
                .insert(file.clone());
        }
    }
    let mut groups: BTreeMap<Claim, Group> = BTreeMap::new();
    for (keyid, claims) in by_key {
        // Two different claims about the same commit: the key cannot be believed on any.
        let commits: BTreeSet<&String> = claims.keys().map(|c| &c.commit).collect();
        if commits.len() < claims.len() {
            report.equivocators.insert(keyid);
            continue;
        }
        for (claim, files) in claims {
            let group = groups.entry(claim.clone()).or_insert_with(|| Group {
                claim,
                keyids: BTreeSet::new(),
                files: BTreeSet::new(),
            });
            group.keyids.insert(keyid.clone());
            group.files.extend(files);
        }
    }
    let reference = match build {
        Some(claim) => {
            report.reference_is_build = true;
            Some(groups.remove(claim).unwrap_or_else(|| Group {
                claim: claim.clone(),
                keyids: BTreeSet::new(),
                files: BTreeSet::new(),
            }))
        }
        None => {
            let best = groups.values().map(|g| g.keyids.len()).max().unwrap_or(0);
            let leaders: Vec<Claim> = groups
                .values()
                .filter(|g| g.keyids.len() == best)
                .map(|g| g.claim.clone())
                .collect();
            match leaders.as_slice() {
                [one] => groups.remove(one),
                _ => None,
            }
        }
    };
    // Claims about other commits are about other builds: listed, never rivals.
    let (others, elsewhere): (Vec<Group>, Vec<Group>) = groups.into_values().partition(|g| {
        reference
            .as_ref()
            .is_none_or(|r| r.claim.commit == g.claim.commit)
    });
    report.other_commits = elsewhere;
    let rival_reaches = others.iter().any(|g| g.keyids.len() >= threshold);
    report.passed = reference
        .as_ref()
        .is_some_and(|r| r.keyids.len() >= threshold)
        && !rival_reaches;
    report.dissent = others
        .into_iter()
        .map(|g| {
            let diff = match &reference {
                Some(r) => differences(&r.claim, &g.claim),
                None => Vec::new(),
            };
            (g, diff)
        })
        .collect();
    report.reference = reference;
    Ok(report)
}

impl ThresholdReport {
    /// The report as `cmbuild verify-attestations` prints it, ending with the verdict line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let short = |k: &String| k[..16.min(k.len())].to_owned();
        match &self.reference {
            Some(r) => {
                let what = if self.reference_is_build {
                    "the build directory"
                } else {
                    "the leading claim"
                };
                let _ = writeln!(
                    out,
                    "{} of {} required trusted key(s) attest {what} (commit {}, {} artifact(s), {} machine root hash(es))",
                    r.keyids.len(),
                    self.threshold,
                    r.claim.commit,
                    r.claim.subjects.len(),
                    r.claim.roots.len()
                );
                for k in &r.keyids {
                    let _ = writeln!(out, "  agrees: key {}", short(k));
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "no single claim is supported by more keys than every other"
                );
            }
        }
        for (group, diff) in &self.dissent {
            let keys: Vec<String> = group.keyids.iter().map(short).collect();
            let _ = writeln!(
                out,
                "  disagrees: key(s) {} ({} file(s)):",
                keys.join(", "),
                group.files.len()
            );
            if diff.is_empty() {
                let _ = writeln!(
                    out,
                    "    commit {}, {} artifact(s), {} root hash(es)",
                    group.claim.commit,
                    group.claim.subjects.len(),
                    group.claim.roots.len()
                );
            }
            for d in diff {
                let _ = writeln!(out, "    {d}");
            }
            if group.keyids.len() >= self.threshold {
                let _ = writeln!(out, "    (this rival claim also reaches the threshold)");
            }
        }
        for group in &self.other_commits {
            let keys: Vec<String> = group.keyids.iter().map(short).collect();
            let _ = writeln!(
                out,
                "  ignored: key(s) {} attest another commit, {}",
                keys.join(", "),
                group.claim.commit
            );
        }
        for k in &self.equivocators {
            let _ = writeln!(
                out,
                "  equivocates: key {} signed different claims about one commit; it counts for none",
                short(k)
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "  not counted: {p}");
        }
        let _ = writeln!(
            out,
            "Attestation check {}",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        out
    }
}
