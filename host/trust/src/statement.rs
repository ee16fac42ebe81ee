//! The in-toto Statement v1 with a SLSA Provenance v1 predicate that `cmbuild attest` signs,
//! and the [`Claim`] a verifier reads back out of one.

use cmbuild_store::hex;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::build::{BuildFacts, Claim};
use crate::canonical;
use crate::dsse::{Envelope, INTOTO_PAYLOAD_TYPE};
use crate::keys::SecretKey;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const PROVENANCE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The `buildType` of a cmbuild release build.
pub const BUILD_TYPE: &str = "https://example.invalid/cmbuild/build-types/release/v1";
/// Most subjects or byproducts a statement may have to be read.
pub const MAX_SUBJECTS: usize = 100_000;

/// Why a statement was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// The payload is not JSON.
    #[error("the statement is not JSON: {0}")]
    Json(String),
    /// The statement is not an in-toto v1 statement with a SLSA v1 predicate of cmbuild.
    #[error("not a cmbuild provenance statement: {0}")]
    Shape(String),
    /// The statement could not be written canonically.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
}

/// Who attests and how.
#[derive(Clone, Debug)]
pub struct AttestOptions {
    /// `runDetails.builder.id`: a URI naming the builder.
    pub builder_id: String,
    /// The version of the cmbuild that attests.
    pub cmbuild_version: String,
    /// If set, `runDetails.metadata.finishedOn` (RFC 3339, UTC): when the attestation was
    /// made, an upper bound of the build's end. Absent by default so that statements are
    /// reproducible.
    pub timestamp: Option<String>,
}

/// `RUST_TOOLCHAIN__<TRIPLE>`: the pin name of a target's toolchain (the pins format's own
/// definition, [`cmbuild_image::pins::toolchain_key_of`]).
pub fn toolchain_pin(triple: &str) -> String {
    cmbuild_image::pins::toolchain_key_of(triple)
}

fn dependency(name: &str, cid: &str) -> Value {
    let mut d = json!({"name": name, "uri": format!("ipfs://{cid}")});
    // A raw-leaf CID's digest is the SHA-256 of the content itself.
    if let Ok(parsed) = cid.parse::<cmbuild_store::cid::Cid>() {
        if parsed.codec() == cmbuild_store::cid::Codec::Raw {
            d["digest"] = json!({"sha256": hex::encode(parsed.digest())});
        }
    }
    d
}

/// The statement for a build, as a JSON value.
pub fn statement(facts: &BuildFacts, opts: &AttestOptions) -> Value {
    let subjects: Vec<Value> = facts
        .artifacts
        .iter()
        .map(|a| json!({"name": a.name, "digest": {"sha256": a.sha256}}))
        .collect();
    let targets: BTreeSet<&str> = facts.artifacts.iter().map(|a| a.target.as_str()).collect();
    let toolchains: BTreeMap<&str, &str> = facts
        .artifacts
        .iter()
        .map(|a| (a.target.as_str(), a.toolchain.as_str()))
        .collect();
    // The pins this build demonstrably used: the guest image's, from machine.json, and each
    // target's toolchain, from the manifest.
    let mut pins: BTreeMap<String, String> = facts
        .inputs
        .iter()
        .filter(|(k, _)| k.starts_with("GUEST_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (triple, cid) in &toolchains {
        pins.insert(toolchain_pin(triple), (*cid).to_owned());
    }
    let mut deps: Vec<(String, String, Value)> = Vec::new();
    for (name, cid) in &facts.inputs {
        deps.push((name.clone(), cid.clone(), dependency(name, cid)));
    }
    for (triple, cid) in &toolchains {
        let name = toolchain_pin(triple);
        deps.push((name.clone(), (*cid).to_owned(), dependency(&name, cid)));
    }
    let locks: BTreeSet<&str> = facts
        .artifacts
        .iter()
        .map(|a| a.crate_lock_sha256.as_str())
        .collect();
    for lock in locks {
        deps.push((
            "Cargo.lock".to_owned(),
            lock.to_owned(),
            json!({"name": "Cargo.lock", "digest": {"sha256": lock}}),
        ));
    }
    deps.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    deps.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let mut build_definition = json!({
        "buildType": BUILD_TYPE,
        "externalParameters": {
            "commit": facts.commit,
            "release": facts.release,
            "targets": targets,
            "toolchains": toolchains,
            "pins": pins,
        },
        "resolvedDependencies": deps.into_iter().map(|d| d.2).collect::<Vec<_>>(),
    });
    if let Some(config) = &facts.machine_config {
        build_definition["externalParameters"]["machine"] = json!(config);
    }
    if !facts.template.is_empty() {
        build_definition["internalParameters"] = json!(facts.template);
    }
    let byproducts: Vec<Value> = facts
        .machines
        .iter()
        .map(|m| {
            let (scheme, hex) = m
                .root_hash
                .split_once(':')
                .unwrap_or((facts.hash_scheme.as_str(), m.root_hash.as_str()));
            json!({
                "name": m.name(),
                "digest": {scheme: hex},
                "annotations": {
                    "rootHash": m.root_hash,
                    "mcycle": m.mcycle,
                    "exitCode": m.exit_code,
                    "targets": m.targets,
                    "hashScheme": facts.hash_scheme,
                },
            })
        })
        .collect();
    let mut run_details = json!({
        "builder": {
            "id": opts.builder_id,
            "version": {
                "cmbuild": opts.cmbuild_version,
                "emulator": facts.emulator_version,
            },
        },
        "byproducts": byproducts,
    });
    if let Some(ts) = &opts.timestamp {
        run_details["metadata"] = json!({"finishedOn": ts});
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PROVENANCE_TYPE,
        "predicate": {
            "buildDefinition": build_definition,
            "runDetails": run_details,
        },
    })
}

