//! Downloads into the mirror, checked against a pinned sha256.
//!
//! The body streams into a staged blob (see [`crate::mirror::BlobWriter`]) while its sha256
//! and CID are computed; only when the sha256 equals the pinned one is the blob committed
//! under its CID. Anything else (a wrong hash, a broken connection, an HTTP error) leaves
//! nothing in the mirror. Transient failures (connection problems, timeouts, HTTP 408, 429
//! and 5xx, a body cut short) are retried with a growing pause.
//!
//! Every download is bounded: by the size the pin gives when there is one (a Debian
//! package's `Size`), else by [`Downloader::max_size`] (crates: [`MAX_CRATE_SIZE`]); at most
//! one byte past the cap is read before the download is refused, so a lying server cannot
//! make the mirror store more. Each attempt also has an overall deadline, so a server that
//! trickles a byte now and then cannot stall a command for ever.

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::mirror::{Mirror, MirrorError, Stored};
use crate::sha256::Sha256;

/// How often a transient failure is tried again, in all.
const DEFAULT_ATTEMPTS: u32 = 4;
/// The cap on a download whose size the pin does not give (crates.io's `.crate` files:
/// crates.io itself refuses uploads over 10 MiB).
pub const MAX_CRATE_SIZE: u64 = 64 << 20;
/// The default deadline of one attempt, body included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// Errors of a download.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// GET {url} answered HTTP {status} (after {attempts} attempt(s))
    #[error("GET {url} answered HTTP {status} (after {attempts} attempt(s))")]
    Status {
        /// The URL fetched.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// How many attempts were made.
        attempts: u32,
    },
    /// cannot reach {url} (after {attempts} attempt(s))
    #[error("cannot reach {url} (after {attempts} attempt(s))")]
    Network {
        /// The URL fetched.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        #[source]
        /// The underlying error.
        source: Box<ureq::Transport>,
    },
    /// the download of {url} broke off (after {attempts} attempt(s))
    #[error("the download of {url} broke off (after {attempts} attempt(s))")]
    Body {
        /// The URL fetched.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        #[source]
        /// The underlying error.
        source: io::Error,
    },
    /// sha256 mismatch for {url}: expected {expected}, got {actual}; nothing was stored
    #[error("sha256 mismatch for {url}: expected {expected}, got {actual}; nothing was stored")]
    Mismatch {
        /// The URL fetched.
        url: String,
        /// What was pinned or expected.
        expected: Sha256,
        /// What was found.
        actual: Sha256,
    },
    /// {url} sends more than the {limit} bytes expected; nothing was stored
    #[error("{url} sends more than the {limit} bytes expected; nothing was stored")]
    TooLarge {
        /// The URL fetched.
        url: String,
        /// The cap: the pinned size, or [`Downloader::max_size`].
        limit: u64,
    },
    /// GET {url} needs authentication (HTTP 401, challenge {challenge:?})
    #[error("GET {url} needs authentication (HTTP 401, challenge {challenge:?})")]
    Unauthorized {
        /// The URL fetched.
        url: String,
        /// The server's `WWW-Authenticate` header, if any.
        challenge: Option<String>,
    },
    /// {url} sent {actual} bytes where {expected} were declared; nothing was stored
    #[error("{url} sent {actual} bytes where {expected} were declared; nothing was stored")]
    SizeMismatch {
        /// The URL fetched.
        url: String,
        /// The declared size.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// the mirror refused the download of {url}
    #[error("the mirror refused the download of {url}")]
    Mirror {
        /// The URL fetched.
        url: String,
        #[source]
        /// The underlying error.
        source: MirrorError,
    },
}

/// One verified download: where from, with which request headers, and what it must be.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a> {
    /// The URL.
    pub url: &'a str,
    /// Extra request headers (`Accept`, `Authorization`).
    pub headers: &'a [(&'a str, &'a str)],
    /// The sha256 the bytes must have.
    pub sha256: &'a Sha256,
    /// How the size is bounded.
    pub size: SizeRule,
}

/// How the size of a download is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// At most this many bytes (a lock's size pin, or a cap).
    AtMost(u64),
    /// Exactly this many bytes (an OCI descriptor's size): more is refused as soon as it
    /// arrives, fewer (with the right sha256) is refused before anything is stored.
    Exactly(u64),
}

