//! What the host answers one parent machine, decided only from the parent's own history
//! (`docs/parallel-builds.md`, "Completion time and the parent's wait").
//!
//! Every answer is a function of the request and of what the parent did before it, never
//! of what the host happens to hold: a job's `missing` list names the inputs the *parent*
//! has not made known by its submission cycle `T` (files of its input drive, blobs it
//! uploaded before `T`, files of results it saw before `T`), even when the host's cache or
//! another machine has them. A cold and a warm host therefore give the parent the same
//! answers at the same cycles, and the parent's root hash does not depend on the cache.
//!
//! Answers that run no sibling (`missing`, `ok`, `error`) are visible at `T + L`; a job's
//! result at `T + L + C`, `C` its sibling's instruction count.

use std::collections::BTreeMap;

use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use super::blobs::{BlobError, BlobStore, Upload};
use super::cache::Computed;
use super::job::{Job, Platform};
use super::wire::{Request, Response};

/// Domain of a job's record (the 32 bytes folded into the parent's journal).
const RECORD_DOMAIN: &[u8] = b"cmbuild offload record v1";

/// A job the parent submitted and the host must compute (from the cache or a sibling).
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The request's tag.
    pub tag: u64,
    /// Its submission cycle.
    pub submitted_at: u64,
    /// The job.
    pub job: Job,
    /// Its action digest.
    pub action: Sha256,
    /// The job without [`super::job::VOLATILE_ENV`] and its action digest, which run first
    /// (`None` when the job has none of those variables).
    pub first: Option<(Job, Sha256)>,
}

/// What the host does with a request.
#[derive(Debug)]
pub enum Step {
    /// Answer now.
    Answer(cmbuild_machine::devices::offload::Answer),
    /// Compute the job, then call [`Parent::finish`].
    Dispatch(Box<Dispatch>),
}

/// One job as `machine.json` records it (keys sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The action digest (the cache key).
    pub action: Sha256,
    /// `C`: instructions its sibling ran (both runs' for a job that ran again with the
    /// volatile variables).
    pub cycles: u64,
    /// The result body's sha256.
    pub result: Sha256,
    /// The sibling's root hash at halt.
    pub sibling_root_hash: String,
    /// The parent's cycle of submission.
    pub submitted_at: u64,
    /// The request's tag.
    pub tag: u64,
    /// The parent's cycle at which the result became visible.
    pub visible_at: u64,
}

/// Errors of the host itself (not of the guest's requests, which are answered).
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// cannot keep a blob the parent sent or received
    #[error("cannot keep a blob the parent sent or received")]
    Blob(#[from] BlobError),
}

/// The host's state for one parent machine.
#[derive(Debug)]
pub struct Parent {
    platform: Platform,
    /// Blob digest → the first cycle at which the parent knew it.
    known: BTreeMap<Sha256, u64>,
    uploads: BTreeMap<Sha256, Upload>,
    records: Vec<JobRecord>,
}

impl Parent {
    /// A parent whose input drive holds files with these digests (known from cycle 0).
    pub fn new(platform: Platform, input_files: impl IntoIterator<Item = Sha256>) -> Parent {
        Parent {
            platform,
            known: input_files.into_iter().map(|d| (d, 0)).collect(),
            uploads: BTreeMap::new(),
            records: Vec::new(),
        }
    }

    /// `L`.
    pub fn latency(&self) -> u64 {
        self.platform.latency
    }

    fn immediate(&self, submitted_at: u64, response: Response) -> Step {
        Step::Answer(cmbuild_machine::devices::offload::Answer {
            visible_at: submitted_at + self.platform.latency,
            response: response.encode(),
            record: [0; 32],
        })
    }

