//! A small client of the Kubo RPC API (`/api/v0/...`), which Kubo and js-ipfs both serve.
//!
//! Only what the mirror needs: `add` (always with the parameters that make the node's CIDs
//! equal to [`crate::cid`]'s), `cat`, `block/get`, `pin/add`, `dag/import` and `dag/export`.
//! Every call is a POST (the RPC API refuses GET); uploads are `multipart/form-data` streamed
//! from disk with an exact `Content-Length`. A call that fails in a way that may pass
//! (connection refused or reset, a timeout, HTTP 429/502/503/504) is retried a bounded number
//! of times with a growing pause; an answer that says no (HTTP 4xx/500 with the node's
//! `Message`) is reported at once.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cid::Cid;

/// The query parameters of every `add`: together they make the node name a file exactly as
/// [`crate::cid`] does (docs/design.md, "Content IDs").
pub const ADD_PARAMS: [(&str, &str); 4] = [
    ("cid-version", "1"),
    ("raw-leaves", "true"),
    ("chunker", "size-262144"),
    ("cid-base", "base32"),
];

/// Errors of talking to an IPFS node.
#[derive(Debug, thiserror::Error)]
pub enum KuboError {
    /// `{0}` is not an IPFS API URL (expected http://HOST:PORT, e.g. http://127.0.0.1:5001)
    #[error(
        "`{0}` is not an IPFS API URL (expected http://HOST:PORT, e.g. http://127.0.0.1:5001)"
    )]
    InvalidUrl(String),
    /// cannot reach the IPFS node at {url} (tried {attempts} times)
    #[error("cannot reach the IPFS node at {url} (tried {attempts} times)")]
    Unreachable {
        /// The URL fetched.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        #[source]
        /// The underlying error.
        source: Box<ureq::Transport>,
    },
    /// the IPFS node refused `{endpoint}` with HTTP {status}: {message}
    #[error("the IPFS node refused `{endpoint}` with HTTP {status}: {message}")]
    Refused {
        /// The RPC endpoint called.
        endpoint: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The message the node sent.
        message: String,
    },
    /// the IPFS node's answer to `{endpoint}` is not what the Kubo RPC API returns: {detail}
    #[error(
        "the IPFS node's answer to `{endpoint}` is not what the Kubo RPC API returns: {detail}"
    )]
    Malformed {
        /// The RPC endpoint called.
        endpoint: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// reading the IPFS node's answer to `{endpoint}` failed (tried {attempts} times)
    #[error("reading the IPFS node's answer to `{endpoint}` failed (tried {attempts} times)")]
    Read {
        /// The RPC endpoint called.
        endpoint: &'static str,
        /// How many attempts were made.
        attempts: u32,
        #[source]
        /// The underlying error.
        source: io::Error,
    },
    /// the IPFS node's answer to `{endpoint}` is larger than {limit} bytes
    #[error("the IPFS node's answer to `{endpoint}` is larger than {limit} bytes")]
    TooLarge {
        /// The RPC endpoint called.
        endpoint: &'static str,
        /// The cap, in bytes.
        limit: u64,
    },
    /// cannot read {path} to upload it
    #[error("cannot read {path} to upload it")]
    Upload {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: io::Error,
    },
    /// cannot write the IPFS node's answer to `{endpoint}` to disk
    #[error("cannot write the IPFS node's answer to `{endpoint}` to disk")]
    Write {
        /// The RPC endpoint called.
        endpoint: &'static str,
        #[source]
        /// The underlying error.
        source: io::Error,
    },
}