impl SizeRule {
    fn limit(self) -> u64 {
        match self {
            SizeRule::AtMost(n) | SizeRule::Exactly(n) => n,
        }
    }
}

/// One attempt's failure, before the retry decision.
enum Failure {
    Transient(DownloadError),
    Final(DownloadError),
}

/// An HTTP client with retries; cheap to clone, reuses connections.
#[derive(Debug, Clone)]
pub struct Downloader {
    agent: ureq::Agent,
    attempts: u32,
    backoff: Duration,
    max_size: u64,
}

fn make_agent(read_timeout: Duration, deadline: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT.min(deadline))
        .timeout_read(read_timeout.min(deadline))
        // ureq's overall timeout covers connecting and reading the whole body.
        .timeout(deadline)
        .user_agent(concat!("cmbuild/", env!("CARGO_PKG_VERSION")))
        .try_proxy_from_env(true)
        .build()
}

impl Default for Downloader {
    fn default() -> Self {
        Downloader::new()
    }
}

impl Downloader {
    /// A downloader with the default timeouts and retries.
    pub fn new() -> Downloader {
        Downloader {
            agent: make_agent(READ_TIMEOUT, DEFAULT_DEADLINE),
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_size: MAX_CRATE_SIZE,
        }
    }

    /// Sets the overall deadline of one attempt and the longest wait for a single read.
    pub fn with_deadline(mut self, deadline: Duration, read_timeout: Duration) -> Downloader {
        self.agent = make_agent(read_timeout, deadline);
        self
    }

    /// Sets the cap on downloads whose size is not pinned.
    pub fn with_max_size(mut self, max_size: u64) -> Downloader {
        self.max_size = max_size;
        self
    }