    /// What to do with the request `body` the parent submitted with `tag` at `submitted_at`.
    pub fn request(
        &mut self,
        tag: u64,
        submitted_at: u64,
        body: &[u8],
        blobs: &BlobStore,
    ) -> Result<Step, ParentError> {
        let request = match Request::parse(body) {
            Ok(request) => request,
            Err(e) => return Ok(self.immediate(submitted_at, Response::Error(e.to_string()))),
        };
        match request {
            Request::Blob(chunk) => {
                let upload = self
                    .uploads
                    .entry(chunk.sha256)
                    .or_insert_with(|| Upload::new(chunk.sha256, chunk.size));
                match upload.add(&chunk) {
                    Ok(None) => {}
                    Ok(Some(bytes)) => {
                        self.uploads.remove(&chunk.sha256);
                        blobs.put(&bytes)?;
                        self.known.entry(chunk.sha256).or_insert(submitted_at);
                    }
                    Err(e) => {
                        self.uploads.remove(&chunk.sha256);
                        return Ok(self.immediate(submitted_at, Response::Error(e.to_string())));
                    }
                }
                Ok(self.immediate(submitted_at, Response::Ok))
            }
            Request::Job(job) => {
                let mut missing: Vec<Sha256> = job
                    .inputs
                    .iter()
                    .map(|i| i.sha256)
                    .filter(|d| self.known.get(d).is_none_or(|&at| at > submitted_at))
                    .collect();
                missing.sort();
                missing.dedup();
                if !missing.is_empty() {
                    return Ok(self.immediate(submitted_at, Response::Missing(missing)));
                }
                let action = job.action_digest(&self.platform);
                let first = job.without_volatile_env().map(|first| {
                    let action = first.action_digest(&self.platform);
                    (first, action)
                });
                Ok(Step::Dispatch(Box::new(Dispatch {
                    tag,
                    submitted_at,
                    job,
                    action,
                    first,
                })))
            }
        }
    }

    /// The answer to a dispatched job once computed (as `action`: the job's, or its
    /// first run's); its result's files become known to the parent from the cycle they are
    /// visible, and go into `blobs`.
    pub fn finish(
        &mut self,
        dispatch: &Dispatch,
        action: Sha256,
        computed: &Computed,
        blobs: &BlobStore,
    ) -> Result<cmbuild_machine::devices::offload::Answer, ParentError> {
        let visible_at = dispatch.submitted_at + self.platform.latency + computed.cycles;
        let response = computed.response.encode();
        let result = Sha256::of(&response);
        if let Response::Result(result) = &computed.response {
            for file in &result.files {
                let digest = blobs.put(&file.bytes)?;
                let at = self.known.entry(digest).or_insert(visible_at);
                *at = (*at).min(visible_at);
            }
        }
        let mut record = RECORD_DOMAIN.to_vec();
        record.extend_from_slice(action.as_bytes());
        record.extend_from_slice(computed.sibling_root_hash.as_bytes());
        record.extend_from_slice(&computed.cycles.to_le_bytes());
        record.extend_from_slice(result.as_bytes());
        self.records.push(JobRecord {
            action,
            cycles: computed.cycles,
            result,
            sibling_root_hash: computed.sibling_root_hash.clone(),
            submitted_at: dispatch.submitted_at,
            tag: dispatch.tag,
            visible_at,
        });
        Ok(cmbuild_machine::devices::offload::Answer {
            visible_at,
            response,
            record: *Sha256::of(record).as_bytes(),
        })
    }