/// How patient the client is.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on opening a TCP connection.
    pub connect_timeout: Duration,
    /// Bound on each socket read or write (not on a whole transfer, which may be large).
    pub io_timeout: Duration,
    /// Sent as the node-side `timeout` of calls that may wait for blocks the node lacks;
    /// without it a node with no peers waits for ever on a missing CID.
    pub node_timeout: Duration,
    /// Bound on one whole request (sending, waiting and reading the answer): a node that
    /// trickles bytes cannot stall a command for longer.
    pub deadline: Duration,
    /// Tries per call, the first included (at least 1).
    pub attempts: u32,
    /// Pause before the first retry; doubled before each further one.
    pub retry_pause: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(120),
            node_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(10 * 60),
            attempts: 4,
            retry_pause: Duration::from_millis(250),
        }
    }
}

/// What `add` reports for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The name the node reports.
    pub name: String,
    /// The node's CID of the file, as it printed it (untrusted text: see [`Added::cid`]).
    pub hash: String,
    /// Size of the DAG (file bytes plus node overhead), as the node reported it.
    pub size: u64,
}

impl Added {
    /// The node's CID as a [`Cid`]; `None` when the text is not a CID cmbuild makes (another
    /// version, base or hash function), which never equals a mirror blob's name.
    pub fn cid(&self) -> Option<Cid> {
        self.hash.parse().ok()
    }
}

/// One root that `dag/import` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRoot {
    /// The CID the node reports, as text (untrusted; parse it to compare).
    pub cid: String,
    /// Empty when the root was pinned.
    pub pin_error: String,
}

/// A Kubo RPC API endpoint, e.g. `http://127.0.0.1:5001`.
pub struct Kubo {
    base: String,
    agent: ureq::Agent,
    options: Options,
}

impl fmt::Debug for Kubo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubo").field("base", &self.base).finish()
    }
}

/// Largest single block a node may return: IPFS itself refuses blocks above 1 MiB, so a
/// bigger answer is a lie or a mistake, and must not fill memory.
const MAX_BLOCK: u64 = 2 * 1024 * 1024;
/// Bound on the JSON answers of `add`, `pin/add` and `dag/import`.
const MAX_JSON: u64 = 16 * 1024 * 1024;

/// How one try of a call went wrong, before deciding whether to try again.
enum Failure {
    Transient(Box<KuboError>),
    Final(KuboError),
}

impl Kubo {
    /// A client of the node whose RPC API listens at `url` (`http://HOST:PORT`, with or
    /// without a trailing `/` or `/api/v0`).
    pub fn new(url: &str) -> Result<Kubo, KuboError> {
        Kubo::with_options(url, Options::default())
    }

