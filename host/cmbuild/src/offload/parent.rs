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
//! result at `T + L + C`, `C` its sibling's instruction count. A job whose rustc announced
//! its `.rmeta` (pipelining) is answered twice: `meta` at `T + L + C_meta`, then, to the
//! `rest` request the wrapper submits at `T2`, its result at `max(T + L + C, T2 + L)`.

use std::collections::BTreeMap;

use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use super::blobs::{BlobError, BlobStore, Upload};
use super::cache::{Computed, MetaPoint};
use super::job::{GuestPath, Job, Platform};
use super::narrow::Reach;
use super::wire::{Request, Response};
use std::sync::Arc;

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
    /// Whether a scout asked for it ([`Parent::scout`]): a prefetch, not yet a build
    /// machine's job.
    pub scout: bool,
    /// The crates it reaches ([`super::narrow`]): its libraries' dependents reach them too.
    pub reach: Arc<Reach>,
}

/// What the host does with a request.
#[derive(Debug)]
pub enum Step {
    /// Answer now.
    Answer(cmbuild_machine::devices::offload::Answer),
    /// Compute the job, then call [`Parent::finish`].
    Dispatch(Box<Dispatch>),
    /// The parent asks for the rest of job `of`, whose metadata it has: answer with
    /// [`Parent::finish`] once the job is computed, meanwhile promise what `promise` says.
    Rest {
        /// The job request's tag.
        of: u64,
        /// The rest request's tag and the cycle its answer is not visible before, from the
        /// sibling's progress so far.
        promise: (u64, u64),
    },
}

/// A pipelined job as `machine.json` records it (keys sorted): its `meta` answer and the
/// `rest` request its result answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinedRecord {
    /// `C_meta`.
    pub meta_cycles: u64,
    /// The `meta` response's sha256.
    pub meta_response: Sha256,
    /// The parent's cycle at which the `meta` response became visible.
    pub meta_visible_at: u64,
    /// The parent's cycle of the `rest` request.
    pub rest_submitted_at: u64,
    /// The `rest` request's tag (the result answers it).
    pub rest_tag: u64,
}

/// A job whose `meta` answer the parent has.
#[derive(Debug, Clone)]
struct Pipe {
    submitted_at: u64,
    meta_cycles: u64,
    meta_response: Sha256,
    meta_visible_at: u64,
    /// The `rest` request: tag and cycle.
    rest: Option<(u64, u64)>,
    /// The sibling's progress last reported (a lower bound of `C`).
    progress: u64,
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
    /// Its `meta` answer and `rest` request, when it was pipelined (then `tag`,
    /// `submitted_at` are the job request's, `visible_at` the result's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pipelined: Option<PipelinedRecord>,
}

/// Errors of the host itself (not of the guest's requests, which are answered).
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// cannot keep a blob the parent sent or received
    #[error("cannot keep a blob the parent sent or received")]
    Blob(#[from] BlobError),
    /// job {0} is computed but the parent has not asked for its rest (a bug in cmbuild)
    #[error("job {0} is computed but the parent has not asked for its rest (a bug in cmbuild)")]
    NoRest(u64),
}

/// The host's state for one parent machine.
#[derive(Debug)]
pub struct Parent {
    platform: Platform,
    /// Blob digest → the first cycle at which the parent knew it.
    known: BTreeMap<Sha256, u64>,
    /// A library file the parent was answered with (path and digest) → the cycle it became
    /// visible and the crates its job reached.
    made: BTreeMap<(GuestPath, Sha256), (u64, Arc<Reach>)>,
    /// The reach of each dispatched job not finished yet, by tag.
    reaching: BTreeMap<u64, Arc<Reach>>,
    uploads: BTreeMap<Sha256, Upload>,
    records: Vec<JobRecord>,
    /// Jobs answered with `meta`, by their request's tag, until their result is.
    pipes: BTreeMap<u64, Pipe>,
    /// A scout's host state ([`Parent::scout`]).
    scout: bool,
}

