//! Archive files over HTTP(S): [`HttpArchive`], an [`Archive`] for `cmbuild image lock`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use cmbuild_store::sha256::Sha256;

use crate::locking::{Archive, BoxError};

/// Why an archive file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// {url}: HTTP {status}
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The server's status code.
        status: u16,
    },
    /// {url}: the request failed
    #[error("{url}: the request failed")]
    Request {
        /// The URL asked for.
        url: String,
        /// What went wrong (connection, TLS, protocol).
        #[source]
        source: Box<ureq::Transport>,
    },
    /// {url} sends more than the {limit} bytes expected
    #[error("{url} sends more than the {limit} bytes expected")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The cap: the size InRelease or the index gives, else [`MAX_UNSIZED`].
        limit: u64,
    },
    /// {url}: reading the body failed
    #[error("{url}: reading the body failed")]
    Body {
        /// The URL asked for.
        url: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

/// The cap on an archive file whose size nothing pins (InRelease: about 200 KiB).
pub const MAX_UNSIZED: u64 = 16 << 20;
/// The deadline of one request, body included.
pub const DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The archive over HTTP(S). Indices fetched by hash are cached in `cache_dir` (checked
/// again before use); packages are not: the mirror is their cache.
pub struct HttpArchive {
    base_url: String,
    cache_dir: Option<PathBuf>,
    agent: ureq::Agent,
    attempts: u64,
}

impl HttpArchive {
    /// An archive rooted at `base_url` (no trailing slash), caching indices in `cache_dir`.
    pub fn new(base_url: &str, cache_dir: Option<PathBuf>) -> HttpArchive {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .timeout(DEADLINE)
            .build();
        HttpArchive {
            base_url: base_url.to_string(),
            cache_dir,
            agent,
            attempts: 3,
        }
    }

    /// Sets the longest wait for one read, the deadline of one request (body included) and
    /// how many attempts a request gets.
    pub fn with_timeouts(mut self, read: Duration, deadline: Duration, attempts: u64) -> Self {
        self.agent = ureq::AgentBuilder::new()
            .timeout_connect(read.min(deadline))
            .timeout_read(read.min(deadline))
            .timeout(deadline)
            .build();
        self.attempts = attempts.max(1);
        self
    }

    /// The body of `url`, streamed and refused past `limit` bytes.
    pub fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, HttpError> {
        let mut last_error: Option<HttpError> = None;
        // Mirrors drop connections now and then; a few retries keep a long lock going.
        for attempt in 0..self.attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(2 * attempt));
            }
            match self.agent.get(url).call() {
                Ok(response) => {
                    let announced = response
                        .header("content-length")
                        .and_then(|v| v.parse::<u64>().ok());
                    let too_large = || HttpError::TooLarge {
                        url: url.to_owned(),
                        limit,
                    };
                    if announced.is_some_and(|n| n > limit) {
                        return Err(too_large());
                    }
                    // Never more than one byte past the cap, and no buffer sized by the server.
                    let mut bytes = Vec::with_capacity(limit.min(1 << 20) as usize);
                    let mut body = response.into_reader().take(limit.saturating_add(1));
                    match body.read_to_end(&mut bytes) {
                        Ok(_) if bytes.len() as u64 > limit => return Err(too_large()),
                        Ok(_) => return Ok(bytes),
                        Err(source) => {
                            last_error = Some(HttpError::Body {
                                url: url.to_owned(),
                                source,
                            })
                        }
                    }
                }
                // 404 is an answer, not a hiccup: a superseded package left the pool.
                Err(ureq::Error::Status(status, _)) => {
                    return Err(HttpError::Status {
                        url: url.to_owned(),
                        status,
                    })
                }
                Err(ureq::Error::Transport(transport)) => {
                    last_error = Some(HttpError::Request {
                        url: url.to_owned(),
                        source: Box::new(transport),
                    })
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }
}

impl Archive for HttpArchive {
    fn fetch(
        &mut self,
        path: &str,
        sha256: Option<&Sha256>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, BoxError> {
        let url = format!("{}/{path}", self.base_url);
        let cached = match (&self.cache_dir, sha256) {
            (Some(dir), Some(hash)) if path.starts_with("dists/") => {
                Some(dir.join("debian-indices").join(hash.to_string()))
            }
            _ => None,
        };
        if let Some(file) = &cached {
            if let Ok(bytes) = std::fs::read(file) {
                if Some(&Sha256::of(&bytes)) == sha256 {
                    return Ok(bytes);
                }
            }
        }
        let bytes = self.get(&url, size.unwrap_or(MAX_UNSIZED))?;
        if let Some(file) = &cached {
            if Some(&Sha256::of(&bytes)) == sha256 {
                // A cache is an optimisation: failing to fill it is no reason to fail.
                if let Some(dir) = file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = cmbuild_store::atomic::write_atomically(file, &bytes);
            }
        }
        Ok(bytes)
    }
}

/// The download cache outside the repository: `$CMBUILD_CACHE`, else `~/.cache/cmbuild`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CMBUILD_CACHE") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("cmbuild"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::debian;

    /// The real archive: Debian's current trixie InRelease verifies with the keyring of
    /// this (bookworm) host. Needs the network, so it only runs when asked for.
    #[test]
    #[ignore = "needs deb.debian.org"]
    fn the_real_trixie_inrelease_verifies_with_the_installed_keyring() {
        let mut bytes = Vec::new();
        ureq::get("http://deb.debian.org/debian/dists/trixie/InRelease")
            .call()
            .expect("deb.debian.org reachable")
            .into_reader()
            .read_to_end(&mut bytes)
            .unwrap();
        let signed = debian::verify_inrelease(&bytes, Path::new(debian::DEFAULT_KEYRING)).unwrap();
        let release = debian::parse_release(&signed).unwrap();
        release.check_codename("trixie").unwrap();
        release.entry("main/binary-riscv64/Packages.gz").unwrap();
        let mut doctored = bytes.clone();
        let at = doctored.len() / 2;
        doctored[at] ^= 1;
        assert!(debian::verify_inrelease(&doctored, Path::new(debian::DEFAULT_KEYRING)).is_err());
    }
}
