//! A transparency log of attestations kept as plain files, with signed tree heads and
//! inclusion and consistency proofs that verify offline.
//!
//! The log is an RFC 9162 Merkle tree (see [`crate::merkle`]) whose leaf data are the
//! 32-byte SHA-256 digests of attestation files (the exact bytes of each file). Layout of a
//! log directory:
//!
//! - `log.pub`: the log's Ed25519 public key (hex), written by the first append;
//! - `leaves`: one line per entry, in order: 64 lowercase hex digits of the entry (the
//!   attestation file's SHA-256), replaced atomically on append;
//! - `entries/<hex>.json`: a copy of each logged attestation, named by its SHA-256;
//! - `heads/<size>.json`: the signed tree head of every size the log has published; never
//!   rewritten. The head with the largest size is the current one;
//! - `lock`: present only while an append runs (one appender at a time).

use cmbuild_store::hex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::files;
use crate::keys::{PublicKey, SecretKey};
use crate::merkle::{self, Hash};

/// `type` of a signed tree head.
pub const HEAD_TYPE: &str = "cmbuild-tree-head-v1";
/// `type` of an inclusion proof file.
pub const INCLUSION_TYPE: &str = "cmbuild-inclusion-proof-v1";
/// `type` of a consistency proof file.
pub const CONSISTENCY_TYPE: &str = "cmbuild-consistency-proof-v1";
/// Largest `leaves` file read (about a million entries).
pub const MAX_LEAVES_BYTES: u64 = 64 << 20;
/// Largest head or proof file read.
pub const MAX_PROOF_BYTES: u64 = 1 << 20;
/// Longest proof path accepted (a tree of 2^64 leaves needs at most 64 hashes per side).
pub const MAX_PATH: usize = 130;

/// Why a log operation or a proof check failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file of the log could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A log file, head or proof is malformed.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which file or object.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory holds no log (no `log.pub`).
    #[error("{0} holds no log (no log.pub); `cmbuild log append` creates one")]
    NoLog(String),
    /// The signing key is not the log's key.
    #[error("key {given} is not this log's key {log}")]
    WrongKey {
        /// Key ID of the key given.
        given: String,
        /// Key ID of the log's key.
        log: String,
    },
    /// A tree head's signature does not verify with the log's key.
    #[error("the tree head of size {0} is not signed by the log's key")]
    BadSignature(u64),
    /// The entries on disk do not hash to a signed tree head: the log was rewritten.
    #[error("the log's entries do not match its signed tree head of size {size}: {reason}")]
    Rewritten {
        /// The head's size.
        size: u64,
        /// What differs.
        reason: String,
    },
    /// The attestation is not in the log.
    #[error("attestation {0} is not in the log")]
    NotLogged(String),
    /// The attestation is already in the log.
    #[error("attestation {entry} is already in the log at index {index}")]
    AlreadyLogged {
        /// Its SHA-256.
        entry: String,
        /// Its index.
        index: u64,
    },
    /// Another append holds the log's lock.
    #[error("{0} exists: another append is running (remove it if none is)")]
    Locked(String),
    /// The log has no head of that size.
    #[error("the log has published no tree head of size {0}")]
    NoHead(u64),
    /// A proof could not be made.
    #[error(transparent)]
    Proof(#[from] merkle::ProofError),
    /// A proof does not verify.
    #[error("proof refused: {0}")]
    Refused(String),
    /// The entries could not be written (through a synced temporary file and a rename).
    #[error(transparent)]
    Write(#[from] cmbuild_store::atomic::AtomicError),
    /// Something could not be written canonically.
    #[error(transparent)]
    Canonical(#[from] canonical::CanonicalError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn malformed(what: impl Into<String>, reason: impl Into<String>) -> LogError {
    LogError::Malformed {
        what: what.into(),
        reason: reason.into(),
    }
}

fn parse_hash(what: &str, s: &str) -> Result<Hash, LogError> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed(
            what,
            format!("{s:?} is not 64 lowercase hex digits"),
        ));
    }
    hex::decode_array::<32>(s).map_err(|e| malformed(what, e.to_string()))
}

fn parse_path(what: &str, path: &[String]) -> Result<Vec<Hash>, LogError> {
    if path.len() > MAX_PATH {
        return Err(malformed(what, format!("a path of {} hashes", path.len())));
    }
    path.iter().map(|h| parse_hash(what, h)).collect()
}

