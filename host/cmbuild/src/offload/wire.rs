//! Request and response bodies of the offload channel (`docs/parallel-builds.md`, "The job
//! format"): one canonical JSON line, then a payload the line describes. Requests come from
//! the guest and responses from a sibling's output drive: both are parsed here, bounded,
//! without panics.

use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use super::job::{GuestPath, Job, JobError};

/// Largest request body the channel carries (`cmbuild_machine::devices::offload::MAX_REQUEST`).
pub const MAX_REQUEST: usize = 1 << 20;
/// Largest response body (`cmbuild_machine::devices::offload::MAX_RESPONSE`).
pub const MAX_RESPONSE: usize = 1 << 30;
/// Largest blob chunk.
pub const MAX_CHUNK: usize = 512 << 10;
/// Most files in one result.
pub const MAX_FILES: usize = 4096;

/// Why a body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// the body has no JSON line (no newline in its first {0} bytes)
    #[error("the body has no JSON line (no newline in its first {0} bytes)")]
    NoLine(usize),
    /// the body is {0} bytes, more than the channel carries
    #[error("the body is {0} bytes, more than the channel carries")]
    TooLarge(usize),
    /// the JSON line is not a known request or response: {0}
    #[error("the JSON line is not a known request or response: {0}")]
    Format(String),
    /// {0}
    #[error("{0}")]
    Job(#[from] JobError),
    /// a blob chunk does not fit its blob (offset {offset}, {len} bytes, blob of {size})
    #[error("a blob chunk does not fit its blob (offset {offset}, {len} bytes, blob of {size})")]
    Chunk {
        /// The chunk's offset.
        offset: u64,
        /// Its length.
        len: usize,
        /// The blob's size.
        size: u64,
    },
    /// the payload is {got} bytes where the JSON line describes {want}
    #[error("the payload is {got} bytes where the JSON line describes {want}")]
    Payload {
        /// What is there.
        got: u64,
        /// What the line says.
        want: u64,
    },
    /// result file {0:?} is not sorted, repeated, or outside the job's outputs
    #[error("result file {0:?} is not sorted, repeated, or outside the job's outputs")]
    FilePath(String),
    /// result file {0:?} does not match its sha256
    #[error("result file {0:?} does not match its sha256")]
    FileDigest(String),
}

