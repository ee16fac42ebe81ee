//! Debian archive metadata: deb822 stanzas, `Packages` indices, dependency relations,
//! version ordering, and the signed `InRelease` file that vouches for every index.
//!
//! Trust flows one way: `gpgv` checks InRelease against the archive keyring and hands back
//! the signed text only; every index is then accepted only if its sha256 and size match
//! what that signed text lists; every `.deb` only if it matches its index entry.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cmbuild_store::sha256::Sha256;

/// Where Debian keeps its archive keyring on a Debian host (package debian-archive-keyring).
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Why Debian metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// line {line}: a continuation line with no field before it
    #[error("line {line}: a continuation line with no field before it")]
    OrphanContinuation {
        /// Line number (1-based).
        line: usize,
    },
    /// line {line}: `{text}` is neither a field nor a continuation
    #[error("line {line}: `{text}` is neither a field nor a continuation")]
    MalformedLine {
        /// Line number (1-based).
        line: usize,
        /// The offending text.
        text: String,
    },
    /// a stanza has no `{field}` field (near package `{package}`)
    #[error("a stanza has no `{field}` field (near package `{package}`)")]
    MissingField {
        /// The field concerned.
        field: &'static str,
        /// The package concerned.
        package: String,
    },
    /// package `{package}`: field `{field}` has an invalid value `{value}`
    #[error("package `{package}`: field `{field}` has an invalid value `{value}`")]
    InvalidField {
        /// The package concerned.
        package: String,
        /// The field concerned.
        field: &'static str,
        /// The value found.
        value: String,
    },
    /// invalid relation `{0}`
    #[error("invalid relation `{0}`")]
    InvalidRelation(String),
    /// could not run gpgv (is the `gpgv` package installed?)
    #[error("could not run gpgv (is the `gpgv` package installed?)")]
    GpgvSpawn(#[source] std::io::Error),
    /// the OpenPGP signature of InRelease does not verify against keyring {keyring}: {detail}
    #[error(
        "the OpenPGP signature of InRelease does not verify against keyring {keyring}: {detail}"
    )]
    BadSignature {
        /// The keyring used.
        keyring: String,
        /// What was wrong.
        detail: String,
    },
    /// gpgv accepted InRelease but produced no signed text
    #[error("gpgv accepted InRelease but produced no signed text")]
    EmptySignedText,
    /// InRelease is for suite `{found}`, expected `{expected}`
    #[error("InRelease is for suite `{found}`, expected `{expected}`")]
    WrongSuite {
        /// What was pinned or expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// InRelease lists no SHA256 entry for `{0}`
    #[error("InRelease lists no SHA256 entry for `{0}`")]
    IndexNotListed(String),
    /// index `{path}` does not match InRelease: expected sha256 {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)
    #[error("index `{path}` does not match InRelease: expected sha256 {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)")]
    IndexMismatch {
        /// The path concerned.
        path: String,
        /// What was pinned or expected.
        expected: Sha256,
        /// The expected size in bytes.
        expected_size: u64,
        /// What was found.
        actual: Sha256,
        /// The size found, in bytes.
        actual_size: u64,
    },
}

/// One paragraph of a deb822 file: lower-cased field name -> value.
///
/// Multi-line values keep their continuation lines, joined by `\n`, with the leading
/// space removed (so `SHA256` in a Release file reads as one entry per line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    fields: BTreeMap<String, String>,
}

impl Stanza {
    /// The value of a field; field names are case-insensitive in deb822.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .get(&field.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Split a deb822 text (Packages, Release) into its stanzas.
pub fn parse_stanzas(text: &str) -> Result<Vec<Stanza>, DebianError> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    let mut last_field: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let line_no = number + 1;
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            last_field = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let field = last_field
                .as_ref()
                .ok_or(DebianError::OrphanContinuation { line: line_no })?;
            let value = current.fields.get_mut(field).expect("field was inserted");
            let continuation = line.trim();
            // A lone "." stands for an empty line inside a multi-line value.
            let continuation = if continuation == "." {
                ""
            } else {
                continuation
            };
            if !value.is_empty() {
                value.push('\n');
            }
            value.push_str(continuation);
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace))
            .ok_or_else(|| DebianError::MalformedLine {
                line: line_no,
                text: line.to_string(),
            })?;
        let name = name.to_ascii_lowercase();
        current
            .fields
            .insert(name.clone(), value.trim().to_string());
        last_field = Some(name);
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    Ok(stanzas)
}