/// The SHA-256 of an attestation file: the log's entry for it.
pub fn entry_of(attestation: &[u8]) -> Hash {
    Sha256::digest(attestation).into()
}

/// A signed tree head: the log's size and root hash, signed by the log's key.
///
/// The signature is Ed25519 over `"cmbuild-tree-head-v1" || 0x00 || log key ID (32 bytes) ||
/// size (8 bytes, big-endian) || root hash (32 bytes)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    /// Always [`HEAD_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Key ID (hex SHA-256 of the public key) of the log's key.
    #[serde(rename = "logId")]
    pub log_id: String,
    /// Number of entries.
    #[serde(rename = "treeSize")]
    pub tree_size: u64,
    /// RFC 9162 root hash of the entries, hex.
    #[serde(rename = "rootHash")]
    pub root_hash: String,
    /// Base64 of the Ed25519 signature.
    pub signature: String,
}

fn head_message(log_id: &[u8; 32], size: u64, root: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_TYPE.len() + 73);
    m.extend_from_slice(HEAD_TYPE.as_bytes());
    m.push(0);
    m.extend_from_slice(log_id);
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(root);
    m
}

impl TreeHead {
    /// Signs a head of `size` entries with root `root`.
    pub fn sign(key: &SecretKey, size: u64, root: &Hash) -> TreeHead {
        let log_id: [u8; 32] = Sha256::digest(key.public().to_bytes()).into();
        let sig = key.sign(&head_message(&log_id, size, root));
        TreeHead {
            kind: HEAD_TYPE.to_owned(),
            log_id: hex::encode(log_id),
            tree_size: size,
            root_hash: hex::encode(root),
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
        }
    }

    /// Checks the head's shape and its signature by `key`; returns the root hash.
    pub fn verify(&self, key: &PublicKey) -> Result<Hash, LogError> {
        if self.kind != HEAD_TYPE {
            return Err(malformed("tree head", format!("type is not {HEAD_TYPE}")));
        }
        let log_id = parse_hash("tree head logId", &self.log_id)?;
        if self.log_id != key.keyid() {
            return Err(LogError::WrongKey {
                given: key.keyid(),
                log: self.log_id.clone(),
            });
        }
        let root = parse_hash("tree head rootHash", &self.root_hash)?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| malformed("tree head", "signature is not base64"))?;
        if !key.verify(&head_message(&log_id, self.tree_size, &root), &sig) {
            return Err(LogError::BadSignature(self.tree_size));
        }
        Ok(root)
    }

    /// Canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, LogError> {
        file_bytes(self)
    }

    /// Reads a head file (size-capped).
    pub fn read(path: &Path) -> Result<TreeHead, LogError> {
        read_json(path)
    }
}

fn file_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, LogError> {
    let mut out = canonical::to_vec_of(value)?;
    out.push(b'\n');
    Ok(out)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, LogError> {
    let bytes = files::read_capped(path, MAX_PROOF_BYTES).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(path.display().to_string(), e.to_string()))
}

/// Proof that an attestation is entry `leafIndex` of the log at the enclosed tree head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// Always [`INCLUSION_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The entry: hex SHA-256 of the attestation file.
    pub entry: String,
    /// Its 0-based index.
    #[serde(rename = "leafIndex")]
    pub leaf_index: u64,
    /// The RFC 9162 audit path, hex, leaf side first.
    pub path: Vec<String>,
    /// The signed head the path leads to.
    #[serde(rename = "treeHead")]
    pub tree_head: TreeHead,
}

/// Proof that the log at `toHead` extends the log at `fromHead`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// Always [`CONSISTENCY_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The older signed head.
    #[serde(rename = "fromHead")]
    pub from_head: TreeHead,
    /// The newer signed head.
    #[serde(rename = "toHead")]
    pub to_head: TreeHead,
    /// The RFC 9162 consistency path, hex.
    pub path: Vec<String>,
}

