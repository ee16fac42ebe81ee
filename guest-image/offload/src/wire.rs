//! The job format, wire format v1 (docs/parallel-builds.md, "The job format"): `job`,
//! `blob` and `rest` requests, `missing`, `meta`, `result`, `ok` and `error` responses. Every body is one
//! canonical JSON line followed by a payload; the parsers here check every shape, sort
//! order and size, and leave the job-specific checks (paths under the job's outputs,
//! digests among its inputs) to their callers.

use crate::json::{self, Value};
use crate::paths;
use crate::sha256;
use std::collections::BTreeMap;
use std::fmt;

/// The format version in `v`.
pub const VERSION: u64 = 1;
/// The largest chunk of a `blob` request.
pub const MAX_CHUNK: usize = 512 * 1024;
/// The longest JSON line a response may have (a result naming many files).
pub const MAX_LINE: usize = 16 << 20;
/// The most files a result may name.
pub const MAX_FILES: usize = 1 << 16;
/// The longest path the format carries.
pub const MAX_PATH: usize = 4096;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// the JSON line is not canonical JSON
    Json(json::Error),
    /// the body has no newline ending its JSON line within the limit
    NoLine,
    /// a field is missing, extra or of the wrong type
    Shape(&'static str),
    /// a list is not sorted or not unique
    Order(&'static str),
    /// a path is not absolute and normalised, or is too long
    Path(String),
    /// the payload's length disagrees with the sizes in the JSON line
    Sizes,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "the JSON line is not canonical JSON: {e}"),
            Error::NoLine => write!(f, "the body has no JSON line"),
            Error::Shape(what) => write!(f, "malformed message: {what}"),
            Error::Order(what) => write!(f, "{what} not sorted or not unique"),
            Error::Path(p) => write!(f, "bad path {p:?}"),
            Error::Sizes => write!(f, "the payload's length disagrees with the sizes"),
        }
    }
}

impl std::error::Error for Error {}

impl From<json::Error> for Error {
    fn from(e: json::Error) -> Self {
        Error::Json(e)
    }
}

/// Splits a body into its JSON line (parsed) and its payload.
pub fn split_body(body: &[u8], max_line: usize) -> Result<(Value, &[u8]), Error> {
    let window = &body[..body.len().min(max_line + 1)];
    let end = window
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Error::NoLine)?;
    let value = json::parse(&body[..end])?;
    Ok((value, &body[end + 1..]))
}

fn string(v: &Value, what: &'static str) -> Result<String, Error> {
    v.as_str().map(str::to_string).ok_or(Error::Shape(what))
}

fn path(v: &Value, what: &'static str) -> Result<String, Error> {
    let p = string(v, what)?;
    if p.len() > MAX_PATH || !paths::is_normal(&p) {
        return Err(Error::Path(p));
    }
    Ok(p)
}

fn digest(v: &Value) -> Result<[u8; 32], Error> {
    v.as_str()
        .and_then(sha256::parse_hex)
        .ok_or(Error::Shape("sha256 is not 64 lowercase hex digits"))
}

fn uint(v: &Value, what: &'static str) -> Result<u64, Error> {
    v.as_u64().ok_or(Error::Shape(what))
}

fn expect_kind(v: &Value, kind: &str) -> Result<(), Error> {
    if v.as_str() == Some(kind) {
        Ok(())
    } else {
        Err(Error::Shape("unexpected kind"))
    }
}

/// A regular file with its digest: a job's input or a result's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub sha256: [u8; 32],
    pub size: u64,
    pub exec: bool,
}

impl FileEntry {
    fn to_value(&self) -> Value {
        Value::object([
            ("exec", Value::Bool(self.exec)),
            ("path", Value::str(self.path.clone())),
            ("sha256", Value::str(sha256::hex(&self.sha256))),
            ("size", Value::uint(self.size)),
        ])
    }

    fn from_value(v: &Value) -> Result<FileEntry, Error> {
        let [exec, p, sha, size] = v.exact(["exec", "path", "sha256", "size"])?;
        Ok(FileEntry {
            exec: exec
                .as_bool()
                .ok_or(Error::Shape("exec is not a boolean"))?,
            path: path(p, "path is not a string")?,
            sha256: digest(sha)?,
            size: uint(size, "size is not an unsigned integer")?,
        })
    }
}