/// Compare two Debian version strings the way dpkg does (epoch, upstream, revision;
/// `~` sorts before everything, even the end of the string).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split_version(a);
    let (epoch_b, upstream_b, revision_b) = split_version(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_fragment(upstream_a, upstream_b))
        .then_with(|| compare_fragment(revision_a, revision_b))
}

fn split_version(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's `order()`: digits and the end of the string weigh 0, letters their code, `~`
/// less than anything, every other character more than any letter.
fn order(byte: Option<u8>) -> i32 {
    match byte {
        None => 0,
        Some(b) if b.is_ascii_digit() => 0,
        Some(b) if b.is_ascii_alphabetic() => i32::from(b),
        Some(b'~') => -1,
        Some(b) => i32::from(b) + 256,
    }
}

fn compare_fragment(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let is_digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A version relation operator of a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOp {
    /// `<<`
    Less,
    /// `<=`
    LessEqual,
    /// `=`
    Equal,
    /// `>=`
    GreaterEqual,
    /// `>>`
    Greater,
}

impl VersionOp {
    fn parse(text: &str) -> Option<VersionOp> {
        Some(match text {
            "<<" => VersionOp::Less,
            // "<" and ">" are the obsolete spellings of "<=" and ">=".
            "<=" | "<" => VersionOp::LessEqual,
            "=" => VersionOp::Equal,
            ">=" | ">" => VersionOp::GreaterEqual,
            ">>" => VersionOp::Greater,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            VersionOp::Less => "<<",
            VersionOp::LessEqual => "<=",
            VersionOp::Equal => "=",
            VersionOp::GreaterEqual => ">=",
            VersionOp::Greater => ">>",
        }
    }
}

/// `(op version)` of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConstraint {
    /// The comparison.
    pub op: VersionOp,
    /// Version (Debian syntax).
    pub version: String,
}

impl VersionConstraint {
    /// Whether `version` satisfies this constraint.
    pub fn accepts(&self, version: &str) -> bool {
        let ordering = compare_versions(version, &self.version);
        match self.op {
            VersionOp::Less => ordering == Ordering::Less,
            VersionOp::LessEqual => ordering != Ordering::Greater,
            VersionOp::Equal => ordering == Ordering::Equal,
            VersionOp::GreaterEqual => ordering != Ordering::Less,
            VersionOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One alternative of a dependency: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Package or crate name.
    pub name: String,
    /// `any`, `native` or an architecture name after the colon.
    pub arch_qualifier: Option<String>,
    /// Version constraint, if any.
    pub constraint: Option<VersionConstraint>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(qualifier) = &self.arch_qualifier {
            write!(f, ":{qualifier}")?;
        }
        if let Some(c) = &self.constraint {
            write!(f, " ({} {})", c.op.as_str(), c.version)?;
        }
        Ok(())
    }
}

/// A dependency clause: satisfied by any one of its alternatives (`a | b`).
pub type Alternatives = Vec<Relation>;

/// Parse a relation field (`Depends`, `Pre-Depends`, `Provides`) of a binary package.
///
/// Architecture restrictions (`[amd64]`) and build profiles (`<!nocheck>`) only occur in
/// source packages; they are refused here rather than silently misread.
pub fn parse_relations(field: &str) -> Result<Vec<Alternatives>, DebianError> {
    let mut clauses = Vec::new();
    for clause in field.split(',') {
        let clause = clause.trim();
        if clause.is_empty() {
            continue;
        }
        let alternatives = clause
            .split('|')
            .map(|alt| parse_relation(alt.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        clauses.push(alternatives);
    }
    Ok(clauses)
}

fn parse_relation(text: &str) -> Result<Relation, DebianError> {
    let invalid = || DebianError::InvalidRelation(text.to_string());
    let (head, constraint) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest.strip_suffix(')').ok_or_else(invalid)?.trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .ok_or_else(invalid)?;
            let op = VersionOp::parse(&inner[..split]).ok_or_else(invalid)?;
            let version = inner[split..].trim();
            if version.is_empty() || version.contains(char::is_whitespace) {
                return Err(invalid());
            }
            let constraint = VersionConstraint {
                op,
                version: version.to_string(),
            };
            (head.trim(), Some(constraint))
        }
        None => (text, None),
    };
    let (name, arch_qualifier) = match head.split_once(':') {
        Some((name, arch)) => (name, Some(arch.to_string())),
        None => (head, None),
    };
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    };
    if !valid_name(name) || !arch_qualifier.as_deref().is_none_or(valid_name) {
        return Err(invalid());
    }
    Ok(Relation {
        name: name.to_string(),
        arch_qualifier,
        constraint,
    })
}

/// How a package may be shared between architectures (the `Multi-Arch` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiArch {
    /// No field: only satisfies dependencies of its own architecture.
    #[default]
    No,
    /// Co-installable with itself for other architectures.
    Same,
    /// Satisfies dependencies of packages of any architecture.
    Foreign,
    /// Satisfies `name:any` dependencies of any architecture.
    Allowed,
}

/// One entry of a `Packages` index (the fields the resolver and the lock need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package or crate name.
    pub name: String,
    /// Version (Debian syntax).
    pub version: String,
    /// Debian architecture (`all` for architecture-independent packages).
    pub architecture: String,
    /// Its `Multi-Arch` field.
    pub multi_arch: MultiArch,
    /// Its `Priority` field.
    pub priority: String,
    /// Whether `Essential: yes`.
    pub essential: bool,
    /// `Pre-Depends`, one entry per comma-separated clause.
    pub pre_depends: Vec<Alternatives>,
    /// `Depends`, one entry per comma-separated clause.
    pub depends: Vec<Alternatives>,
    /// Virtual names this package provides, each with an optional `(= version)`.
    pub provides: Vec<Relation>,
    /// Path of the `.deb` below the archive root, e.g. `pool/main/b/busybox/...deb`.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 as the signed index gives it.
    pub sha256: Sha256,
}