    /// The cap on downloads whose size is not pinned.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Sets how many attempts a transient failure gets and the first pause (doubling after).
    pub fn with_retries(mut self, attempts: u32, backoff: Duration) -> Downloader {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Downloads `url` into `mirror`; commits it only if its sha256 is `expected_sha256` (and
    /// its size `expected_size`, when given; otherwise it may not exceed [`Self::max_size`]).
    /// `progress(done, total)` reports the bytes of the current attempt (`done` starts again
    /// from 0 when an attempt is retried) and the length the server announced.
    pub fn fetch_to_mirror(
        &self,
        url: &str,
        expected_sha256: &Sha256,
        expected_size: Option<u64>,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, DownloadError> {
        let fetch = Fetch {
            url,
            headers: &[],
            sha256: expected_sha256,
            size: SizeRule::AtMost(expected_size.unwrap_or(self.max_size)),
        };
        self.fetch(&fetch, mirror, progress)
    }

    /// Downloads `fetch.url` (with its headers) into `mirror`, committing it only if its
    /// sha256 and size are as `fetch` says; transient failures are retried. HTTP 401 is
    /// [`DownloadError::Unauthorized`] with the server's challenge, for the caller to answer.
    pub fn fetch(
        &self,
        fetch: &Fetch<'_>,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, DownloadError> {
        let mut attempt = 1;
        loop {
            match self.try_once(fetch, attempt, mirror, progress) {
                Ok(stored) => return Ok(stored),
                Err(Failure::Transient(_)) if attempt < self.attempts => {
                    std::thread::sleep(self.backoff * 2u32.pow(attempt - 1));
                    attempt += 1;
                }
                Err(Failure::Transient(err) | Failure::Final(err)) => return Err(err),
            }
        }
    }

    /// GETs `url` (with `headers`) into memory: a small document such as a token, at most
    /// `cap` bytes. Not retried.
    pub fn get_small(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        cap: u64,
    ) -> Result<Vec<u8>, DownloadError> {
        let response = self.request(url, headers, 1).map_err(|f| match f {
            Failure::Transient(e) | Failure::Final(e) => e,
        })?;
        if response
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > cap)
        {
            return Err(DownloadError::TooLarge {
                url: url.to_owned(),
                limit: cap,
            });
        }
        let mut body = Vec::new();
        response
            .into_reader()
            .take(cap.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|source| DownloadError::Body {
                url: url.to_owned(),
                attempts: 1,
                source,
            })?;
        if body.len() as u64 > cap {
            return Err(DownloadError::TooLarge {
                url: url.to_owned(),
                limit: cap,
            });
        }
        Ok(body)
    }

    fn request(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        attempts: u32,
    ) -> Result<ureq::Response, Failure> {
        let mut request = self.agent.get(url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        match request.call() {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(401, response)) => {
                Err(Failure::Final(DownloadError::Unauthorized {
                    url: url.to_owned(),
                    challenge: response
                        .header("www-authenticate")
                        .map(|c| c.chars().take(1000).collect()),
                }))
            }
            Err(ureq::Error::Status(status, _)) => {
                let err = DownloadError::Status {
                    url: url.to_owned(),
                    status,
                    attempts,
                };
                let transient = status == 408 || status == 429 || status >= 500;
                Err(if transient {
                    Failure::Transient(err)
                } else {
                    Failure::Final(err)
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                Err(Failure::Transient(DownloadError::Network {
                    url: url.to_owned(),
                    attempts,
                    source: Box::new(transport),
                }))
            }
        }
    }

    fn try_once(
        &self,
        fetch: &Fetch<'_>,
        attempts: u32,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, Failure> {
        let url = fetch.url;
        let expected_sha256 = fetch.sha256;
        let limit = fetch.size.limit();
        let too_large = || {
            Failure::Final(DownloadError::TooLarge {
                url: url.to_owned(),
                limit,
            })
        };
        let mirror_error = |source| {
            Failure::Final(DownloadError::Mirror {
                url: url.to_owned(),
                source,
            })
        };
        let response = self.request(url, fetch.headers, attempts)?;
        let total = response
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        if total.is_some_and(|total| total > limit) {
            return Err(too_large());
        }
        // One byte past the cap is enough to know the server lies.
        let mut body = response.into_reader().take(limit.saturating_add(1));
        let mut writer = mirror.begin_blob().map_err(mirror_error)?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        progress(0, total);
        let body_error = |source| {
            Failure::Transient(DownloadError::Body {
                url: url.to_owned(),
                attempts,
                source,
            })
        };
        loop {
            let n = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(body_error(err)),
            };
            if done + n as u64 > limit {
                // Dropping the writer removes what was staged.
                return Err(too_large());
            }
            writer.write_all(&buffer[..n]).map_err(|source| {
                mirror_error(MirrorError::Io {
                    action: "write",
                    path: writer.path().to_owned(),
                    source,
                })
            })?;
            done += n as u64;
            progress(done, total);
        }
        if total.is_some_and(|total| total != done) {
            return Err(body_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("got {done} of {} bytes", total.unwrap_or(0)),
            )));
        }
        let staged = writer.finish().map_err(mirror_error)?;
        if staged.stored().sha256 != *expected_sha256 {
            // Dropping the staged blob removes it.
            return Err(Failure::Final(DownloadError::Mismatch {
                url: url.to_owned(),
                expected: *expected_sha256,
                actual: staged.stored().sha256,
            }));
        }
        if let SizeRule::Exactly(expected) = fetch.size {
            if staged.stored().size != expected {
                return Err(Failure::Final(DownloadError::SizeMismatch {
                    url: url.to_owned(),
                    expected,
                    actual: staged.stored().size,
                }));
            }
        }
        staged.commit().map_err(mirror_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A one-thread HTTP server answering each request with the next canned response.
    /// Returns the base URL and the list of request paths it saw.
    fn serve(responses: Vec<Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for response in responses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                log.lock()
                    .unwrap()
                    .push(line.split(' ').nth(1).unwrap_or("").to_owned());
                while {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    header != "\r\n" && !header.is_empty()
                } {}
                let mut stream = stream;
                let _ = stream.write_all(&response);
            }
        });
        (url, seen)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn status(code: u16) -> Vec<u8> {
        format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    }

    fn fast() -> Downloader {
        Downloader::new().with_retries(3, Duration::ZERO)
    }

    fn blob_count(mirror: &Mirror) -> usize {
        std::fs::read_dir(mirror.root().join("blobs"))
            .unwrap()
            .count()
    }

    #[test]
    fn retries_transient_errors_then_stores_the_verified_body() {
        let body = b"crate bytes".repeat(1000);
        let (url, seen) = serve(vec![status(503), status(429), ok(&body)]);
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let sha = Sha256::of(&body);
        let mut last = (0, None);
        let stored = fast()
            .fetch_to_mirror(
                &format!("{url}/x.crate"),
                &sha,
                None,
                &mirror,
                &mut |d, t| last = (d, t),
            )
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(last, (body.len() as u64, Some(body.len() as u64)));
        assert_eq!(stored.sha256, sha);
        assert_eq!(mirror.read_verified(&stored.cid).unwrap(), body);
    }

    #[test]
    fn not_found_is_final_and_named() {
        let (url, seen) = serve(vec![status(404), status(404)]);
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let err = fast()
            .fetch_to_mirror(
                &format!("{url}/gone"),
                &Sha256::default(),
                None,
                &mirror,
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(matches!(err, DownloadError::Status { status: 404, .. }));
        assert!(err.to_string().contains("/gone"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 1, "404 is not retried");
        assert_eq!(blob_count(&mirror), 0);
    }

    #[test]
    fn exact_sizes_headers_401_challenges_and_small_gets() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        // The right bytes, but not the size the descriptor declares: refused, not stored.
        let (url, _) = serve(vec![ok(b"abc")]);
        let sha = Sha256::of(b"abc");
        let fetch = Fetch {
            url: &url,
            headers: &[("Accept", "application/x-test")],
            sha256: &sha,
            size: SizeRule::Exactly(5),
        };
        let err = fast().fetch(&fetch, &mirror, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(
                err,
                DownloadError::SizeMismatch {
                    expected: 5,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(blob_count(&mirror), 0);
        // Exactly right: stored.
        let (url, _) = serve(vec![ok(b"abc")]);
        let fetch = Fetch {
            url: &url,
            size: SizeRule::Exactly(3),
            ..fetch
        };
        assert_eq!(
            fast()
                .fetch(&fetch, &mirror, &mut |_, _| {})
                .unwrap()
                .sha256,
            sha
        );
        // 401 is final and carries the challenge.
        let challenge = "Bearer realm=\"http://127.0.0.1:1/token\"";
        let (url, seen) = serve(vec![format!(
            "HTTP/1.1 401 No\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes()]);
        let fetch = Fetch { url: &url, ..fetch };
        let err = fast().fetch(&fetch, &mirror, &mut |_, _| {}).unwrap_err();
        match err {
            DownloadError::Unauthorized { challenge: got, .. } => {
                assert_eq!(got.as_deref(), Some(challenge))
            }
            other => panic!("{other}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Small documents are capped.
        let (url, _) = serve(vec![ok(b"0123456789"), ok(b"0123456789")]);
        assert_eq!(fast().get_small(&url, &[], 10).unwrap(), b"0123456789");
        assert!(matches!(
            fast().get_small(&url, &[], 9),
            Err(DownloadError::TooLarge { limit: 9, .. })
        ));
    }

    #[test]
    fn wrong_sha256_stores_nothing() {
        let (url, _) = serve(vec![ok(b"doctored")]);
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let err = fast()
            .fetch_to_mirror(
                &url,
                &Sha256::from_bytes([0xab; 32]),
                None,
                &mirror,
                &mut |_, _| {},
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert!(
            text.contains(&Sha256::of(b"doctored").to_string()),
            "{text}"
        );
        assert_eq!(blob_count(&mirror), 0);
    }

    #[test]
    fn truncated_body_is_retried_and_then_reported() {
        let mut short = ok(b"0123456789");
        short.truncate(short.len() - 4);
        let (url, seen) = serve(vec![short.clone(), short.clone(), short]);
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let sha = Sha256::of(b"0123456789");
        let err = fast()
            .fetch_to_mirror(&url, &sha, None, &mirror, &mut |_, _| {})
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::Body { attempts: 3, .. }),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(blob_count(&mirror), 0);
    }

    #[test]
    fn unreachable_host_is_a_network_error() {
        // Bind then drop a listener: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let err = Downloader::new()
            .with_retries(2, Duration::ZERO)
            .fetch_to_mirror(
                &format!("http://127.0.0.1:{port}/x"),
                &Sha256::default(),
                None,
                &mirror,
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::Network { attempts: 2, .. }),
            "{err}"
        );
        assert_eq!(blob_count(&mirror), 0);
    }
}