/// Parses a list of file entries, sorted by path and unique.
fn file_list(v: &Value, max: usize) -> Result<Vec<FileEntry>, Error> {
    let items = v
        .as_array()
        .ok_or(Error::Shape("expected a list of files"))?;
    if items.len() > max {
        return Err(Error::Shape("too many files"));
    }
    let files = items
        .iter()
        .map(FileEntry::from_value)
        .collect::<Result<Vec<_>, _>>()?;
    if files.windows(2).any(|w| w[0].path >= w[1].path) {
        return Err(Error::Order("files"));
    }
    Ok(files)
}

/// A `job` request: one rustc invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    /// Sorted by path, unique.
    pub inputs: Vec<FileEntry>,
    pub outputs: Vec<String>,
}

impl Job {
    /// The request body: the JSON line (no payload).
    pub fn to_body(&self) -> Vec<u8> {
        Value::object([
            (
                "argv",
                Value::Array(self.argv.iter().map(|a| Value::str(a.clone())).collect()),
            ),
            ("cwd", Value::str(self.cwd.clone())),
            (
                "env",
                Value::object(
                    self.env
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::str(v.clone()))),
                ),
            ),
            (
                "inputs",
                Value::Array(self.inputs.iter().map(FileEntry::to_value).collect()),
            ),
            ("kind", Value::str("job")),
            (
                "outputs",
                Value::Array(self.outputs.iter().map(|o| Value::str(o.clone())).collect()),
            ),
            ("v", Value::uint(VERSION)),
        ])
        .to_line()
    }

    /// Parses a job request body (exactly one JSON line, no payload), as `run-job` reads it.
    pub fn parse(body: &[u8]) -> Result<Job, Error> {
        let (value, payload) = split_body(body, MAX_LINE)?;
        if !payload.is_empty() {
            return Err(Error::Shape("a job has no payload"));
        }
        let [argv, cwd, env, inputs, kind, outputs, v] =
            value.exact(["argv", "cwd", "env", "inputs", "kind", "outputs", "v"])?;
        expect_kind(kind, "job")?;
        if v.as_u64() != Some(VERSION) {
            return Err(Error::Shape("unknown version"));
        }
        let argv = argv
            .as_array()
            .ok_or(Error::Shape("argv is not a list"))?
            .iter()
            .map(|a| string(a, "argv holds a non-string"))
            .collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) || argv[0].is_empty() {
            return Err(Error::Shape("argv is empty or holds NUL"));
        }
        let cwd = path(cwd, "cwd is not a string")?;
        let mut env_map = BTreeMap::new();
        for (k, v) in env
            .as_object()
            .ok_or(Error::Shape("env is not an object"))?
        {
            let v = string(v, "env holds a non-string")?;
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::Shape("env holds a bad name or value"));
            }
            env_map.insert(k.clone(), v);
        }
        let inputs = file_list(inputs, usize::MAX)?;
        let outputs = outputs
            .as_array()
            .ok_or(Error::Shape("outputs is not a list"))?
            .iter()
            .map(|o| path(o, "outputs holds a non-string"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Job {
            argv,
            cwd,
            env: env_map,
            inputs,
            outputs,
        })
    }
}

/// A `blob` request: bytes `offset..offset + chunk.len()` of the input whose digest is
/// `sha256` and whose size is `size`.
pub fn blob_body(sha256: &[u8; 32], offset: u64, size: u64, chunk: &[u8]) -> Vec<u8> {
    let mut body = Value::object([
        ("kind", Value::str("blob")),
        ("offset", Value::uint(offset)),
        ("sha256", Value::str(sha256::hex(sha256))),
        ("size", Value::uint(size)),
        ("v", Value::uint(VERSION)),
    ])
    .to_line();
    body.extend_from_slice(chunk);
    body
}

/// A `result` response's JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultHead {
    pub exit: u8,
    /// Sorted by path, unique.
    pub files: Vec<FileEntry>,
    pub stdout: u64,
    pub stderr: u64,
}

impl ResultHead {
    /// The JSON line (the payload follows: stdout, stderr, then each file's bytes).
    pub fn to_line(&self) -> Vec<u8> {
        Value::object([
            ("exit", Value::uint(u64::from(self.exit))),
            (
                "files",
                Value::Array(self.files.iter().map(FileEntry::to_value).collect()),
            ),
            ("kind", Value::str("result")),
            ("stderr", Value::uint(self.stderr)),
            ("stdout", Value::uint(self.stdout)),
        ])
        .to_line()
    }