/// Parse a `Packages` index.
pub fn parse_packages(text: &str) -> Result<Vec<Package>, DebianError> {
    parse_stanzas(text)?
        .iter()
        .map(package_from_stanza)
        .collect()
}

fn package_from_stanza(stanza: &Stanza) -> Result<Package, DebianError> {
    let package = stanza.get("Package").unwrap_or("?").to_string();
    let required = |field: &'static str| {
        stanza.get(field).ok_or_else(|| DebianError::MissingField {
            field,
            package: package.clone(),
        })
    };
    let invalid = |field: &'static str, value: &str| DebianError::InvalidField {
        package: package.clone(),
        field,
        value: value.to_string(),
    };
    let relations = |field: &'static str| -> Result<Vec<Alternatives>, DebianError> {
        stanza.get(field).map_or(Ok(Vec::new()), parse_relations)
    };
    let multi_arch = match stanza.get("Multi-Arch").unwrap_or("no") {
        "no" => MultiArch::No,
        "same" => MultiArch::Same,
        "foreign" => MultiArch::Foreign,
        "allowed" => MultiArch::Allowed,
        other => return Err(invalid("Multi-Arch", other)),
    };
    let size_text = required("Size")?;
    let size = size_text.parse().map_err(|_| invalid("Size", size_text))?;
    let sha256_text = required("SHA256")?;
    let sha256: Sha256 = sha256_text
        .parse()
        .map_err(|_| invalid("SHA256", sha256_text))?;
    let mut provides = Vec::new();
    for clause in relations("Provides")? {
        // Provides is a plain list; an `|` in it is malformed.
        let [relation] = <[Relation; 1]>::try_from(clause)
            .map_err(|_| invalid("Provides", stanza.get("Provides").unwrap_or("")))?;
        provides.push(relation);
    }
    Ok(Package {
        name: required("Package")?.to_string(),
        version: required("Version")?.to_string(),
        architecture: required("Architecture")?.to_string(),
        multi_arch,
        priority: stanza.get("Priority").unwrap_or("optional").to_string(),
        essential: stanza.get("Essential") == Some("yes"),
        pre_depends: relations("Pre-Depends")?,
        depends: relations("Depends")?,
        provides,
        filename: required("Filename")?.to_string(),
        size,
        sha256,
    })
}

/// An index file as InRelease lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// sha256 as the signed index gives it.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// The signed content of an InRelease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Codename`, e.g. `trixie`.
    pub codename: String,
    /// `Suite`, e.g. `stable`.
    pub suite: String,
    /// Version (Debian syntax).
    pub version: String,
    /// `Date`.
    pub date: String,
    /// Whether indices may be fetched by hash (`by-hash/SHA256/<hex>`), which cannot race
    /// with an archive update between reading InRelease and reading the index.
    pub acquire_by_hash: bool,
    /// Path below `dists/<codename>/` -> its hash and size.
    pub sha256: BTreeMap<String, IndexEntry>,
}