/// A chunk of a blob the guest sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobChunk {
    /// The whole blob's digest.
    pub sha256: Sha256,
    /// The whole blob's size.
    pub size: u64,
    /// Where this chunk starts.
    pub offset: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What the guest asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Run (or look up) a job.
    Job(Job),
    /// Take part of a blob.
    Blob(BlobChunk),
    /// The result of the job whose `meta` response was tagged `of` (pipelining).
    Rest {
        /// The job request's tag.
        of: u64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestLine {
    #[allow(dead_code)]
    kind: String,
    of: u64,
    v: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobLine {
    kind: String,
    offset: u64,
    sha256: Sha256,
    size: u64,
    v: u32,
}

#[derive(Deserialize)]
struct Kind {
    kind: String,
}

/// Splits a body into its JSON line (without `\n`) and its payload.
fn split(body: &[u8], max: usize) -> Result<(&[u8], &[u8]), WireError> {
    if body.len() > max {
        return Err(WireError::TooLarge(body.len()));
    }
    let end = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(WireError::NoLine(body.len()))?;
    Ok((&body[..end], &body[end + 1..]))
}

impl Request {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Request, WireError> {
        let (line, payload) = split(body, MAX_REQUEST)?;
        let kind: Kind =
            serde_json::from_slice(line).map_err(|e| WireError::Format(e.to_string()))?;
        match kind.kind.as_str() {
            "job" => {
                if !payload.is_empty() {
                    return Err(WireError::Payload {
                        got: payload.len() as u64,
                        want: 0,
                    });
                }
                Ok(Request::Job(Job::parse(line)?))
            }
            "blob" => {
                let blob: BlobLine =
                    serde_json::from_slice(line).map_err(|e| WireError::Format(e.to_string()))?;
                if blob.v != super::job::VERSION || blob.kind != "blob" {
                    return Err(WireError::Format(format!("blob version {}", blob.v)));
                }
                let fits = payload.len() <= MAX_CHUNK
                    && blob.size <= super::job::MAX_INPUT_SIZE
                    && blob
                        .offset
                        .checked_add(payload.len() as u64)
                        .is_some_and(|end| end <= blob.size)
                    && (!payload.is_empty() || blob.size == 0);
                if !fits {
                    return Err(WireError::Chunk {
                        offset: blob.offset,
                        len: payload.len(),
                        size: blob.size,
                    });
                }
                Ok(Request::Blob(BlobChunk {
                    sha256: blob.sha256,
                    size: blob.size,
                    offset: blob.offset,
                    bytes: payload.to_vec(),
                }))
            }
            "rest" => {
                let rest: RestLine =
                    serde_json::from_slice(line).map_err(|e| WireError::Format(e.to_string()))?;
                if rest.v != super::job::VERSION {
                    return Err(WireError::Format(format!("rest version {}", rest.v)));
                }
                if !payload.is_empty() {
                    return Err(WireError::Payload {
                        got: payload.len() as u64,
                        want: 0,
                    });
                }
                Ok(Request::Rest { of: rest.of })
            }
            other => Err(WireError::Format(format!(
                "kind {:?}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }
}

/// One file of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    /// Where the wrapper writes it.
    pub path: GuestPath,
    /// Its mode is 0755 (else 0644).
    pub exec: bool,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// rustc's exit status.
    pub exit: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// The new or changed files under the job's outputs, sorted by path.
    pub files: Vec<OutFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    exec: bool,
    path: GuestPath,
    sha256: Sha256,
    size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultLine {
    exit: i32,
    files: Vec<FileLine>,
    kind: String,
    stderr: u64,
    stdout: u64,
}

impl JobResult {
    /// The `result` response body.
    pub fn encode(&self) -> Vec<u8> {
        let line = ResultLine {
            exit: self.exit,
            files: file_lines(&self.files),
            kind: "result".to_owned(),
            stderr: self.stderr.len() as u64,
            stdout: self.stdout.len() as u64,
        };
        body_of(&line, &[&self.stdout, &self.stderr], &self.files)
    }

    /// Parses a `result` body (what a sibling's `run-job` wrote) for `job`: every file must
    /// be under the job's outputs, sorted, unique, and match its digest; the payload must
    /// be exactly what the line describes.
    pub fn parse(body: &[u8], job: &Job) -> Result<JobResult, WireError> {
        let (line, payload) = split(body, MAX_RESPONSE)?;
        let line: ResultLine =
            serde_json::from_slice(line).map_err(|e| WireError::Format(e.to_string()))?;
        if line.kind != "result" {
            return Err(WireError::Format(format!("kind {:?}", line.kind)));
        }
        check_payload(&[line.stdout, line.stderr], &line.files, payload)?;
        let (stdout, rest) = payload.split_at(line.stdout as usize);
        let (stderr, rest) = rest.split_at(line.stderr as usize);
        let files = take_files(line.files, rest, job)?;
        Ok(JobResult {
            exit: line.exit,
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            files,
        })
    }
}

/// A body: the JSON `line`, then the `streams`' bytes, then each file's (what
/// [`check_payload`] checks on the way back).
fn body_of(line: &impl Serialize, streams: &[&[u8]], files: &[OutFile]) -> Vec<u8> {
    let mut body = serde_json::to_vec(line).expect("a line of plain fields always serializes");
    body.push(b'\n');
    for stream in streams {
        body.extend_from_slice(stream);
    }
    for file in files {
        body.extend_from_slice(&file.bytes);
    }
    body
}

/// Checks that a body's payload is exactly what its line describes: the `streams`' bytes,
/// then each of at most [`MAX_FILES`] files' (sizes that overflow describe no payload).
fn check_payload(streams: &[u64], files: &[FileLine], payload: &[u8]) -> Result<(), WireError> {
    if files.len() > MAX_FILES {
        return Err(WireError::Format(format!("{} files", files.len())));
    }
    let want = streams
        .iter()
        .chain(files.iter().map(|f| &f.size))
        .try_fold(0u64, |sum, &n| sum.checked_add(n))
        .unwrap_or(u64::MAX);
    if want != payload.len() as u64 {
        return Err(WireError::Payload {
            got: payload.len() as u64,
            want,
        });
    }
    Ok(())
}

/// The files `lines` describe, their bytes one after another in `payload` (whose length
/// [`check_payload`] checked): sorted, unique, under the job's outputs, each matching its digest.
fn take_files(lines: Vec<FileLine>, payload: &[u8], job: &Job) -> Result<Vec<OutFile>, WireError> {
    let mut rest = payload;
    let mut files: Vec<OutFile> = Vec::with_capacity(lines.len());
    for f in lines {
        let in_order = files.last().is_none_or(|last| last.path < f.path);
        if !in_order || !job.is_output(&f.path) {
            return Err(WireError::FilePath(f.path.to_string()));
        }
        let (bytes, tail) = rest.split_at(f.size as usize);
        rest = tail;
        if Sha256::of(bytes) != f.sha256 {
            return Err(WireError::FileDigest(f.path.to_string()));
        }
        files.push(OutFile {
            path: f.path,
            exec: f.exec,
            bytes: bytes.to_vec(),
        });
    }
    Ok(files)
}

fn file_lines(files: &[OutFile]) -> Vec<FileLine> {
    files
        .iter()
        .map(|f| FileLine {
            exec: f.exec,
            path: f.path.clone(),
            sha256: Sha256::of(&f.bytes),
            size: f.bytes.len() as u64,
        })
        .collect()
}

/// The environment variables the dep-info files among `files` say rustc read
/// (`# env-dep:NAME` or `# env-dep:NAME=VALUE` lines).
fn env_deps(files: &[OutFile]) -> std::collections::BTreeSet<String> {
    files
        .iter()
        .filter(|f| f.path.as_str().ends_with(".d"))
        .flat_map(|f| f.bytes.split(|&b| b == b'\n'))
        .filter_map(|line| line.strip_prefix(b"# env-dep:"))
        .map(|dep| {
            let name = dep.split(|&b| b == b'=').next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        })
        .collect()
}

/// What a job had written when rustc announced its `.rmeta` (pipelining,
/// `docs/parallel-builds.md`): its standard error so far and its files (the `.rmeta` and
/// the dep-info file). A sibling's record of it has no `of`; the parent's `meta` response
/// names the job request's tag in `of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// rustc's standard error up to and including the notice.
    pub stderr: Vec<u8>,
    /// Sorted by path.
    pub files: Vec<OutFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaLine {
    files: Vec<FileLine>,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    of: Option<u64>,
    stderr: u64,
}

impl Meta {
    /// The body: a sibling's record (`of` = `None`) or the parent's `meta` response.
    pub fn encode(&self, of: Option<u64>) -> Vec<u8> {
        let line = MetaLine {
            files: file_lines(&self.files),
            kind: "meta".to_owned(),
            of,
            stderr: self.stderr.len() as u64,
        };
        body_of(&line, &[&self.stderr], &self.files)
    }

    /// Parses a sibling's record for `job`, checked as a result's files are. A record is
    /// usable only when it holds a dep-info file (`.d`) and an `.rmeta`: whether the job
    /// read a volatile variable is decided from it.
    pub fn parse_record(body: &[u8], job: &Job) -> Result<Meta, WireError> {
        let (line, payload) = split(body, MAX_RESPONSE)?;
        let line: MetaLine =
            serde_json::from_slice(line).map_err(|e| WireError::Format(e.to_string()))?;
        if line.kind != "meta" || line.of.is_some() {
            return Err(WireError::Format("not a metadata record".into()));
        }
        check_payload(&[line.stderr], &line.files, payload)?;
        let (stderr, rest) = payload.split_at(line.stderr as usize);
        let files = take_files(line.files, rest, job)?;
        let has = |suffix: &str| files.iter().any(|f| f.path.as_str().ends_with(suffix));
        if !has(".d") || !has(".rmeta") {
            return Err(WireError::Format(
                "a metadata record without its .d and .rmeta".into(),
            ));
        }
        Ok(Meta {
            stderr: stderr.to_vec(),
            files,
        })
    }

    /// The environment variables its dep-info says rustc read.
    pub fn env_deps(&self) -> std::collections::BTreeSet<String> {
        env_deps(&self.files)
    }
}

impl JobResult {
    /// The environment variables rustc recorded as read (`# env-dep:NAME` or
    /// `# env-dep:NAME=VALUE` lines of the dep-info files among the outputs).
    pub fn env_deps(&self) -> std::collections::BTreeSet<String> {
        env_deps(&self.files)
    }
}

/// What the host answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The job's result.
    Result(JobResult),
    /// The job's metadata; its result follows a `rest` request naming `of`.
    Meta {
        /// The job request's tag.
        of: u64,
        /// What rustc had written.
        meta: Meta,
    },
    /// Send these blobs, then the job again (sorted, unique).
    Missing(Vec<Sha256>),
    /// The blob chunk is stored.
    Ok,
    /// The host will not run this request; the wrapper runs rustc itself.
    Error(String),
}

impl Response {
    /// The response body.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Missing<'a> {
            kind: &'static str,
            sha256: &'a [Sha256],
        }
        #[derive(Serialize)]
        struct Error<'a> {
            kind: &'static str,
            message: &'a str,
        }
        let mut body = match self {
            Response::Result(result) => return result.encode(),
            Response::Meta { of, meta } => return meta.encode(Some(*of)),
            Response::Missing(blobs) => serde_json::to_vec(&Missing {
                kind: "missing",
                sha256: blobs,
            }),
            Response::Ok => Ok(br#"{"kind":"ok"}"#.to_vec()),
            Response::Error(message) => serde_json::to_vec(&Error {
                kind: "error",
                message,
            }),
        }
        .expect("a response always serializes");
        body.push(b'\n');
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::job::Input;
    use std::collections::BTreeMap;

    fn job() -> Job {
        Job {
            argv: vec!["rustc".into()],
            cwd: GuestPath::new("/build/src").unwrap(),
            env: BTreeMap::new(),
            inputs: vec![Input {
                exec: false,
                path: GuestPath::new("/build/src/lib.rs").unwrap(),
                sha256: Sha256::of(b""),
                size: 0,
            }],
            outputs: vec![GuestPath::new("/build/src/target/deps").unwrap()],
        }
    }

    fn result() -> JobResult {
        JobResult {
            exit: 0,
            stdout: b"out".to_vec(),
            stderr: b"{\"message\":\"warning\"}\n".to_vec(),
            files: vec![
                OutFile {
                    path: GuestPath::new("/build/src/target/deps/liba.rlib").unwrap(),
                    exec: false,
                    bytes: b"rlib".to_vec(),
                },
                OutFile {
                    path: GuestPath::new("/build/src/target/deps/liba.rmeta").unwrap(),
                    exec: true,
                    bytes: vec![],
                },
            ],
        }
    }

    #[test]
    fn results_round_trip_and_are_canonical() {
        let body = result().encode();
        let line_end = body.iter().position(|&b| b == b'\n').unwrap();
        let line = std::str::from_utf8(&body[..line_end]).unwrap();
        assert!(line.starts_with(r#"{"exit":0,"files":[{"exec":false,"path":"/build/src/target/deps/liba.rlib","sha256":"#));
        assert!(line.ends_with(r#""kind":"result","stderr":22,"stdout":3}"#));
        assert_eq!(JobResult::parse(&body, &job()).unwrap(), result());
        assert_eq!(Response::Result(result()).encode(), body);
    }

    #[test]
    fn hostile_results_are_refused() {
        let body = result().encode();
        for cut in 0..body.len() {
            assert!(JobResult::parse(&body[..cut], &job()).is_err(), "cut {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(matches!(
            JobResult::parse(&longer, &job()),
            Err(WireError::Payload { .. })
        ));
        let mut flipped = body.clone();
        *flipped.last_mut().unwrap() ^= 1; // the rlib's last byte (the rmeta is empty)
        assert!(matches!(
            JobResult::parse(&flipped, &job()),
            Err(WireError::FileDigest(_))
        ));
        let mut outside = result();
        outside.files[0].path = GuestPath::new("/build/src/lib.rs").unwrap();
        assert!(matches!(
            JobResult::parse(&outside.encode(), &job()),
            Err(WireError::FilePath(_))
        ));
        let mut unsorted = result();
        unsorted.files.reverse();
        assert!(matches!(
            JobResult::parse(&unsorted.encode(), &job()),
            Err(WireError::FilePath(_))
        ));
        let text = String::from_utf8(body.clone()).unwrap();
        let huge = text.replacen(r#""stdout":3"#, r#""stdout":18446744073709551615"#, 1);
        assert!(matches!(
            JobResult::parse(huge.as_bytes(), &job()),
            Err(WireError::Payload { .. })
        ));
    }

    #[test]
    fn metadata_records_round_trip_and_hostile_ones_are_refused() {
        let file = |path: &str, bytes: &[u8]| OutFile {
            path: GuestPath::new(path).unwrap(),
            exec: false,
            bytes: bytes.to_vec(),
        };
        let meta = Meta {
            stderr: b"notice\n".to_vec(),
            files: vec![
                file("/build/src/target/deps/a-1.d", b"# env-dep:X\n"),
                file("/build/src/target/deps/liba-1.rmeta", b"rmeta"),
            ],
        };
        let record = meta.encode(None);
        assert_eq!(Meta::parse_record(&record, &job()).unwrap(), meta);
        assert_eq!(meta.env_deps(), ["X".to_string()].into());
        // The parent's response names the job's tag; a record must not.
        let response = Response::Meta {
            of: 9,
            meta: meta.clone(),
        }
        .encode();
        assert!(String::from_utf8_lossy(&response).contains(r#""kind":"meta","of":9,"stderr":7}"#));
        assert!(Meta::parse_record(&response, &job()).is_err());
        let refused = |meta: &Meta, why: &str| {
            assert!(
                Meta::parse_record(&meta.encode(None), &job()).is_err(),
                "{why}"
            );
        };
        refused(
            &Meta {
                files: meta.files[1..].to_vec(),
                ..meta.clone()
            },
            "no dep-info",
        );
        refused(
            &Meta {
                files: meta.files[..1].to_vec(),
                ..meta.clone()
            },
            "no rmeta",
        );
        let mut outside = meta.clone();
        outside.files[1].path = GuestPath::new("/build/src/lib.rmeta").unwrap();
        refused(&outside, "a file outside the outputs");
        let mut unsorted = meta.clone();
        unsorted.files.reverse();
        refused(&unsorted, "unsorted files");
        let mut cut = record.clone();
        cut.pop();
        assert!(matches!(
            Meta::parse_record(&cut, &job()),
            Err(WireError::Payload { .. })
        ));
        let mut forged = record.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Meta::parse_record(&forged, &job()),
            Err(WireError::FileDigest(_))
        ));
        // Sizes that overflow are refused, not panicked on.
        let huge = format!(
            "{{\"files\":[],\"kind\":\"meta\",\"stderr\":{}}}\n",
            u64::MAX
        );
        assert!(Meta::parse_record(huge.as_bytes(), &job()).is_err());
    }

    #[test]
    fn rest_requests_parse_and_bad_ones_are_refused() {
        assert_eq!(
            Request::parse(b"{\"kind\":\"rest\",\"of\":7,\"v\":1}\n").unwrap(),
            Request::Rest { of: 7 }
        );
        for bad in [
            &b"{\"kind\":\"rest\",\"of\":7,\"v\":2}\n"[..],
            b"{\"kind\":\"rest\",\"of\":-1,\"v\":1}\n",
            b"{\"kind\":\"rest\",\"v\":1}\n",
            b"{\"kind\":\"rest\",\"of\":7,\"v\":1,\"x\":0}\n",
            b"{\"kind\":\"rest\",\"of\":7,\"v\":1}\npayload",
        ] {
            assert!(
                Request::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        let mut body = job().canonical_json();
        body.push(b'\n');
        assert_eq!(Request::parse(&body).unwrap(), Request::Job(job()));
        let mut with_payload = body.clone();
        with_payload.push(1);
        assert!(Request::parse(&with_payload).is_err());
        assert_eq!(Request::parse(b"{}"), Err(WireError::NoLine(2)));
        assert!(matches!(
            Request::parse(b"{\"kind\":\"x\"}\n"),
            Err(WireError::Format(_))
        ));
        let digest = Sha256::of(b"abcdef");
        let blob = |offset: u64, size: u64, bytes: &[u8]| {
            let mut body = format!(
                r#"{{"kind":"blob","offset":{offset},"sha256":"{digest}","size":{size},"v":1}}"#
            )
            .into_bytes();
            body.push(b'\n');
            body.extend_from_slice(bytes);
            Request::parse(&body)
        };
        assert_eq!(
            blob(3, 6, b"def").unwrap(),
            Request::Blob(BlobChunk {
                sha256: digest,
                size: 6,
                offset: 3,
                bytes: b"def".to_vec()
            })
        );
        assert!(matches!(blob(4, 6, b"def"), Err(WireError::Chunk { .. })));
        assert!(matches!(
            blob(u64::MAX, 6, b"d"),
            Err(WireError::Chunk { .. })
        ));
        assert!(matches!(blob(0, 6, b""), Err(WireError::Chunk { .. })));
        assert!(matches!(
            blob(0, 1 << 40, &[0; 8]),
            Err(WireError::Chunk { .. })
        ));
        let big = vec![0u8; MAX_REQUEST + 1];
        assert_eq!(
            Request::parse(&big),
            Err(WireError::TooLarge(MAX_REQUEST + 1))
        );
    }

    #[test]
    fn env_deps_come_from_the_dep_info_files() {
        let mut with_deps = result();
        with_deps.files.push(OutFile {
            path: GuestPath::new("/build/src/target/deps/a-1.d").unwrap(),
            exec: false,
            bytes:
                b"a.rlib: src/lib.rs\n\n# env-dep:CARGO_PKG_NAME=a\n# env-dep:SOURCE_DATE_EPOCH\n"
                    .to_vec(),
        });
        let deps: Vec<String> = with_deps.env_deps().into_iter().collect();
        assert_eq!(deps, ["CARGO_PKG_NAME", "SOURCE_DATE_EPOCH"]);
        assert!(result().env_deps().is_empty(), "only .d files count");
    }

    #[test]
    fn small_responses_are_one_line() {
        assert_eq!(Response::Ok.encode(), b"{\"kind\":\"ok\"}\n");
        let missing = Response::Missing(vec![Sha256::of(b"")]).encode();
        assert_eq!(
            std::str::from_utf8(&missing).unwrap(),
            format!(
                "{{\"kind\":\"missing\",\"sha256\":[\"{}\"]}}\n",
                Sha256::of(b"")
            )
        );
        let error = Response::Error("no \"such\"".into()).encode();
        assert_eq!(
            error,
            b"{\"kind\":\"error\",\"message\":\"no \\\"such\\\"\"}\n"
        );
    }
}