impl Parent {
    /// A parent whose input drive holds files with these digests (known from cycle 0).
    pub fn new(platform: Platform, input_files: impl IntoIterator<Item = Sha256>) -> Parent {
        Parent {
            platform,
            known: input_files.into_iter().map(|d| (d, 0)).collect(),
            made: BTreeMap::new(),
            reaching: BTreeMap::new(),
            uploads: BTreeMap::new(),
            records: Vec::new(),
            pipes: BTreeMap::new(),
            scout: false,
        }
    }

    /// The host's state for a scout (`super::scout`): a copy of a build machine run only to
    /// find its jobs early, whose answers come as soon as they are computed. Its answers'
    /// cycles are the link's to choose (they are not `T + L + C`), so what the scout knows
    /// is what the host holds: a file it was answered with is known from cycle 0.
    pub fn scout(platform: Platform, input_files: impl IntoIterator<Item = Sha256>) -> Parent {
        Parent {
            scout: true,
            ..Parent::new(platform, input_files)
        }
    }

    /// Whether this is a scout's state.
    pub fn is_scout(&self) -> bool {
        self.scout
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
            Request::Rest { of } => match self.pipes.get_mut(&of) {
                Some(pipe) if pipe.rest.is_none() => {
                    pipe.rest = Some((tag, submitted_at));
                    let promise = (tag, self.rest_visible(of).expect("asked just now"));
                    Ok(Step::Rest { of, promise })
                }
                _ => Ok(self.immediate(
                    submitted_at,
                    Response::Error(format!("request {of} has no result to come")),
                )),
            },
            Request::Job(job) => {
                // Of the libraries it lists, those its crate reaches, by what the parent
                // was answered with before `T`.
                let (job, reach) = super::narrow::narrow(&job, |path, digest| {
                    self.made
                        .get(&(path.clone(), *digest))
                        .filter(|(at, _)| *at <= submitted_at)
                        .map(|(_, reach)| reach.clone())
                });
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
                self.reaching.insert(tag, reach.clone());
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
                    scout: self.scout,
                    reach,
                })))
            }
        }
    }

    /// Files the parent sees from `visible_at` on (a scout: from 0): into `blobs`, known
    /// from then.
    /// The libraries among them were made by a job that reached `reach`.
    fn learn<'f>(
        &mut self,
        files: impl IntoIterator<Item = &'f super::wire::OutFile>,
        visible_at: u64,
        reach: Option<&Arc<Reach>>,
        blobs: &BlobStore,
    ) -> Result<(), ParentError> {
        let visible_at = if self.scout { 0 } else { visible_at };
        for file in files {
            let digest = blobs.put(&file.bytes)?;
            let at = self.known.entry(digest).or_insert(visible_at);
            *at = (*at).min(visible_at);
            if let Some(reach) = reach.filter(|_| super::narrow::is_library(&file.path)) {
                let (at, _) = self
                    .made
                    .entry((file.path.clone(), digest))
                    .or_insert((visible_at, reach.clone()));
                *at = (*at).min(visible_at);
            }
        }
        Ok(())
    }

    /// The `meta` answer to a dispatched job at its metadata point, visible at
    /// `T + L + C_meta`; its files become known to the parent from then.
    pub fn meta(
        &mut self,
        tag: u64,
        submitted_at: u64,
        point: &MetaPoint,
        blobs: &BlobStore,
    ) -> Result<cmbuild_machine::devices::offload::Answer, ParentError> {
        let visible_at = submitted_at + self.platform.latency + point.cycles;
        let response = Response::Meta {
            of: tag,
            meta: point.meta.clone(),
        }
        .encode();
        let reach = self.reaching.get(&tag).cloned();
        self.learn(&point.meta.files, visible_at, reach.as_ref(), blobs)?;
        self.pipes.insert(
            tag,
            Pipe {
                submitted_at,
                meta_cycles: point.cycles,
                meta_response: Sha256::of(&response),
                meta_visible_at: visible_at,
                rest: None,
                progress: point.cycles,
            },
        );
        Ok(cmbuild_machine::devices::offload::Answer {
            visible_at,
            response,
            record: [0; 32],
        })
    }

    /// The promise a sibling's progress `cycles` gives job `tag` (submitted at
    /// `submitted_at`): the tag it bounds and the cycle its answer is not visible before,
    /// `T + L + c`. For a job answered with `meta` that is its `rest` request's answer,
    /// `max(T + L + c, T2 + L)`, once the parent has asked; until then nothing (the progress
    /// is kept for the request).
    pub fn promise(&mut self, tag: u64, submitted_at: u64, cycles: u64) -> Option<(u64, u64)> {
        let Some(pipe) = self.pipes.get_mut(&tag) else {
            return Some((tag, submitted_at + self.platform.latency + cycles));
        };
        pipe.progress = pipe.progress.max(cycles);
        let (rest_tag, _) = pipe.rest?;
        Some((rest_tag, self.rest_visible(tag)?))
    }

    /// For job `of` answered with `meta` whose rest the parent asked for: the earliest cycle
    /// its result may be visible, `max(T + L + c, T2 + L)` with `c` the progress reported.
    fn rest_visible(&self, of: u64) -> Option<u64> {
        let pipe = self.pipes.get(&of)?;
        let (_, at) = pipe.rest?;
        let latency = self.platform.latency;
        Some((pipe.submitted_at + latency + pipe.progress).max(at + latency))
    }

    /// Whether job `tag` was answered with `meta` and the parent has not asked for its rest
    /// yet: its result must wait for that request.
    pub fn awaits_rest(&self, tag: u64) -> bool {
        self.pipes.get(&tag).is_some_and(|p| p.rest.is_none())
    }

    /// The answer to a dispatched job once computed (as `action`: the job's, or its
    /// first run's), and the tag it answers: the job's request, or for a job answered with
    /// `meta` its `rest` request (which the parent must have made). Its result's files
    /// become known to the parent from the cycle they are visible, and go into `blobs`.
    pub fn finish(
        &mut self,
        dispatch: &Dispatch,
        action: Sha256,
        computed: &Computed,
        blobs: &BlobStore,
    ) -> Result<(u64, cmbuild_machine::devices::offload::Answer), ParentError> {
        let mut visible_at = dispatch.submitted_at + self.platform.latency + computed.cycles;
        let mut tag = dispatch.tag;
        let pipelined = match self.pipes.remove(&dispatch.tag) {
            None => None,
            Some(pipe) => {
                let (rest_tag, rest_at) = pipe.rest.ok_or(ParentError::NoRest(dispatch.tag))?;
                visible_at = visible_at.max(rest_at + self.platform.latency);
                tag = rest_tag;
                Some(PipelinedRecord {
                    meta_cycles: pipe.meta_cycles,
                    meta_response: pipe.meta_response,
                    meta_visible_at: pipe.meta_visible_at,
                    rest_submitted_at: rest_at,
                    rest_tag,
                })
            }
        };
        let response = computed.response.encode();
        let result = Sha256::of(&response);
        if let Response::Result(result) = &computed.response {
            let reach = self.reaching.remove(&dispatch.tag);
            self.learn(&result.files, visible_at, reach.as_ref(), blobs)?;
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
            pipelined,
        });
        Ok((
            tag,
            cmbuild_machine::devices::offload::Answer {
                visible_at,
                response,
                record: *Sha256::of(record).as_bytes(),
            },
        ))
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
            floor: None,
        }
    }

    fn job(inputs: &[(&str, &[u8])]) -> Vec<u8> {
        command("rustc", inputs)
    }

    /// A job request's body: `argv` (words), `inputs` (sorted here), output `target/deps`.
    fn command(argv: &str, inputs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut inputs: Vec<Input> = inputs
            .iter()
            .map(|(path, data)| Input {
                exec: false,
                path: GuestPath::new(path).unwrap(),
                sha256: Sha256::of(data),
                size: data.len() as u64,
            })
            .collect();
        inputs.sort_by(|a, b| a.path.cmp(&b.path));
        let job = Job {
            argv: argv.split(' ').map(str::to_owned).collect(),
            cwd: GuestPath::new("/build/src").unwrap(),
            env: Default::default(),
            inputs,
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
            Step::Rest { of, .. } => panic!("the rest of {of}"),
        }
    }

    #[test]
    fn a_pipelined_job_is_answered_at_its_metadata_point_then_at_its_rest() {
        use crate::offload::wire::Meta;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let rmeta: &[u8] = b"rmeta";
        for rest_first in [true, false] {
            let mut parent = Parent::new(platform(), [Sha256::of(b"fn main() {}")]);
            let body = job(&[("/build/src/lib.rs", b"fn main() {}")]);
            let Step::Dispatch(dispatch) = parent.request(4, 10_000, &body, &blobs).unwrap() else {
                panic!("dispatched")
            };
            // A rest request for a job without a metadata answer is refused at once.
            assert!(answer(
                parent
                    .request(5, 10_500, b"{\"kind\":\"rest\",\"of\":4,\"v\":1}\n", &blobs)
                    .unwrap()
            )
            .1
            .contains("no result to come"));
            let point = MetaPoint {
                cycles: 3000,
                meta: Meta {
                    stderr: b"notice\n".to_vec(),
                    files: vec![super::super::wire::OutFile {
                        path: GuestPath::new("/build/src/target/deps/liba.rmeta").unwrap(),
                        exec: false,
                        bytes: rmeta.to_vec(),
                    }],
                },
            };
            let meta = parent.meta(4, 10_000, &point, &blobs).unwrap();
            assert_eq!(meta.visible_at, 10_000 + L + 3000);
            assert!(meta.response.starts_with(
                br#"{"files":[{"exec":false,"path":"/build/src/target/deps/liba.rmeta""#
            ));
            assert!(String::from_utf8_lossy(&meta.response)
                .contains(r#""kind":"meta","of":4,"stderr":7}"#));
            // Its rmeta is known to the parent from the meta answer's cycle on.
            let dependent = job(&[("/build/src/target/deps/liba.rmeta", rmeta)]);
            assert!(matches!(
                parent
                    .request(6, 10_000 + L + 2999, &dependent, &blobs)
                    .unwrap(),
                Step::Answer(_)
            ));
            assert!(matches!(
                parent
                    .request(7, 10_000 + L + 3000, &dependent, &blobs)
                    .unwrap(),
                Step::Dispatch(_)
            ));
            let computed = computed(&[("/build/src/target/deps/liba.rlib", b"rlib")], 50_000);
            // The rest, asked for at T2: the result comes at max(T + L + C, T2 + L).
            let t2 = if rest_first { 14_000 } else { 70_000 };
            let rest = "{\"kind\":\"rest\",\"of\":4,\"v\":1}\n";
            // Progress before the rest request is kept for it, then bounds its answer.
            assert!(parent.awaits_rest(4));
            assert_eq!(parent.promise(4, 10_000, 3500), None);
            let Step::Rest { of, promise } =
                parent.request(8, t2, rest.as_bytes(), &blobs).unwrap()
            else {
                panic!("the rest request waits for the result")
            };
            assert_eq!((of, promise), (4, (8, (10_000 + L + 3500).max(t2 + L))));
            assert!(!parent.awaits_rest(4));
            assert_eq!(
                parent.promise(4, 10_000, 4000),
                Some((8, (10_000 + L + 4000).max(t2 + L)))
            );
            // A job without a metadata answer: its own request, at T + L + c.
            assert_eq!(parent.promise(99, 500, 7), Some((99, 500 + L + 7)));
            // Asked twice: refused.
            assert!(matches!(
                parent.request(9, t2 + 1, rest.as_bytes(), &blobs).unwrap(),
                Step::Answer(_)
            ));
            let (tag, done) = parent
                .finish(&dispatch, dispatch.action, &computed, &blobs)
                .unwrap();
            assert_eq!(tag, 8, "the result answers the rest request");
            assert_eq!(done.visible_at, (10_000 + L + 50_000).max(t2 + L));
            let records = parent.records();
            let piped = records[0].pipelined.as_ref().unwrap();
            assert_eq!(
                (
                    piped.meta_cycles,
                    piped.meta_visible_at,
                    piped.rest_tag,
                    piped.rest_submitted_at
                ),
                (3000, 10_000 + L + 3000, 8, t2)
            );
            assert_eq!(piped.meta_response, Sha256::of(&meta.response));
            assert!(!parent.awaits_rest(4) && parent.pipes.is_empty());
        }
    }

    fn computed(files: &[(&str, &[u8])], cycles: u64) -> Computed {
        Computed {
            meta: None,
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
        assert_eq!(done.0, 4, "it answers the job's request");
        let done = done.1;
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
    fn a_scout_knows_what_it_was_answered_with_and_its_jobs_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let rlib: &[u8] = b"librlib";
        let first = job(&[("/build/src/lib.rs", b"fn main() {}")]);
        let second = job(&[("/build/src/target/deps/liba.rlib", rlib)]);
        let mut said = Vec::new();
        for mut parent in [
            Parent::new(platform(), [Sha256::of(b"fn main() {}")]),
            Parent::scout(platform(), [Sha256::of(b"fn main() {}")]),
        ] {
            let Step::Dispatch(dispatch) = parent.request(1, 5000, &first, &blobs).unwrap() else {
                panic!("all inputs known, the job must be dispatched")
            };
            assert_eq!(dispatch.scout, parent.is_scout());
            let computed = computed(&[("/build/src/target/deps/liba.rlib", rlib)], 50_000);
            parent
                .finish(&dispatch, dispatch.action, &computed, &blobs)
                .unwrap();
            // The scout's link delivers that answer as soon as it has it, long before
            // `T + L + C`: a job naming the rlib right after is not missing anything.
            said.push(matches!(
                parent.request(2, 6000 + L, &second, &blobs).unwrap(),
                Step::Dispatch(_)
            ));
        }
        assert_eq!(said, [false, true], "a build machine, then a scout");
    }

    #[test]
    fn a_jobs_libraries_are_those_its_crate_reaches_through_the_parents_answers() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let deps = "/build/src/target/deps";
        let source: &[u8] = b"fn main() {}";
        let mut parent = Parent::new(platform(), [Sha256::of(source)]);
        let b = command(
            &format!("rustc --crate-type lib -L dependency={deps}"),
            &[("/build/src/b.rs", source)],
        );
        let Step::Dispatch(dispatch) = parent.request(1, 100, &b, &blobs).unwrap() else {
            panic!("b's inputs are known")
        };
        let rmeta: &[u8] = b"b's metadata";
        let made = computed(&[(&format!("{deps}/libb-1.rmeta"), rmeta)], 1000);
        let (_, answer) = parent
            .finish(&dispatch, dispatch.action, &made, &blobs)
            .unwrap();
        let after = answer.visible_at;
        // `a` uses b; the directory also holds a crate finished elsewhere meanwhile, which
        // the parent never saw: the job is b's metadata and its source, not missing it.
        let a = |extra: bool| {
            let (b, z) = (
                format!("{deps}/libb-1.rmeta"),
                format!("{deps}/libz-9.rmeta"),
            );
            let mut files = vec![("/build/src/a.rs", source), (b.as_str(), rmeta)];
            if extra {
                files.push((z.as_str(), b"z".as_slice()));
            }
            command(
                &format!("rustc --crate-type lib -L dependency={deps} --extern b={b}"),
                &files,
            )
        };
        let dispatched = |parent: &mut Parent, body: &[u8], at: u64| match parent
            .request(2, at, body, &blobs)
            .unwrap()
        {
            Step::Dispatch(d) => Some((d.action, d.job.inputs.len(), d.reach.clone())),
            _ => None,
        };
        let (action, inputs, reach) = dispatched(&mut parent, &a(true), after).unwrap();
        assert_eq!(inputs, 2);
        assert_eq!(
            Some((action, inputs, reach)),
            dispatched(&mut parent, &a(false), after)
        );
        // Before b's answer was visible, the parent cannot have had its metadata from it:
        // the job is kept whole, and the unknown crate is missing.
        assert_eq!(dispatched(&mut parent, &a(true), after - 1), None);
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