/// Parse the (already verified) text of a Release file.
pub fn parse_release(text: &str) -> Result<Release, DebianError> {
    let stanzas = parse_stanzas(text)?;
    let stanza = stanzas.first().cloned().unwrap_or_default();
    let field = |name: &'static str| {
        stanza
            .get(name)
            .map(str::to_string)
            .ok_or(DebianError::MissingField {
                field: name,
                package: "Release".into(),
            })
    };
    let mut sha256 = BTreeMap::new();
    for line in field("SHA256")?.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = || DebianError::InvalidField {
            package: "Release".into(),
            field: "SHA256",
            value: line.to_string(),
        };
        let [hash, size, path] = parts[..] else {
            return Err(bad());
        };
        let size = size.parse().map_err(|_| bad())?;
        sha256.insert(
            path.to_string(),
            IndexEntry {
                sha256: hash.parse().map_err(|_| bad())?,
                size,
            },
        );
    }
    Ok(Release {
        codename: field("Codename")?,
        suite: stanza.get("Suite").unwrap_or("").to_string(),
        version: stanza.get("Version").unwrap_or("").to_string(),
        date: field("Date")?,
        acquire_by_hash: stanza.get("Acquire-By-Hash") == Some("yes"),
        sha256,
    })
}

impl Release {
    /// Refuse a release file of another suite (a replayed or misdirected InRelease).
    pub fn check_codename(&self, expected: &str) -> Result<(), DebianError> {
        if self.codename == expected {
            Ok(())
        } else {
            Err(DebianError::WrongSuite {
                expected: expected.to_string(),
                found: self.codename.clone(),
            })
        }
    }

    /// The listed entry of an index, e.g. `main/binary-riscv64/Packages.gz`.
    pub fn entry(&self, path: &str) -> Result<&IndexEntry, DebianError> {
        self.sha256
            .get(path)
            .ok_or_else(|| DebianError::IndexNotListed(path.to_string()))
    }

    /// Accept `bytes` as the index `path` only if sha256 and size match this release.
    pub fn check_index(&self, path: &str, bytes: &[u8]) -> Result<(), DebianError> {
        let entry = self.entry(path)?;
        let actual = Sha256::of(bytes);
        if actual != entry.sha256 || bytes.len() as u64 != entry.size {
            return Err(DebianError::IndexMismatch {
                path: path.to_string(),
                expected: entry.sha256,
                expected_size: entry.size,
                actual,
                actual_size: bytes.len() as u64,
            });
        }
        Ok(())
    }
}