impl InclusionProof {
    /// Canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, LogError> {
        file_bytes(self)
    }

    /// Reads a proof file (size-capped).
    pub fn read(path: &Path) -> Result<InclusionProof, LogError> {
        read_json(path)
    }

    /// Verifies the proof offline: the head is signed by `log_key`, the path leads from the
    /// entry to the head's root, and, when given, the entry is the SHA-256 of `attestation`
    /// and the head is `trusted_head` or a head the proof is for (same size and root).
    pub fn verify(
        &self,
        log_key: &PublicKey,
        attestation: Option<&[u8]>,
        trusted_head: Option<&TreeHead>,
    ) -> Result<(), LogError> {
        if self.kind != INCLUSION_TYPE {
            return Err(malformed(
                "inclusion proof",
                format!("type is not {INCLUSION_TYPE}"),
            ));
        }
        let root = self.tree_head.verify(log_key)?;
        if let Some(trusted) = trusted_head {
            let trusted_root = trusted.verify(log_key)?;
            if trusted.tree_size != self.tree_head.tree_size || trusted_root != root {
                return Err(LogError::Refused(format!(
                    "the proof is for the head of size {} with root {}, not the trusted head of size {} with root {}",
                    self.tree_head.tree_size, self.tree_head.root_hash, trusted.tree_size, trusted.root_hash
                )));
            }
        }
        let entry = parse_hash("inclusion proof entry", &self.entry)?;
        if let Some(bytes) = attestation {
            if entry_of(bytes) != entry {
                return Err(LogError::Refused(format!(
                    "the attestation's sha256 is {}, the proof is for {}",
                    hex::encode(entry_of(bytes)),
                    self.entry
                )));
            }
        }
        let path = parse_path("inclusion proof path", &self.path)?;
        if !merkle::verify_inclusion(
            self.leaf_index,
            self.tree_head.tree_size,
            &merkle::leaf_hash(&entry),
            &path,
            &root,
        ) {
            return Err(LogError::Refused(format!(
                "entry {} at index {} does not lead to the root of the signed head of size {}",
                self.entry, self.leaf_index, self.tree_head.tree_size
            )));
        }
        Ok(())
    }
}

impl ConsistencyProof {
    /// Canonical JSON and a final newline.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, LogError> {
        file_bytes(self)
    }

    /// Reads a proof file (size-capped).
    pub fn read(path: &Path) -> Result<ConsistencyProof, LogError> {
        read_json(path)
    }

    /// Verifies the proof offline: both heads are signed by `log_key`, and the newer tree
    /// extends the older. When `old_head` is given (a head the verifier saw published
    /// before), it replaces the proof's `fromHead`: the proof must then lead from it.
    pub fn verify(&self, log_key: &PublicKey, old_head: Option<&TreeHead>) -> Result<(), LogError> {
        if self.kind != CONSISTENCY_TYPE {
            return Err(malformed(
                "consistency proof",
                format!("type is not {CONSISTENCY_TYPE}"),
            ));
        }
        let from = old_head.unwrap_or(&self.from_head);
        let from_root = from.verify(log_key)?;
        let to_root = self.to_head.verify(log_key)?;
        if old_head.is_some() && from.tree_size != self.from_head.tree_size {
            return Err(LogError::Refused(format!(
                "the proof starts at size {}, the trusted head has size {}",
                self.from_head.tree_size, from.tree_size
            )));
        }
        let path = parse_path("consistency proof path", &self.path)?;
        if !merkle::verify_consistency(
            from.tree_size,
            self.to_head.tree_size,
            &from_root,
            &to_root,
            &path,
        ) {
            return Err(LogError::Refused(format!(
                "the head of size {} (root {}) does not extend the head of size {} (root {}): \
                 the log was rewritten or the proof is wrong",
                self.to_head.tree_size, self.to_head.root_hash, from.tree_size, from.root_hash
            )));
        }
        Ok(())
    }
}

/// A log directory, read and checked.
pub struct Log {
    dir: PathBuf,
    key: PublicKey,
    entries: Vec<Hash>,
    heads: BTreeMap<u64, PathBuf>,
    _lock: Option<AppendLock>,
}

/// The `lock` file of a log being appended to; removed when dropped.
struct AppendLock(PathBuf);