    /// The payload's length these sizes imply (`None` on overflow).
    pub fn payload_len(&self) -> Option<u64> {
        let mut total = self.stdout.checked_add(self.stderr)?;
        for f in &self.files {
            total = total.checked_add(f.size)?;
        }
        Some(total)
    }
}

/// A `meta` body's JSON line: what a job had written when rustc announced its metadata
/// (docs/parallel-builds.md, "Pipelining"): its standard error so far and the `.rmeta`
/// (with the dep-info file rustc wrote before it). A sibling writes it without `of`; the
/// host hands it to the parent with `of`, the tag of the job's request, which the wrapper
/// names in its `rest` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaHead {
    /// Sorted by path, unique.
    pub files: Vec<FileEntry>,
    /// The job request's tag (`None` in a sibling's record).
    pub of: Option<u64>,
    pub stderr: u64,
}

impl MetaHead {
    /// The JSON line (the payload follows: standard error so far, then each file's bytes).
    pub fn to_line(&self) -> Vec<u8> {
        let mut pairs = vec![
            (
                "files",
                Value::Array(self.files.iter().map(FileEntry::to_value).collect()),
            ),
            ("kind", Value::str("meta")),
        ];
        if let Some(of) = self.of {
            pairs.push(("of", Value::uint(of)));
        }
        pairs.push(("stderr", Value::uint(self.stderr)));
        Value::object(pairs).to_line()
    }

    /// The payload's length these sizes imply (`None` on overflow).
    pub fn payload_len(&self) -> Option<u64> {
        let mut total = self.stderr;
        for f in &self.files {
            total = total.checked_add(f.size)?;
        }
        Some(total)
    }
}

/// A `rest` request: the result of the job whose metadata came in a `meta` response
/// tagged `of`.
pub fn rest_body(of: u64) -> Vec<u8> {
    Value::object([
        ("kind", Value::str("rest")),
        ("of", Value::uint(of)),
        ("v", Value::uint(VERSION)),
    ])
    .to_line()
}

/// A response from the host, structurally checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// The digests of inputs the host lacks (sorted, unique, not empty).
    Missing(Vec<[u8; 32]>),
    /// The job ran; `payload`'s length equals the sizes' sum.
    Result {
        head: ResultHead,
        payload: &'a [u8],
    },
    /// The job's metadata is ready; its result follows a `rest` request naming `of`.
    Meta {
        head: MetaHead,
        of: u64,
        payload: &'a [u8],
    },
    Ok,
    /// The host will not run the job; the message is untrusted text.
    Refused(String),
}