    /// A client of the Kubo RPC API at `url` with these options.
    pub fn with_options(url: &str, options: Options) -> Result<Kubo, KuboError> {
        let trimmed = url.trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/api/v0").unwrap_or(trimmed);
        let host = trimmed
            .strip_prefix("http://")
            .ok_or_else(|| KuboError::InvalidUrl(url.to_owned()))?;
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(KuboError::InvalidUrl(url.to_owned()));
        }
        // No proxy from the environment: the API is a local service, and a proxy would see
        // every blob.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(options.connect_timeout)
            .timeout_read(options.io_timeout)
            .timeout_write(options.io_timeout)
            .timeout(options.deadline)
            .build();
        Ok(Kubo {
            base: trimmed.to_owned(),
            agent,
            options: Options {
                attempts: options.attempts.max(1),
                ..options
            },
        })
    }

    /// The API URL this client talks to.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Adds a file (unpinned: pin it with [`Kubo::pin_add`] once its CID checks out).
    pub fn add_file(&self, path: &Path) -> Result<Added, KuboError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_owned());
        let len = std::fs::metadata(path)
            .map_err(|source| upload_error(path, source))?
            .len();
        self.add(&name, len, &mut || {
            File::open(path)
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|source| upload_error(path, source))
        })
    }

    /// Adds bytes held in memory (unpinned).
    pub fn add_bytes(&self, name: &str, data: &[u8]) -> Result<Added, KuboError> {
        self.add(name, data.len() as u64, &mut || {
            Ok(Box::new(Cursor::new(data)) as Box<dyn Read + '_>)
        })
    }

    fn add<'a>(
        &self,
        name: &str,
        len: u64,
        open: &mut dyn FnMut() -> Result<Box<dyn Read + 'a>, KuboError>,
    ) -> Result<Added, KuboError> {
        const ENDPOINT: &str = "add";
        let mut query: Vec<(&str, String)> =
            ADD_PARAMS.iter().map(|&(k, v)| (k, v.to_owned())).collect();
        query.push(("pin", "false".to_owned()));
        query.push(("progress", "false".to_owned()));
        let body = self.call_upload(ENDPOINT, &query, name, len, open)?;
        let mut last = None;
        for value in parse_ndjson(ENDPOINT, &body)? {
            let entry: AddEntry = serde_json::from_value(value)
                .map_err(|err| malformed(ENDPOINT, format!("an entry does not parse: {err}")))?;
            if let Some(hash) = entry.hash {
                last = Some(Added {
                    name: entry.name.unwrap_or_default(),
                    hash,
                    size: match entry.size {
                        Some(size) => size.get().ok_or_else(|| {
                            malformed(ENDPOINT, "`Size` is not a whole number".to_owned())
                        })?,
                        None => 0,
                    },
                });
            }
        }
        // With one file and no wrapping directory, the file is the last (and only) entry.
        last.ok_or_else(|| malformed(ENDPOINT, "no entry names a Hash".to_owned()))
    }

    /// Pins `cid` (recursively) on the node.
    pub fn pin_add(&self, cid: &Cid) -> Result<(), KuboError> {
        const ENDPOINT: &str = "pin/add";
        let query = self.cid_query(cid, true);
        let body = self.call_to_vec(ENDPOINT, &query, MAX_JSON)?;
        let answer: PinAnswer = serde_json::from_slice(&body)
            .map_err(|err| malformed(ENDPOINT, format!("{err}: {}", preview(&body))))?;
        if answer.pins.is_empty() {
            return Err(malformed(ENDPOINT, "it lists no pin".to_owned()));
        }
        Ok(())
    }

    /// The file named by `cid`, in memory. Nothing is verified here: callers rehash.
    pub fn cat(&self, cid: &Cid, limit: u64) -> Result<Vec<u8>, KuboError> {
        let query = self.cid_query(cid, true);
        self.call_to_vec("cat", &query, limit)
    }

    /// Starts streaming the file named by `cid`. Only getting the answer started is retried;
    /// a caller that sees the stream break retries the whole call. Nothing is verified here:
    /// callers rehash.
    pub fn cat_reader(&self, cid: &Cid) -> Result<impl Read + Send, KuboError> {
        let query = self.cid_query(cid, true);
        let response = self.retry(|tries| self.send("cat", &query, tries))?;
        Ok(response.into_reader())
    }

    /// The raw bytes of one block.
    pub fn block_get(&self, cid: &Cid) -> Result<Vec<u8>, KuboError> {
        let query = self.cid_query(cid, true);
        self.call_to_vec("block/get", &query, MAX_BLOCK)
    }

    /// Writes the DAG under `cid` as a CARv1 into `file` (emptied first), returning its length.
    pub fn dag_export(&self, cid: &Cid, file: &mut File) -> Result<u64, KuboError> {
        let query = self.cid_query(cid, false);
        self.call_to_file("dag/export", &query, file)
    }

    /// Imports a CAR file and pins its roots; returns the roots the node reports.
    pub fn dag_import(&self, car: &Path) -> Result<Vec<ImportedRoot>, KuboError> {
        const ENDPOINT: &str = "dag/import";
        let len = std::fs::metadata(car)
            .map_err(|source| upload_error(car, source))?
            .len();
        let query = [("pin-roots", "true".to_owned())];
        let body = self.call_upload(ENDPOINT, &query, "import.car", len, &mut || {
            File::open(car)
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|source| upload_error(car, source))
        })?;
        let mut roots = Vec::new();
        for value in parse_ndjson(ENDPOINT, &body)? {
            let entry: ImportEntry = serde_json::from_value(value)
                .map_err(|err| malformed(ENDPOINT, format!("an entry does not parse: {err}")))?;
            // Kubo may add a `Stats` entry; only `Root` entries name roots.
            if let Some(root) = entry.root {
                roots.push(ImportedRoot {
                    cid: root.cid.link,
                    pin_error: root.pin_error_msg.unwrap_or_default(),
                });
            }
        }
        Ok(roots)
    }

    fn cid_query(&self, cid: &Cid, with_base: bool) -> Vec<(&'static str, String)> {
        let mut query = vec![
            ("arg", cid.to_string()),
            (
                "timeout",
                format!("{}ms", self.options.node_timeout.as_millis()),
            ),
        ];
        if with_base {
            query.push(("cid-base", "base32".to_owned()));
        }
        query
    }

    fn request(&self, endpoint: &str, query: &[(&str, String)]) -> ureq::Request {
        let mut request = self.agent.post(&format!("{}/api/v0/{endpoint}", self.base));
        for (key, value) in query {
            request = request.query(key, value);
        }
        request
    }

    /// Runs `attempt` up to `options.attempts` times while it fails transiently.
    fn retry<T>(&self, mut attempt: impl FnMut(u32) -> Result<T, Failure>) -> Result<T, KuboError> {
        let mut pause = self.options.retry_pause;
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt(tries) {
                Ok(value) => return Ok(value),
                Err(Failure::Final(err)) => return Err(err),
                Err(Failure::Transient(err)) if tries >= self.options.attempts => return Err(*err),
                Err(Failure::Transient(_)) => {
                    thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                }
            }
        }
    }

    /// Sends one POST with no body, classifying the failure.
    fn send(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        tries: u32,
    ) -> Result<ureq::Response, Failure> {
        let result = self.request(endpoint, query).call();
        self.classify(endpoint, tries, result)
    }

    fn classify(
        &self,
        endpoint: &'static str,
        tries: u32,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, Failure> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let err = KuboError::Refused {
                    endpoint,
                    status,
                    message: error_message(response),
                };
                if matches!(status, 429 | 502 | 503 | 504) {
                    Err(Failure::Transient(Box::new(err)))
                } else {
                    Err(Failure::Final(err))
                }
            }
            Err(ureq::Error::Transport(transport)) => {
                let transient = matches!(
                    transport.kind(),
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
                );
                let err = KuboError::Unreachable {
                    url: self.base.clone(),
                    attempts: tries,
                    source: Box::new(transport),
                };
                if transient {
                    Err(Failure::Transient(Box::new(err)))
                } else {
                    Err(Failure::Final(err))
                }
            }
        }
    }

    fn call_to_vec(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        limit: u64,
    ) -> Result<Vec<u8>, KuboError> {
        self.retry(|tries| {
            let response = self.send(endpoint, query, tries)?;
            read_limited(endpoint, tries, response, limit)
        })
    }

    fn call_to_file(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        file: &mut File,
    ) -> Result<u64, KuboError> {
        self.retry(|tries| {
            let response = self.send(endpoint, query, tries)?;
            rewind(file).map_err(|source| Failure::Final(KuboError::Write { endpoint, source }))?;
            let mut reader = response.into_reader();
            copy_answer(endpoint, tries, &mut reader, file)
        })
    }

    /// POSTs one file as `multipart/form-data` (field `file`), re-opening it for each try.
    fn call_upload<'a>(
        &self,
        endpoint: &'static str,
        query: &[(&str, String)],
        name: &str,
        len: u64,
        open: &mut dyn FnMut() -> Result<Box<dyn Read + 'a>, KuboError>,
    ) -> Result<Vec<u8>, KuboError> {
        let boundary = make_boundary();
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
            sanitize_filename(name)
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let total = head.len() as u64 + len + tail.len() as u64;
        self.retry(|tries| {
            let content = open().map_err(Failure::Final)?;
            // A file that changes size under us would make the Content-Length a lie.
            let body = Cursor::new(head.as_bytes())
                .chain(content.take(len))
                .chain(Cursor::new(tail.as_bytes()));
            let result = self
                .request(endpoint, query)
                .set(
                    "Content-Type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )
                .set("Content-Length", &total.to_string())
                .send(body);
            let response = self.classify(endpoint, tries, result)?;
            read_limited(endpoint, tries, response, MAX_JSON)
        })
    }
}