impl AppendLock {
    fn take(dir: &Path) -> Result<AppendLock, LogError> {
        let path = dir.join("lock");
        match files::create_new(&path, b"", 0o644) {
            Ok(()) => Ok(AppendLock(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(LogError::Locked(path.display().to_string()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

impl Drop for AppendLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn list_heads(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, LogError> {
    let heads_dir = dir.join("heads");
    let mut heads = BTreeMap::new();
    let listing = match std::fs::read_dir(&heads_dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(heads),
        Err(e) => return Err(io_err(&heads_dir)(e)),
    };
    for entry in listing {
        let entry = entry.map_err(io_err(&heads_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let size = name
            .strip_suffix(".json")
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                malformed(
                    heads_dir.display().to_string(),
                    format!("unexpected file {name:?}"),
                )
            })?;
        heads.insert(size, entry.path());
    }
    Ok(heads)
}

impl Log {
    /// Opens the log in `dir`, checking that its current signed head matches its entries.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        let pub_path = dir.join("log.pub");
        if std::fs::symlink_metadata(&pub_path).is_err() {
            return Err(LogError::NoLog(dir.display().to_string()));
        }
        let key = crate::keys::read_public_key(&pub_path)
            .map_err(|e| malformed(pub_path.display().to_string(), e.to_string()))?;
        let leaves_path = dir.join("leaves");
        let entries = match files::read_capped(&leaves_path, MAX_LEAVES_BYTES) {
            Ok(bytes) => {
                let text =
                    String::from_utf8(bytes).map_err(|_| malformed("leaves", "not UTF-8 text"))?;
                text.lines()
                    .enumerate()
                    .map(|(i, l)| parse_hash(&format!("leaves line {}", i + 1), l))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&leaves_path)(e)),
        };
        let log = Log {
            dir: dir.to_path_buf(),
            key,
            entries,
            heads: list_heads(dir)?,
            _lock: None,
        };
        let current = log.heads.keys().next_back().copied().unwrap_or(0);
        if current != log.entries.len() as u64 {
            return Err(LogError::Rewritten {
                size: current,
                reason: format!("the log holds {} entries", log.entries.len()),
            });
        }
        if current > 0 {
            log.check_head(current)?;
        }
        Ok(log)
    }

    /// Opens the log in `dir` for appending with `key`, creating it if `dir` holds none.
    /// Holds the log's lock until the returned value is dropped.
    pub fn open_or_create(dir: &Path, key: &SecretKey) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = AppendLock::take(dir)?;
        let pub_path = dir.join("log.pub");
        if std::fs::symlink_metadata(&pub_path).is_err() {
            std::fs::create_dir_all(dir.join("heads")).map_err(io_err(dir))?;
            std::fs::create_dir_all(dir.join("entries")).map_err(io_err(dir))?;
            let text = format!(
                "# cmbuild transparency log key, keyid {}\n{}\n",
                key.public().keyid(),
                key.public().to_hex()
            );
            files::create_new(&pub_path, text.as_bytes(), 0o644).map_err(io_err(&pub_path))?;
        }
        let mut log = Log::open(dir)?;
        log._lock = Some(lock);
        if log.key != key.public() {
            return Err(LogError::WrongKey {
                given: key.public().keyid(),
                log: log.key.keyid(),
            });
        }
        Ok(log)
    }

    /// The log's public key.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The entries (attestation SHA-256 digests), in order.
    pub fn entries(&self) -> &[Hash] {
        &self.entries
    }

    fn leaf_hashes(&self, size: u64) -> Vec<Hash> {
        self.entries[..size as usize]
            .iter()
            .map(|e| merkle::leaf_hash(e))
            .collect()
    }

    /// The signed head of `size` entries, checked against its signature and the entries.
    pub fn check_head(&self, size: u64) -> Result<TreeHead, LogError> {
        let path = self.heads.get(&size).ok_or(LogError::NoHead(size))?;
        let head = TreeHead::read(path)?;
        if head.tree_size != size {
            return Err(malformed(
                path.display().to_string(),
                format!("names size {} in a file for size {size}", head.tree_size),
            ));
        }
        let root = head.verify(&self.key)?;
        if size > self.size() {
            return Err(LogError::Rewritten {
                size,
                reason: format!("the log holds only {} entries", self.size()),
            });
        }
        let actual = merkle::root(&self.leaf_hashes(size));
        if actual != root {
            return Err(LogError::Rewritten {
                size,
                reason: format!(
                    "its entries hash to {}, the head says {}",
                    hex::encode(actual),
                    head.root_hash
                ),
            });
        }
        Ok(head)
    }

    /// The current signed head (`None` for an empty log).
    pub fn head(&self) -> Result<Option<TreeHead>, LogError> {
        match self.size() {
            0 => Ok(None),
            n => self.check_head(n).map(Some),
        }
    }

    /// Checks every signed head the log has published against its entries; returns their
    /// sizes.
    pub fn audit(&self) -> Result<Vec<u64>, LogError> {
        let sizes: Vec<u64> = self.heads.keys().copied().collect();
        for size in &sizes {
            self.check_head(*size)?;
        }
        Ok(sizes)
    }

    /// Appends attestation files (their bytes) and publishes a new signed head.
    ///
    /// Refuses an attestation already logged (or given twice). Writes each attestation to
    /// `entries/`, then the new `leaves`, then `heads/<size>.json`.
    pub fn append(
        &mut self,
        key: &SecretKey,
        attestations: &[Vec<u8>],
    ) -> Result<TreeHead, LogError> {
        if key.public() != self.key {
            return Err(LogError::WrongKey {
                given: key.public().keyid(),
                log: self.key.keyid(),
            });
        }
        let mut new = self.entries.clone();
        for bytes in attestations {
            let entry = entry_of(bytes);
            if let Some(index) = new.iter().position(|e| *e == entry) {
                return Err(LogError::AlreadyLogged {
                    entry: hex::encode(entry),
                    index: index as u64,
                });
            }
            new.push(entry);
        }
        let entries_dir = self.dir.join("entries");
        std::fs::create_dir_all(&entries_dir).map_err(io_err(&entries_dir))?;
        for bytes in attestations {
            let path = entries_dir.join(format!("{}.json", hex::encode(entry_of(bytes))));
            match files::create_new(&path, bytes, 0o644) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let mut text = String::with_capacity(new.len() * 65);
        for e in &new {
            text.push_str(&hex::encode(e));
            text.push('\n');
        }
        cmbuild_store::atomic::write_atomically(&self.dir.join("leaves"), text.as_bytes())?;
        self.entries = new;
        let size = self.size();
        let head = TreeHead::sign(key, size, &merkle::root(&self.leaf_hashes(size)));
        let heads_dir = self.dir.join("heads");
        std::fs::create_dir_all(&heads_dir).map_err(io_err(&heads_dir))?;
        let path = heads_dir.join(format!("{size}.json"));
        files::create_new(&path, &head.to_file_bytes()?, 0o644).map_err(io_err(&path))?;
        self.heads.insert(size, path);
        Ok(head)
    }

    /// The index of an entry, if logged.
    pub fn index_of(&self, entry: &Hash) -> Option<u64> {
        self.entries
            .iter()
            .position(|e| e == entry)
            .map(|i| i as u64)
    }

    /// An inclusion proof of `attestation` in the head of `size` entries (default: current).
    pub fn prove_inclusion(
        &self,
        attestation: &[u8],
        size: Option<u64>,
    ) -> Result<InclusionProof, LogError> {
        let size = size.unwrap_or(self.size());
        let head = self.check_head(size)?;
        let entry = entry_of(attestation);
        let index = self
            .index_of(&entry)
            .filter(|i| *i < size)
            .ok_or_else(|| LogError::NotLogged(hex::encode(entry)))?;
        let path = merkle::inclusion_proof(index, &self.leaf_hashes(size))?;
        Ok(InclusionProof {
            kind: INCLUSION_TYPE.to_owned(),
            entry: hex::encode(entry),
            leaf_index: index,
            path: path.iter().map(hex::encode).collect(),
            tree_head: head,
        })
    }

    /// A consistency proof from the head of `from` entries to the head of `to` (default:
    /// current).
    pub fn prove_consistency(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyProof, LogError> {
        let to = to.unwrap_or(self.size());
        let from_head = self.check_head(from)?;
        let to_head = self.check_head(to)?;
        if from > to {
            return Err(merkle::ProofError::Shrinks { from, to }.into());
        }
        let path = merkle::consistency_proof(from, &self.leaf_hashes(to))?;
        Ok(ConsistencyProof {
            kind: CONSISTENCY_TYPE.to_owned(),
            from_head,
            to_head,
            path: path.iter().map(hex::encode).collect(),
        })
    }
}