/// Parses a response body.
pub fn parse_response(body: &[u8]) -> Result<Response<'_>, Error> {
    let (value, payload) = split_body(body, MAX_LINE)?;
    let kind = value
        .as_object()
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
        .ok_or(Error::Shape("no kind"))?;
    let no_payload = |r: Response<'static>| {
        if payload.is_empty() {
            Ok(r)
        } else {
            Err(Error::Sizes)
        }
    };
    match kind {
        "ok" => {
            value.exact(["kind"])?;
            no_payload(Response::Ok)
        }
        "error" => {
            let [_, message] = value.exact(["kind", "message"])?;
            no_payload(Response::Refused(string(
                message,
                "message is not a string",
            )?))
        }
        "missing" => {
            let [_, list] = value.exact(["kind", "sha256"])?;
            let list = list
                .as_array()
                .ok_or(Error::Shape("sha256 is not a list"))?
                .iter()
                .map(digest)
                .collect::<Result<Vec<_>, _>>()?;
            if list.is_empty() {
                return Err(Error::Shape("missing names no digest"));
            }
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::Order("missing digests"));
            }
            no_payload(Response::Missing(list))
        }
        "result" => {
            let [exit, files, _, stderr, stdout] =
                value.exact(["exit", "files", "kind", "stderr", "stdout"])?;
            let exit = exit
                .as_u64()
                .and_then(|e| u8::try_from(e).ok())
                .ok_or(Error::Shape("exit is not 0..=255"))?;
            let head = ResultHead {
                exit,
                files: file_list(files, MAX_FILES)?,
                stdout: uint(stdout, "stdout is not a size")?,
                stderr: uint(stderr, "stderr is not a size")?,
            };
            if head.payload_len() != Some(payload.len() as u64) {
                return Err(Error::Sizes);
            }
            Ok(Response::Result { head, payload })
        }
        "meta" => {
            let [files, _, of, stderr] = value.exact(["files", "kind", "of", "stderr"])?;
            let of = uint(of, "of is not a tag")?;
            let head = MetaHead {
                files: file_list(files, MAX_FILES)?,
                of: Some(of),
                stderr: uint(stderr, "stderr is not a size")?,
            };
            if head.payload_len() != Some(payload.len() as u64) {
                return Err(Error::Sizes);
            }
            Ok(Response::Meta { head, of, payload })
        }
        _ => Err(Error::Shape("unknown kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, data: &[u8], exec: bool) -> FileEntry {
        FileEntry {
            path: path.to_string(),
            sha256: sha256::digest(data),
            size: data.len() as u64,
            exec,
        }
    }

    #[test]
    fn job_round_trip() {
        let job = Job {
            argv: vec!["rustc".into(), "--cfg".into(), "feature=\"std\"".into()],
            cwd: "/build/vendor/serde-1.0.219".into(),
            env: [("CARGO_PKG_NAME".to_string(), "serde".to_string())].into(),
            inputs: vec![
                entry(
                    "/build/vendor/serde-1.0.219/build.rs",
                    b"fn main(){}",
                    false,
                ),
                entry("/build/vendor/serde-1.0.219/src/lib.rs", b"//", false),
            ],
            outputs: vec!["/build/src/target/release/deps".into()],
        };
        let body = job.to_body();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.starts_with("{\"argv\":[\"rustc\",\"--cfg\",\"feature=\\\"std\\\"\"],\"cwd\":\"/build/vendor/serde-1.0.219\",\"env\":{\"CARGO_PKG_NAME\":\"serde\"},\"inputs\":[{\"exec\":false,\"path\":\"/build/vendor/serde-1.0.219/build.rs\",\"sha256\":\""));
        assert!(text.ends_with(
            "\"kind\":\"job\",\"outputs\":[\"/build/src/target/release/deps\"],\"v\":1}\n"
        ));
        assert_eq!(Job::parse(&body).unwrap(), job);
        // Strictness of the parser on hostile variants.
        let mut extra = body.clone();
        extra.push(b'x');
        assert!(Job::parse(&extra).is_err(), "payload after a job");
        assert!(Job::parse(&body[..body.len() - 1]).is_err(), "no newline");
        let swapped = text.replace("build.rs", "zzz.rs");
        assert!(matches!(
            Job::parse(swapped.as_bytes()),
            Err(Error::Order(_))
        ));
        let dotdot = text.replace("/build/vendor/serde-1.0.219\",\"env", "/build/../x\",\"env");
        assert!(matches!(Job::parse(dotdot.as_bytes()), Err(Error::Path(_))));
        let v2 = text.replace("\"v\":1", "\"v\":2");
        assert!(Job::parse(v2.as_bytes()).is_err());
        let spaced = text.replacen(',', ", ", 1);
        assert!(Job::parse(spaced.as_bytes()).is_err());
    }

    #[test]
    fn blob_body_shape() {
        let sha = sha256::digest(b"abc");
        let body = blob_body(&sha, 0, 3, b"abc");
        let (value, payload) = split_body(&body, MAX_LINE).unwrap();
        assert_eq!(payload, b"abc");
        assert_eq!(
            value.to_text(),
            format!(
                "{{\"kind\":\"blob\",\"offset\":0,\"sha256\":\"{}\",\"size\":3,\"v\":1}}",
                sha256::hex(&sha)
            )
        );
    }

    #[test]
    fn responses_parse() {
        assert_eq!(
            parse_response(b"{\"kind\":\"ok\"}\n").unwrap(),
            Response::Ok
        );
        assert_eq!(
            parse_response(b"{\"kind\":\"error\",\"message\":\"no\"}\n").unwrap(),
            Response::Refused("no".into())
        );
        let (a, b) = (sha256::digest(b"a"), sha256::digest(b"b"));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let missing = format!(
            "{{\"kind\":\"missing\",\"sha256\":[\"{}\",\"{}\"]}}\n",
            sha256::hex(&lo),
            sha256::hex(&hi)
        );
        assert_eq!(
            parse_response(missing.as_bytes()).unwrap(),
            Response::Missing(vec![lo, hi])
        );
        let head = ResultHead {
            exit: 1,
            files: vec![entry("/o/a", b"A", false), entry("/o/b", b"BB", true)],
            stdout: 2,
            stderr: 1,
        };
        let mut body = head.to_line();
        body.extend_from_slice(b"oueABB");
        match parse_response(&body).unwrap() {
            Response::Result { head: h, payload } => {
                assert_eq!(h, head);
                assert_eq!(payload, b"oueABB");
            }
            other => panic!("{other:?}"),
        }
        let meta = MetaHead {
            files: vec![
                entry("/o/a.d", b"D", false),
                entry("/o/liba.rmeta", b"MM", false),
            ],
            of: Some(7),
            stderr: 3,
        };
        let mut body = meta.to_line();
        assert!(body.starts_with(b"{\"files\":["), "keys sorted");
        body.extend_from_slice(b"errDMM");
        match parse_response(&body).unwrap() {
            Response::Meta { head, of, payload } => {
                assert_eq!((head, of, payload), (meta.clone(), 7, &b"errDMM"[..]));
            }
            other => panic!("{other:?}"),
        }
        // A sibling's record has no `of`; one the parent gets without it is refused, and
        // so is a payload of the wrong size.
        let mut record = MetaHead { of: None, ..meta }.to_line();
        record.extend_from_slice(b"errDMM");
        assert!(parse_response(&record).is_err());
        body.push(b'x');
        assert_eq!(parse_response(&body), Err(Error::Sizes));
        assert_eq!(rest_body(7), b"{\"kind\":\"rest\",\"of\":7,\"v\":1}\n");
    }

    #[test]
    fn hostile_responses_are_refused() {
        let (a, b) = (sha256::digest(b"a"), sha256::digest(b"b"));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let head = ResultHead {
            exit: 0,
            files: vec![entry("/o/a", b"A", false)],
            stdout: 0,
            stderr: 0,
        };
        let line = String::from_utf8(head.to_line()).unwrap();
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{\"kind\":\"ok\"}".to_vec(),
            b"{\"kind\":\"ok\"}\nx".to_vec(),
            b"{\"kind\":\"ok\",\"x\":1}\n".to_vec(),
            b"{\"kind\":\"bogus\"}\n".to_vec(),
            b"{\"kind\":1}\n".to_vec(),
            b"[]\n".to_vec(),
            b"{\"kind\":\"missing\",\"sha256\":[]}\n".to_vec(),
            format!(
                "{{\"kind\":\"missing\",\"sha256\":[\"{}\",\"{}\"]}}\n",
                sha256::hex(&hi),
                sha256::hex(&lo)
            )
            .into_bytes(),
            format!(
                "{{\"kind\":\"missing\",\"sha256\":[\"{}\",\"{}\"]}}\n",
                sha256::hex(&lo),
                sha256::hex(&lo)
            )
            .into_bytes(),
            format!(
                "{{\"kind\":\"missing\",\"sha256\":[\"{}\"]}}\n",
                sha256::hex(&lo).to_uppercase()
            )
            .into_bytes(),
            // Sizes disagreeing with the payload, both ways.
            line.clone().into_bytes(),
            format!("{line}AB").into_bytes(),
            // Exit out of range, negative.
            format!("{line}A")
                .replace("\"exit\":0", "\"exit\":256")
                .into_bytes(),
            format!("{line}A")
                .replace("\"exit\":0", "\"exit\":-1")
                .into_bytes(),
            // A relative or unnormalised path.
            format!("{line}A").replace("/o/a", "o/a").into_bytes(),
            format!("{line}A").replace("/o/a", "/o/../a").into_bytes(),
            // A huge size (overflow when summed).
            format!("{line}A")
                .replace("\"stdout\":0", "\"stdout\":18446744073709551615")
                .into_bytes(),
        ];
        for body in &bad {
            assert!(
                parse_response(body).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut good = line.into_bytes();
        good.push(b'A');
        assert!(parse_response(&good).is_ok());
    }
}