/// Signs the canonical statement of a build into a DSSE envelope.
pub fn attest(
    facts: &BuildFacts,
    opts: &AttestOptions,
    key: &SecretKey,
) -> Result<Envelope, StatementError> {
    let body = canonical::to_vec(&statement(facts, opts))?;
    Ok(Envelope::sign(INTOTO_PAYLOAD_TYPE, &body, key))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, StatementError> {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(key)
            .ok_or_else(|| StatementError::Shape(format!("no {}", path.join("."))))?;
    }
    Ok(cur)
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, StatementError> {
    get(v, path)?
        .as_str()
        .ok_or_else(|| StatementError::Shape(format!("{} is not a string", path.join("."))))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A statement's claim, and its release name, read from a (verified) payload.
pub fn claim_of_statement(body: &[u8]) -> Result<(Claim, String), StatementError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| StatementError::Json(e.to_string()))?;
    if get_str(&v, &["_type"])? != STATEMENT_TYPE {
        return Err(StatementError::Shape(format!(
            "_type is not {STATEMENT_TYPE}"
        )));
    }
    if get_str(&v, &["predicateType"])? != PROVENANCE_TYPE {
        return Err(StatementError::Shape(format!(
            "predicateType is not {PROVENANCE_TYPE}"
        )));
    }
    if get_str(&v, &["predicate", "buildDefinition", "buildType"])? != BUILD_TYPE {
        return Err(StatementError::Shape(format!(
            "buildType is not {BUILD_TYPE}"
        )));
    }
    let params = ["predicate", "buildDefinition", "externalParameters"];
    let commit = get_str(&v, &[params[0], params[1], params[2], "commit"])?.to_owned();
    let release = get_str(&v, &[params[0], params[1], params[2], "release"])?.to_owned();
    let subjects_v = get(&v, &["subject"])?
        .as_array()
        .ok_or_else(|| StatementError::Shape("subject is not a list".into()))?;
    if subjects_v.is_empty() || subjects_v.len() > MAX_SUBJECTS {
        return Err(StatementError::Shape(format!(
            "{} subjects; between 1 and {MAX_SUBJECTS} are read",
            subjects_v.len()
        )));
    }
    let mut subjects = BTreeMap::new();
    for s in subjects_v {
        let name = get_str(s, &["name"])?;
        let sha = get_str(s, &["digest", "sha256"])?;
        if !is_sha256_hex(sha) {
            return Err(StatementError::Shape(format!(
                "subject {name:?} has no lowercase hex sha256"
            )));
        }
        if subjects.insert(name.to_owned(), sha.to_owned()).is_some() {
            return Err(StatementError::Shape(format!(
                "subject {name:?} appears twice"
            )));
        }
    }
    let byproducts = match get(&v, &["predicate", "runDetails"])?.get("byproducts") {
        None => &[][..],
        Some(b) => b
            .as_array()
            .ok_or_else(|| StatementError::Shape("byproducts is not a list".into()))?,
    };
    if byproducts.len() > MAX_SUBJECTS {
        return Err(StatementError::Shape("too many byproducts".into()));
    }
    let mut roots = BTreeMap::new();
    for b in byproducts {
        let name = get_str(b, &["name"])?;
        if !name.starts_with("machine/") {
            continue;
        }
        let root = get_str(b, &["annotations", "rootHash"])?;
        if roots.insert(name.to_owned(), root.to_owned()).is_some() {
            return Err(StatementError::Shape(format!(
                "byproduct {name:?} appears twice"
            )));
        }
    }
    Ok((
        Claim {
            commit,
            subjects,
            roots,
        },
        release,
    ))
}

/// Formats Unix seconds as RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn toolchain_pin_names() {
        assert_eq!(
            toolchain_pin("x86_64-unknown-linux-gnu"),
            "RUST_TOOLCHAIN__X86_64_UNKNOWN_LINUX_GNU"
        );
    }
}