    /// Every job answered so far, in delivery order (visible cycle, then submission).
    pub fn records(&self) -> Vec<JobRecord> {
        let mut records = self.records.clone();
        records.sort_by_key(|r| (r.visible_at, r.submitted_at, r.tag));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::job::{GuestPath, Input};
    use crate::offload::wire::{JobResult, OutFile};

    const L: u64 = 1000;

    fn platform() -> Platform {
        Platform {
            latency: L,
            scheme: "cmvm-sha256-v1".into(),
            template: "cmvm-sha256-v1:00".into(),
            tool: Sha256::of(b"tool"),
        }
    }

    fn job(inputs: &[(&str, &[u8])]) -> Vec<u8> {
        let job = Job {
            argv: vec!["rustc".into()],
            cwd: GuestPath::new("/build/src").unwrap(),
            env: Default::default(),
            inputs: inputs
                .iter()
                .map(|(path, data)| Input {
                    exec: false,
                    path: GuestPath::new(path).unwrap(),
                    sha256: Sha256::of(data),
                    size: data.len() as u64,
                })
                .collect(),
            outputs: vec![GuestPath::new("/build/src/target/deps").unwrap()],
        };
        let mut body = job.canonical_json();
        body.push(b'\n');
        body
    }

    fn blob(data: &[u8], offset: usize, end: usize) -> Vec<u8> {
        let mut body = format!(
            r#"{{"kind":"blob","offset":{offset},"sha256":"{}","size":{},"v":1}}"#,
            Sha256::of(data),
            data.len()
        )
        .into_bytes();
        body.push(b'\n');
        body.extend_from_slice(&data[offset..end]);
        body
    }

    fn answer(step: Step) -> (u64, String) {
        match step {
            Step::Answer(a) => (a.visible_at, String::from_utf8(a.response).unwrap()),
            Step::Dispatch(d) => panic!("dispatched {d:?}"),
        }
    }

    fn computed(files: &[(&str, &[u8])], cycles: u64) -> Computed {
        Computed {
            response: Response::Result(JobResult {
                exit: 0,
                stdout: vec![],
                stderr: vec![],
                files: files
                    .iter()
                    .map(|(path, data)| OutFile {
                        path: GuestPath::new(path).unwrap(),
                        exec: false,
                        bytes: data.to_vec(),
                    })
                    .collect(),
            }),
            cycles,
            sibling_root_hash: format!("cmvm-sha256-v1:{}", "cd".repeat(32)),
        }
    }

    /// Plays one parent's history against a host whose blob store may already hold
    /// everything (a warm host); returns every answer (cycle and bytes).
    fn history(warm: bool) -> Vec<(u64, String)> {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let out_dir: &[u8] = b"generated by a build script";
        let rlib: &[u8] = b"librlib";
        if warm {
            blobs.put(out_dir).unwrap();
            blobs.put(rlib).unwrap();
        }
        let mut parent = Parent::new(platform(), [Sha256::of(b"fn main() {}")]);
        let mut said = Vec::new();
        let first = job(&[
            ("/build/src/lib.rs", b"fn main() {}"),
            ("/build/src/out/gen.rs", out_dir),
        ]);
        // The build script's output is not on the input drive: missing, on a warm host too.
        let step = parent.request(1, 5000, &first, &blobs).unwrap();
        said.push(answer(step));
        said.push(answer(
            parent
                .request(2, 7000, &blob(out_dir, 0, 10), &blobs)
                .unwrap(),
        ));
        said.push(answer(
            parent
                .request(3, 9000, &blob(out_dir, 10, out_dir.len()), &blobs)
                .unwrap(),
        ));
        let Step::Dispatch(dispatch) = parent.request(4, 11_000, &first, &blobs).unwrap() else {
            panic!("all inputs known, the job must be dispatched")
        };
        let done = parent
            .finish(
                &dispatch,
                dispatch.action,
                &computed(&[("/build/src/target/deps/liba.rlib", rlib)], 50_000),
                &blobs,
            )
            .unwrap();
        assert_eq!(done.visible_at, 11_000 + L + 50_000);
        assert_ne!(done.record, [0; 32]);
        said.push((
            done.visible_at,
            String::from_utf8_lossy(&done.response).into_owned(),
        ));
        // A job submitted before the rlib was visible cannot name it; after, it can.
        let second = job(&[("/build/src/target/deps/liba.rlib", rlib)]);
        said.push(answer(parent.request(5, 60_000, &second, &blobs).unwrap()));
        assert!(matches!(
            parent.request(6, 62_000, &second, &blobs).unwrap(),
            Step::Dispatch(_)
        ));
        said.push(answer(
            parent.request(7, 63_000, b"garbage", &blobs).unwrap(),
        ));
        assert_eq!(parent.records().len(), 1);
        said
    }

    #[test]
    fn answers_depend_on_the_parents_history_not_on_what_the_host_holds() {
        let cold = history(false);
        assert_eq!(cold, history(true));
        let gen = Sha256::of(b"generated by a build script");
        assert_eq!(
            cold[0],
            (
                5000 + L,
                format!("{{\"kind\":\"missing\",\"sha256\":[\"{gen}\"]}}\n")
            )
        );
        assert_eq!(cold[1], (7000 + L, "{\"kind\":\"ok\"}\n".to_owned()));
        assert_eq!(cold[2], (9000 + L, "{\"kind\":\"ok\"}\n".to_owned()));
        assert!(
            cold[4].1.starts_with("{\"kind\":\"missing\""),
            "{:?}",
            cold[4]
        );
        assert!(
            cold[5].1.starts_with("{\"kind\":\"error\""),
            "{:?}",
            cold[5]
        );
    }

    #[test]
    fn a_blob_that_is_not_what_it_claims_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut parent = Parent::new(platform(), []);
        let mut lie = blob(b"claimed", 0, 7);
        let at = lie.len() - 7;
        lie[at..].copy_from_slice(b"actual!");
        let (_, said) = answer(parent.request(1, 10, &lie, &blobs).unwrap());
        assert!(said.starts_with("{\"kind\":\"error\""), "{said}");
        assert!(!blobs.has(&Sha256::of(b"claimed")));
        let (_, said) = answer(
            parent
                .request(2, 20, &job(&[("/build/src/a", b"claimed")]), &blobs)
                .unwrap(),
        );
        assert!(said.starts_with("{\"kind\":\"missing\""), "{said}");
    }
}