/// Verify a clearsigned InRelease with `gpgv` against `keyring`; return the signed text.
///
/// Only the text gpgv itself extracts is returned, never the file as given: anything an
/// attacker adds outside the signed block therefore cannot reach the parser. gpgv must
/// exit 0 and report at least one `VALIDSIG`.
pub fn verify_inrelease(inrelease: &[u8], keyring: &Path) -> Result<String, DebianError> {
    let bad = |detail: String| DebianError::BadSignature {
        keyring: keyring.display().to_string(),
        detail,
    };
    let mut child = Command::new("gpgv")
        .arg("--status-fd")
        .arg("2")
        .arg("--keyring")
        .arg(keyring)
        .args(["--output", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(DebianError::GpgvSpawn)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = inrelease.to_vec();
    // Feed stdin from a thread so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(DebianError::GpgvSpawn)?;
    let _ = writer.join();
    let status = String::from_utf8_lossy(&output.stderr);
    let valid = status
        .lines()
        .filter(|l| l.starts_with("[GNUPG:] VALIDSIG "))
        .count();
    if !output.status.success() || valid == 0 {
        let detail = status
            .lines()
            .filter(|l| !l.starts_with("[GNUPG:]"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(bad(if detail.is_empty() {
            format!("gpgv exited with {}", output.status)
        } else {
            detail
        }));
    }
    let text =
        String::from_utf8(output.stdout).map_err(|_| bad("signed text is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(DebianError::EmptySignedText);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_split_on_blank_lines_and_join_continuations() {
        let text =
            "Package: a\nDescription: short\n more\n .\n end\n\n\nPackage: b\nX-Field:  v \n";
        let stanzas = parse_stanzas(text).unwrap();
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("description"), Some("short\nmore\n\nend"));
        assert_eq!(stanzas[1].get("PACKAGE"), Some("b"));
        assert_eq!(stanzas[1].get("x-field"), Some("v"));
        assert!(matches!(
            parse_stanzas(" orphan\n"),
            Err(DebianError::OrphanContinuation { line: 1 })
        ));
        assert!(matches!(
            parse_stanzas("Package: a\nnot a field\n"),
            Err(DebianError::MalformedLine { line: 2, .. })
        ));
    }

    #[test]
    fn versions_order_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.1", "2.0", Greater),
            ("2.41-12+deb13u4", "2.41-12", Greater),
            ("1.2.10", "1.2.9", Greater),
            ("1.002", "1.2", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less),
            ("19~", "19.0-63", Less),
            ("1:19.0-63", "19~", Greater),
            ("6.12.107-1", "6.12.99-1", Greater),
            ("1.0-1~bpo1", "1.0-1", Less),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn relations_parse_alternatives_qualifiers_and_constraints() {
        let clauses = parse_relations(
            "libc6 (>= 2.34), gcc | clang:any | c-compiler, python3:native (<< 3.14~),",
        )
        .unwrap();
        assert_eq!(clauses.len(), 3);
        assert_eq!(clauses[0][0].name, "libc6");
        assert_eq!(
            clauses[0][0].constraint,
            Some(VersionConstraint {
                op: VersionOp::GreaterEqual,
                version: "2.34".into()
            })
        );
        assert_eq!(clauses[1].len(), 3);
        assert_eq!(clauses[1][1].arch_qualifier.as_deref(), Some("any"));
        assert_eq!(clauses[2][0].to_string(), "python3:native (<< 3.14~)");
        for bad in ["foo (>= )", "foo (~ 1)", "foo [amd64]", "Foo", "foo (= 1"] {
            assert!(parse_relations(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn constraints_accept_by_dpkg_order() {
        let c = |op, v: &str| VersionConstraint {
            op,
            version: v.into(),
        };
        assert!(c(VersionOp::GreaterEqual, "19~").accepts("1:19.0-63"));
        assert!(!c(VersionOp::GreaterEqual, "1:20").accepts("1:19.0-63"));
        assert!(c(VersionOp::GreaterEqual, "19~").accepts("19.1.7-3"));
        assert!(c(VersionOp::Less, "2.0").accepts("2.0~rc1"));
        assert!(!c(VersionOp::Greater, "2.0").accepts("2.0"));
        assert!(c(VersionOp::Equal, "1.0").accepts("1.0-0"));
        assert!(c(VersionOp::LessEqual, "1.0").accepts("1.0"));
    }

    #[test]
    fn packages_index_parses_the_fields_the_lock_needs() {
        let text = "Package: libc6-dev\nVersion: 2.41-12\nArchitecture: amd64\nMulti-Arch: same\n\
                    Provides: libc-dev (= 2.41-12)\nDepends: libc6 (= 2.41-12), rpcsvc-proto\n\
                    Filename: pool/main/g/glibc/libc6-dev_2.41-12_amd64.deb\nSize: 42\n\
                    SHA256: 00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\n";
        let packages = parse_packages(text).unwrap();
        let p = &packages[0];
        assert_eq!(p.multi_arch, MultiArch::Same);
        assert_eq!(p.provides[0].name, "libc-dev");
        assert_eq!(p.depends.len(), 2);
        assert_eq!(p.size, 42);
        assert!(p.sha256.to_string().starts_with("00112233445566778899aabb"));
        let broken = text.replace("Size: 42", "Size: lots");
        assert!(matches!(
            parse_packages(&broken),
            Err(DebianError::InvalidField { field: "Size", .. })
        ));
        let missing = text.replace("Filename", "X-Filename");
        assert!(matches!(
            parse_packages(&missing),
            Err(DebianError::MissingField {
                field: "Filename",
                ..
            })
        ));
    }

    #[test]
    fn release_lists_index_hashes_and_refuses_a_doctored_index() {
        let index = b"Package: x\n";
        let digest = Sha256::of(index);
        let text = format!(
            "Codename: trixie\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nAcquire-By-Hash: yes\nSHA256:\n {digest} {} main/binary-riscv64/Packages\n",
            index.len()
        );
        let release = parse_release(&text).unwrap();
        assert!(release.acquire_by_hash);
        release.check_codename("trixie").unwrap();
        assert!(release.check_codename("forky").is_err());
        release
            .check_index("main/binary-riscv64/Packages", index)
            .unwrap();
        assert!(matches!(
            release.check_index("main/binary-riscv64/Packages", b"Package: y\n"),
            Err(DebianError::IndexMismatch { .. })
        ));
        assert!(matches!(
            release.check_index("main/binary-amd64/Packages", index),
            Err(DebianError::IndexNotListed(_))
        ));
    }
}
