//! The action cache: a job's result kept in the mirror by its action digest, so a later
//! build (the next release, the second triple's build scripts) takes it instead of running
//! the job again, with the recorded cycle count `C`, so that its root hash equals a cold
//! build's (`docs/parallel-builds.md`, "The cache").
//!
//! Layout: `<mirror>/offload/<action digest>.json` names the result body (the `result`
//! response, as the guest receives it) stored as a mirror blob by CID. An entry is used
//! only when its JSON parses within bounds, names the action asked for, its blob matches
//! its CID and sha256, and the body parses as a result of this job; anything else is
//! refused (the caller runs the job again and writes a good entry over it).

use std::path::PathBuf;

use cmbuild_store::atomic::write_json_atomically;
use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use super::job::Job;
use super::wire::{JobResult, Meta, Response};

/// The directory of entries under the mirror's root.
pub const DIR: &str = "offload";
/// Largest entry file read.
const MAX_ENTRY: u64 = 64 << 10;

/// What running a job gave: the answer and how the sibling got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// The answer: the job's result, or an error when the sibling could not produce one
    /// (the wrapper then runs rustc in the parent). Only results are cached.
    pub response: Response,
    /// Guest instructions the sibling ran (its `mcycle` at halt minus the template's).
    pub cycles: u64,
    /// The sibling's root hash at halt.
    pub sibling_root_hash: String,
    /// Its metadata point, when rustc announced a `.rmeta` (pipelining).
    pub meta: Option<MetaPoint>,
}

/// A job's metadata point: what rustc had written when it announced its `.rmeta`, and the
/// sibling's instruction count there (`C_meta`, from the template like `C`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPoint {
    /// `C_meta`.
    pub cycles: u64,
    /// What rustc had written.
    pub meta: Meta,
}

/// One cache entry on disk (keys sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    action: Sha256,
    cycles: u64,
    /// The metadata point: `C_meta` and the sibling's record (a mirror blob).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    meta: Option<MetaEntry>,
    result: Cid,
    result_sha256: Sha256,
    sibling_root_hash: String,
    v: u32,
}

/// A cache entry's metadata point (keys sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaEntry {
    cycles: u64,
    record: Cid,
    record_sha256: Sha256,
}