fn upload_error(path: &Path, source: io::Error) -> KuboError {
    KuboError::Upload {
        path: path.to_owned(),
        source,
    }
}

fn malformed(endpoint: &'static str, detail: String) -> KuboError {
    KuboError::Malformed { endpoint, detail }
}

fn rewind(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Reads a whole answer, refusing one larger than `limit`; a broken stream may be retried.
fn read_limited(
    endpoint: &'static str,
    tries: u32,
    response: ureq::Response,
    limit: u64,
) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|source| {
            Failure::Transient(Box::new(KuboError::Read {
                endpoint,
                attempts: tries,
                source,
            }))
        })?;
    if body.len() as u64 > limit {
        return Err(Failure::Final(KuboError::TooLarge { endpoint, limit }));
    }
    Ok(body)
}

/// Copies an answer to disk, telling read failures (retryable) from write failures (not).
fn copy_answer(
    endpoint: &'static str,
    tries: u32,
    reader: &mut dyn Read,
    file: &mut File,
) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Failure::Transient(Box::new(KuboError::Read {
                    endpoint,
                    attempts: tries,
                    source,
                })))
            }
        };
        file.write_all(&buf[..n])
            .map_err(|source| Failure::Final(KuboError::Write { endpoint, source }))?;
        total += n as u64;
    }
    file.flush()
        .map_err(|source| Failure::Final(KuboError::Write { endpoint, source }))?;
    Ok(total)
}