/// Errors writing the cache (reading never fails: a bad entry is a miss with a reason).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// cannot store a job's result in the mirror
    #[error("cannot store a job's result in the mirror")]
    Mirror(#[from] cmbuild_store::mirror::MirrorError),
    /// cannot write the cache entry {0}
    #[error("cannot write the cache entry {0}")]
    Write(PathBuf, #[source] cmbuild_store::atomic::AtomicError),
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A checked entry.
    Hit(Computed),
    /// No entry.
    Miss,
    /// An entry that failed a check, and why (it will be recomputed and overwritten).
    Refused(String),
}

/// The entry [`ActionCache::store`] wrote (a few hundred bytes: the result and metadata
/// record are named by CID and sha256), for [`ActionCache::lookup_written`] to tell it from
/// an entry written over it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written(Entry);

/// The action cache of one mirror.
#[derive(Debug, Clone)]
pub struct ActionCache {
    mirror: Mirror,
    /// Whether lookups read the entries (else every lookup misses; see
    /// [`ActionCache::write_only`]).
    read: bool,
}

/// Whether `text` looks like a root hash (`cmvm-sha256-v1:` and 64 hex digits).
fn is_root_hash(text: &str) -> bool {
    text.strip_prefix("cmvm-sha256-v1:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl ActionCache {
    /// The cache kept in `mirror`.
    pub fn new(mirror: Mirror) -> ActionCache {
        ActionCache { mirror, read: true }
    }

    /// The cache kept in `mirror`, written but never read: every job runs in a sibling and
    /// its result replaces the entry. What `run --recompute-jobs` uses, and
    /// `--test-reproduce`'s second run, so that it computes again what the first may have
    /// taken from the cache.
    pub fn write_only(mirror: Mirror) -> ActionCache {
        ActionCache {
            mirror,
            read: false,
        }
    }

    fn entry_path(&self, action: &Sha256) -> PathBuf {
        self.mirror.root().join(DIR).join(format!("{action}.json"))
    }

    /// The entry for `action` (the digest of `job`), checked; a miss if the cache is
    /// write-only.
    pub fn lookup(&self, action: &Sha256, job: &Job) -> Lookup {
        if !self.read {
            return Lookup::Miss;
        }
        self.read_entry(action, job, None)
    }

    /// The entry for `action` that the caller wrote itself (`written`: a job a run computed
    /// once, asked for again), checked, even from a write-only cache; refused if another
    /// entry was written over it since.
    pub fn lookup_written(&self, action: &Sha256, job: &Job, written: &Written) -> Lookup {
        self.read_entry(action, job, Some(written))
    }

    fn read_entry(&self, action: &Sha256, job: &Job, written: Option<&Written>) -> Lookup {
        let path = self.entry_path(action);
        let bytes = match crate::untrusted::read_capped(&path, MAX_ENTRY) {
            Ok(bytes) => bytes,
            Err(crate::untrusted::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Lookup::Miss
            }
            Err(e) => return Lookup::Refused(format!("{}: {e}", path.display())),
        };
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return Lookup::Refused(format!("{}: {e}", path.display())),
        };
        if entry.v != 1 || entry.action != *action || !is_root_hash(&entry.sibling_root_hash) {
            return Lookup::Refused(format!("{}: not an entry for this action", path.display()));
        }
        if written.is_some_and(|w| w.0 != entry) {
            return Lookup::Refused(format!(
                "{}: the entry changed since this run wrote it",
                path.display()
            ));
        }
        let body = match self.mirror.read_verified(&entry.result) {
            Ok(body) => body,
            Err(e) => return Lookup::Refused(crate::terminal::error_chain(&e)),
        };
        if Sha256::of(&body) != entry.result_sha256 {
            return Lookup::Refused(format!("{}: the result's sha256 differs", path.display()));
        }
        let meta = match &entry.meta {
            None => None,
            Some(m) => {
                let record = match self.mirror.read_verified(&m.record) {
                    Ok(record) => record,
                    Err(e) => return Lookup::Refused(crate::terminal::error_chain(&e)),
                };
                if Sha256::of(&record) != m.record_sha256 || m.cycles > entry.cycles {
                    return Lookup::Refused(format!(
                        "{}: its metadata record differs",
                        path.display()
                    ));
                }
                match Meta::parse_record(&record, job) {
                    Ok(meta) => Some(MetaPoint {
                        cycles: m.cycles,
                        meta,
                    }),
                    Err(e) => return Lookup::Refused(format!("{}: {e}", path.display())),
                }
            }
        };
        match JobResult::parse(&body, job) {
            Ok(result) => Lookup::Hit(Computed {
                response: Response::Result(result),
                cycles: entry.cycles,
                sibling_root_hash: entry.sibling_root_hash,
                meta,
            }),
            Err(e) => Lookup::Refused(format!("{}: {e}", path.display())),
        }
    }

    /// Keeps `computed` as the result of `action` (an error is not kept: it is computed
    /// again, the same way, next time).
    pub fn store(
        &self,
        action: &Sha256,
        computed: &Computed,
    ) -> Result<Option<Written>, CacheError> {
        let Response::Result(result) = &computed.response else {
            return Ok(None);
        };
        let body = result.encode();
        let stored = self.mirror.put_bytes(&body)?;
        let meta = match &computed.meta {
            None => None,
            Some(point) => {
                let record = self.mirror.put_bytes(&point.meta.encode(None))?;
                Some(MetaEntry {
                    cycles: point.cycles,
                    record: record.cid,
                    record_sha256: record.sha256,
                })
            }
        };
        let entry = Entry {
            action: *action,
            cycles: computed.cycles,
            meta,
            result: stored.cid,
            result_sha256: stored.sha256,
            sibling_root_hash: computed.sibling_root_hash.clone(),
            v: 1,
        };
        let path = self.entry_path(action);
        write_json_atomically(&path, &entry).map_err(|e| CacheError::Write(path, e))?;
        Ok(Some(Written(entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::job::{GuestPath, Input};
    use crate::offload::wire::OutFile;
    use std::collections::BTreeMap;

    fn job() -> Job {
        Job {
            argv: vec!["rustc".into(), "src/lib.rs".into()],
            cwd: GuestPath::new("/build/vendor/a-1.0.0").unwrap(),
            env: BTreeMap::new(),
            inputs: vec![Input {
                exec: false,
                path: GuestPath::new("/build/vendor/a-1.0.0/src/lib.rs").unwrap(),
                sha256: Sha256::of(b"pub fn a() {}"),
                size: 13,
            }],
            outputs: vec![GuestPath::new("/build/src/target/release/deps").unwrap()],
        }
    }

    fn result() -> JobResult {
        JobResult {
            exit: 0,
            stdout: vec![],
            stderr: b"warning: unused\n".to_vec(),
            files: vec![OutFile {
                path: GuestPath::new("/build/src/target/release/deps/liba.rlib").unwrap(),
                exec: false,
                bytes: b"an rlib".to_vec(),
            }],
        }
    }

    fn computed() -> Computed {
        Computed {
            meta: None,
            response: Response::Result(result()),
            cycles: 123_456_789,
            sibling_root_hash: format!("cmvm-sha256-v1:{}", "ab".repeat(32)),
        }
    }

    #[test]
    fn a_stored_result_comes_back_with_its_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ActionCache::new(Mirror::open(dir.path()).unwrap());
        let action = Sha256::of(b"action");
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Miss));
        cache.store(&action, &computed()).unwrap();
        match cache.lookup(&action, &job()) {
            Lookup::Hit(hit) => assert_eq!(hit, computed()),
            other => panic!("{other:?}"),
        }
        // Another action's name on the same entry is refused.
        let other = Sha256::of(b"other action");
        std::fs::copy(cache.entry_path(&action), cache.entry_path(&other)).unwrap();
        assert!(matches!(cache.lookup(&other, &job()), Lookup::Refused(_)));
    }

    #[test]
    fn a_write_only_cache_misses_but_stores() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let cache = ActionCache::write_only(mirror.clone());
        let action = Sha256::of(b"action");
        let written = cache.store(&action, &computed()).unwrap().unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Miss));
        // Its writer may take it again.
        assert!(matches!(
            cache.lookup_written(&action, &job(), &written),
            Lookup::Hit(_)
        ));
        // What it stored is there for the next run that reads.
        match ActionCache::new(mirror.clone()).lookup(&action, &job()) {
            Lookup::Hit(hit) => assert_eq!(hit, computed()),
            other => panic!("{other:?}"),
        }
        // Another entry written over it since is not its writer's.
        let mut other = computed();
        other.cycles += 1;
        ActionCache::new(mirror).store(&action, &other).unwrap();
        assert!(matches!(
            cache.lookup_written(&action, &job(), &written),
            Lookup::Refused(why) if why.contains("changed since this run wrote it")
        ));
    }

    #[test]
    fn tampered_entries_are_refused_and_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let cache = ActionCache::new(mirror.clone());
        let action = Sha256::of(b"action");
        cache.store(&action, &computed()).unwrap();
        // The result blob's bytes changed: its CID no longer matches.
        let cid = mirror.put_bytes(&result().encode()).unwrap().cid;
        let blob = mirror.blob_path(&cid);
        let mut bytes = std::fs::read(&blob).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&blob, &bytes).unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Refused(_)));
        // Recomputing writes a good entry (and blob) again.
        cache.store(&action, &computed()).unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Hit(_)));
        // An entry naming a result blob that is not a result of this job is refused.
        let mut outside = result();
        outside.files[0].path = GuestPath::new("/build/src/lib.rs").unwrap();
        let outside = Computed {
            response: Response::Result(outside),
            ..computed()
        };
        cache.store(&action, &outside).unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Refused(_)));
        // Garbage and oversized entries are refused, not fatal.
        std::fs::write(cache.entry_path(&action), b"{not json").unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Refused(_)));
        std::fs::write(cache.entry_path(&action), vec![b' '; 1 << 20]).unwrap();
        assert!(matches!(cache.lookup(&action, &job()), Lookup::Refused(_)));
    }
}