/// The node's own explanation of a refusal: `Message` of its JSON error, else the body.
fn error_message(response: ureq::Response) -> String {
    let mut body = Vec::new();
    // An unreadable error body still leaves the status code to report.
    let _ = response
        .into_reader()
        .take(64 * 1024)
        .read_to_end(&mut body);
    #[derive(Deserialize)]
    struct ErrorAnswer {
        #[serde(rename = "Message")]
        message: String,
    }
    match serde_json::from_slice::<ErrorAnswer>(&body) {
        Ok(answer) => answer.message,
        Err(_) => preview(&body),
    }
}

fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        "(empty answer)".to_owned()
    } else {
        text.to_owned()
    }
}

/// Parses newline-delimited JSON; an entry of `"Type": "error"` (how a streaming endpoint
/// reports a failure after it has already answered 200) becomes an error.
fn parse_ndjson(endpoint: &'static str, body: &[u8]) -> Result<Vec<serde_json::Value>, KuboError> {
    let mut values = Vec::new();
    for line in BufReader::new(body).lines() {
        let line = line.map_err(|err| malformed(endpoint, format!("not text: {err}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|err| malformed(endpoint, format!("{err}: {}", preview(line.as_bytes()))))?;
        if value.get("Type").and_then(|t| t.as_str()) == Some("error") {
            let message = value
                .get("Message")
                .and_then(|m| m.as_str())
                .unwrap_or("(no message)");
            return Err(KuboError::Refused {
                endpoint,
                status: 200,
                message: message.to_owned(),
            });
        }
        values.push(value);
    }
    Ok(values)
}

/// A multipart boundary that no uploaded file will contain by chance: 128 bits from the
/// clock, the process and a counter, hashed.
fn make_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(now.as_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    format!("cmbuild-{}", crate::hex::encode(&hasher.finalize()[..16]))
}

/// A name safe inside a quoted `filename="..."`; the node ignores it for a single file.
fn sanitize_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '/' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

/// Kubo prints sizes as strings (`"Size":"14"`), js-ipfs as numbers: take either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonU64 {
    Number(u64),
    Text(String),
}

impl JsonU64 {
    fn get(self) -> Option<u64> {
        match self {
            JsonU64::Number(n) => Some(n),
            JsonU64::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AddEntry {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Hash")]
    hash: Option<String>,
    #[serde(rename = "Size")]
    size: Option<JsonU64>,
}

#[derive(Debug, Deserialize)]
struct PinAnswer {
    #[serde(rename = "Pins", default)]
    pins: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ImportEntry {
    #[serde(rename = "Root")]
    root: Option<ImportRoot>,
}

#[derive(Debug, Deserialize)]
struct ImportRoot {
    #[serde(rename = "Cid")]
    cid: IpldLink,
    #[serde(rename = "PinErrorMsg")]
    pin_error_msg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpldLink {
    #[serde(rename = "/")]
    link: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::cid_of_bytes;
    use std::net::{TcpListener, TcpStream};
    use std::thread::JoinHandle;

    /// What the scripted server does with one connection.
    enum Reply {
        /// Close the connection without a word (a node restarting, a reset).
        Hangup,
        Answer(u16, &'static str),
    }

    struct Recorded {
        request_line: String,
        headers: String,
        body: Vec<u8>,
    }

    /// A one-shot HTTP server on 127.0.0.1 that answers connections in script order and
    /// records what it was sent.
    fn serve(script: Vec<Reply>) -> (String, JoinHandle<Vec<Recorded>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in script {
                let (mut stream, _) = listener.accept().unwrap();
                seen.push(read_request(&mut stream));
                if let Reply::Answer(status, body) = reply {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).unwrap();
                    stream.write_all(body.as_bytes()).unwrap();
                }
            }
            seen
        });
        (url, handle)
    }

    fn read_request(stream: &mut TcpStream) -> Recorded {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = value.trim().parse().unwrap();
            }
            headers.push_str(&line);
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        Recorded {
            request_line,
            headers,
            body,
        }
    }

    fn quick() -> Options {
        Options {
            retry_pause: Duration::from_millis(10),
            ..Options::default()
        }
    }

    #[test]
    fn add_sends_the_fixed_cid_parameters_as_multipart_and_reads_string_sizes() {
        let (url, server) = serve(vec![Reply::Answer(
            200,
            "{\"Name\":\"h.txt\",\"Hash\":\"bafkreif6ekkwbc3cq345vbpe5nekixuqqkiayv6qewdrwussmu63x3q4hm\",\"Size\":\"14\"}\n",
        )]);
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        let added = kubo.add_bytes("h.txt", b"hello cmbuild\n").unwrap();
        assert_eq!(added.hash, cid_of_bytes(b"hello cmbuild\n").to_string());
        assert_eq!(added.size, 14);

        let seen = server.join().unwrap();
        let request = &seen[0];
        assert!(request.request_line.starts_with("POST /api/v0/add?"));
        for (key, value) in ADD_PARAMS {
            assert!(
                request.request_line.contains(&format!("{key}={value}")),
                "{key} missing from {}",
                request.request_line
            );
        }
        let boundary = request
            .headers
            .split("boundary=")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        let body = String::from_utf8(request.body.clone()).unwrap();
        assert!(body.starts_with(&format!("--{boundary}\r\n")));
        assert!(body.contains("filename=\"h.txt\""));
        assert!(body.ends_with(&format!("\r\n\r\nhello cmbuild\n\r\n--{boundary}--\r\n")));
    }

    #[test]
    fn add_reads_numeric_sizes_and_refuses_a_non_numeric_one() {
        let (url, server) = serve(vec![
            Reply::Answer(
                200,
                "{\"Name\":\"a\",\"Hash\":\"bafkreia\",\"Size\":262249}\n",
            ),
            Reply::Answer(
                200,
                "{\"Name\":\"a\",\"Hash\":\"bafkreia\",\"Size\":\"many\"}\n",
            ),
        ]);
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        assert_eq!(kubo.add_bytes("a", b"x").unwrap().size, 262_249);
        assert!(matches!(
            kubo.add_bytes("a", b"x"),
            Err(KuboError::Malformed {
                endpoint: "add",
                ..
            })
        ));
        server.join().unwrap();
    }

    #[test]
    fn transient_failures_are_retried_then_succeed() {
        let (url, server) = serve(vec![
            Reply::Hangup,
            Reply::Answer(503, "{\"Message\":\"busy\"}"),
            Reply::Answer(200, "hello cmbuild\n"),
        ]);
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        let cid = cid_of_bytes(b"hello cmbuild\n");
        assert_eq!(kubo.cat(&cid, 1024).unwrap(), b"hello cmbuild\n");
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[2]
            .request_line
            .starts_with(&format!("POST /api/v0/cat?arg={cid}&")));
    }

    #[test]
    fn retries_are_bounded() {
        let (url, server) = serve(vec![Reply::Hangup, Reply::Hangup]);
        let options = Options {
            attempts: 2,
            ..quick()
        };
        let kubo = Kubo::with_options(&url, options).unwrap();
        let err = kubo.block_get(&cid_of_bytes(b"")).unwrap_err();
        assert!(
            matches!(err, KuboError::Unreachable { attempts: 2, .. }),
            "{err:?}"
        );
        assert_eq!(server.join().unwrap().len(), 2);
    }

    #[test]
    fn a_refusal_is_reported_with_the_node_message_and_not_retried() {
        let (url, server) = serve(vec![Reply::Answer(
            500,
            "{\"Message\":\"Failed to cat file: request timed out\",\"Code\":0,\"Type\":\"error\"}",
        )]);
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        let err = kubo.cat(&cid_of_bytes(b""), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the IPFS node refused `cat` with HTTP 500: Failed to cat file: request timed out"
        );
        assert_eq!(server.join().unwrap().len(), 1);
    }

    #[test]
    fn answers_over_the_limit_are_refused() {
        let (url, server) = serve(vec![Reply::Answer(200, "0123456789abcdef")]);
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        assert!(matches!(
            kubo.cat(&cid_of_bytes(b""), 8),
            Err(KuboError::TooLarge { limit: 8, .. })
        ));
        server.join().unwrap();
    }

    #[test]
    fn streamed_errors_and_import_roots_are_parsed() {
        let (url, server) = serve(vec![
            Reply::Answer(
                200,
                "{\"Root\":{\"Cid\":{\"/\":\"bafkreia\"},\"PinErrorMsg\":\"\"}}\n{\"Stats\":{\"BlockCount\":1}}\n",
            ),
            Reply::Answer(200, "{\"Message\":\"bad car\",\"Type\":\"error\"}\n"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let car = dir.path().join("x.car");
        std::fs::write(&car, b"not really a car").unwrap();
        let kubo = Kubo::with_options(&url, quick()).unwrap();
        assert_eq!(
            kubo.dag_import(&car).unwrap(),
            vec![ImportedRoot {
                cid: "bafkreia".to_owned(),
                pin_error: String::new()
            }]
        );
        let err = kubo.dag_import(&car).unwrap_err();
        assert!(err.to_string().ends_with(": bad car"), "{err}");
        let seen = server.join().unwrap();
        assert!(seen[0].body.windows(16).any(|w| w == b"not really a car"));
    }

    #[test]
    fn urls_are_checked_and_normalised() {
        assert_eq!(
            Kubo::new("http://127.0.0.1:5001/api/v0/").unwrap().url(),
            "http://127.0.0.1:5001"
        );
        for bad in ["127.0.0.1:5001", "https://x:1", "http://", "http://a/b"] {
            assert!(
                matches!(Kubo::new(bad), Err(KuboError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
