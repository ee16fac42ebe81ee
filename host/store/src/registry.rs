//! A client of the OCI distribution API that fetches manifests and blobs by digest into the
//! mirror, verified (sha256 and declared size) before anything is kept.
//!
//! - `GET /v2/<name>/manifests/<digest>` with an `Accept` header naming the OCI index and
//!   manifest and the Docker schema 2 list and manifest ([`crate::oci::MANIFEST_ACCEPT`]);
//! - `GET /v2/<name>/blobs/<digest>` for configs and layers;
//! - a registry answering 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` gets
//!   an anonymous token from the realm (once per repository), and the request is made again
//!   with it. Registries that want credentials are refused: cmbuild vendors public images.
//!
//! HTTPS always, except for registries on a loopback address that the user allowed plainly
//! with [`Registry::new`]'s `insecure` list (`cmbuild vendor --insecure-registry HOST:PORT`).
//! The digests make what is fetched tamper-evident either way; plain HTTP stays off by
//! default so that a typo cannot send requests in clear.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use crate::download::{DownloadError, Downloader, Fetch, SizeRule};
use crate::mirror::{Mirror, Stored};
use crate::oci::{ImageRef, OciDigest, MANIFEST_ACCEPT};

/// The largest token response read.
const MAX_TOKEN_RESPONSE: u64 = 64 << 10;
/// The longest bearer token used.
const MAX_TOKEN: usize = 16 << 10;

/// Errors of the registry client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// plain HTTP is allowed for loopback registries only (127.0.0.0/8, ::1, localhost), not for `{0}`
    #[error(
        "plain HTTP is allowed for loopback registries only \
         (127.0.0.0/8, [::1], localhost), not for `{0}`"
    )]
    NotLoopback(String),
    /// {url} wants credentials ({challenge}); cmbuild fetches public images anonymously
    #[error("{url} wants credentials ({challenge}); cmbuild fetches public images anonymously")]
    Credentials {
        /// The URL fetched.
        url: String,
        /// The server's challenge.
        challenge: String,
    },
    /// {url}: the registry's token challenge is unusable: {what}
    #[error("{url}: the registry's token challenge is unusable: {what}")]
    Challenge {
        /// The URL fetched.
        url: String,
        /// What is wrong with it.
        what: String,
    },
    /// getting an anonymous token from {realm}
    #[error("getting an anonymous token from {realm}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// What failed.
        #[source]
        source: Box<DownloadError>,
    },
    /// the token endpoint {realm} answered no usable token: {what}
    #[error("the token endpoint {realm} answered no usable token: {what}")]
    TokenBody {
        /// The token endpoint.
        realm: String,
        /// What is wrong with the answer.
        what: String,
    },
    /// A download failed (or was refused: wrong digest, wrong size, too large).
    #[error(transparent)]
    Download(#[from] Box<DownloadError>),
}

/// A registry client; remembers anonymous tokens per repository.
#[derive(Debug, Clone)]
pub struct Registry {
    downloader: Downloader,
    insecure: BTreeSet<String>,
    tokens: BTreeMap<String, String>,
}

/// Whether `host` (with an optional `:port`) names a loopback address.
pub fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        match rest.split_once(']') {
            Some((addr, _)) => return addr.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback()),
            None => return false,
        }
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl Registry {
    /// A client over `downloader`; the registries in `insecure` (`HOST:PORT`, loopback
    /// addresses only) are spoken to over plain HTTP.
    pub fn new(
        downloader: Downloader,
        insecure: impl IntoIterator<Item = String>,
    ) -> Result<Registry, RegistryError> {
        let mut allowed = BTreeSet::new();
        for host in insecure {
            if !is_loopback(&host) {
                return Err(RegistryError::NotLoopback(host));
            }
            allowed.insert(host);
        }
        Ok(Registry {
            downloader,
            insecure: allowed,
            tokens: BTreeMap::new(),
        })
    }

    /// `https://HOST` (or `http://HOST` for an allowed loopback registry) of `image`'s API.
    pub fn base_url(&self, image: &ImageRef) -> String {
        let host = image.api_host();
        let scheme = if self.insecure.contains(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// The URL of a manifest of `image`'s repository.
    pub fn manifest_url(&self, image: &ImageRef, digest: &OciDigest) -> String {
        format!(
            "{}/v2/{}/manifests/{digest}",
            self.base_url(image),
            image.repository
        )
    }

    /// The URL of a blob of `image`'s repository.
    pub fn blob_url(&self, image: &ImageRef, digest: &OciDigest) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}",
            self.base_url(image),
            image.repository
        )
    }

    /// Fetches the manifest or index `digest` of `image`'s repository into the mirror.
    pub fn fetch_manifest(
        &mut self,
        image: &ImageRef,
        digest: &OciDigest,
        size: SizeRule,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, RegistryError> {
        let url = self.manifest_url(image, digest);
        self.fetch(
            image,
            &url,
            Some(MANIFEST_ACCEPT),
            digest,
            size,
            mirror,
            progress,
        )
    }

    /// Fetches blob `digest` (a config or layer of `size` bytes) into the mirror.
    pub fn fetch_blob(
        &mut self,
        image: &ImageRef,
        digest: &OciDigest,
        size: u64,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, RegistryError> {
        let url = self.blob_url(image, digest);
        let size = SizeRule::Exactly(size);
        self.fetch(image, &url, None, digest, size, mirror, progress)
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch(
        &mut self,
        image: &ImageRef,
        url: &str,
        accept: Option<&str>,
        digest: &OciDigest,
        size: SizeRule,
        mirror: &Mirror,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Stored, RegistryError> {
        let repo_key = format!("{}/{}", image.api_host(), image.repository);
        let mut fresh_token = false;
        loop {
            let authorization = self.tokens.get(&repo_key).map(|t| format!("Bearer {t}"));
            let mut headers = Vec::new();
            if let Some(accept) = accept {
                headers.push(("Accept", accept));
            }
            if let Some(value) = &authorization {
                headers.push(("Authorization", value.as_str()));
            }
            let fetch = Fetch {
                url,
                headers: &headers,
                sha256: digest.sha256(),
                size,
            };
            match self.downloader.fetch(&fetch, mirror, progress) {
                Ok(stored) => return Ok(stored),
                Err(DownloadError::Unauthorized { challenge, .. }) if !fresh_token => {
                    let token = self.anonymous_token(url, image, challenge.as_deref())?;
                    self.tokens.insert(repo_key.clone(), token);
                    fresh_token = true;
                }
                Err(err) => return Err(Box::new(err).into()),
            }
        }
    }

    /// Answers a 401's challenge with an anonymous bearer token.
    fn anonymous_token(
        &self,
        url: &str,
        image: &ImageRef,
        challenge: Option<&str>,
    ) -> Result<String, RegistryError> {
        let challenge_error = |what: &str| RegistryError::Challenge {
            url: url.to_owned(),
            what: what.to_owned(),
        };
        let Some(challenge) = challenge else {
            return Err(challenge_error(
                "HTTP 401 without a WWW-Authenticate header",
            ));
        };
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(challenge_error(&format!("cannot parse `{challenge}`")));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Credentials {
                url: url.to_owned(),
                challenge: challenge.to_owned(),
            });
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| challenge_error("no realm"))?;
        let realm_host = realm
            .strip_prefix("https://")
            .map(|rest| (rest, true))
            .or_else(|| realm.strip_prefix("http://").map(|rest| (rest, false)));
        let Some((rest, https)) = realm_host else {
            return Err(challenge_error(&format!(
                "realm `{realm}` is not an HTTP(S) URL"
            )));
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return Err(challenge_error(&format!(
                "realm `{realm}` names no plain host"
            )));
        }
        if !https && !self.insecure.contains(host) {
            return Err(challenge_error(&format!(
                "realm `{realm}` is plain HTTP (allowed only for a loopback registry given \
                 with --insecure-registry)"
            )));
        }
        let mut query = Vec::new();
        if let Some(service) = params.get("service") {
            query.push(format!("service={}", percent_encode(service)));
        }
        let default_scope = format!("repository:{}:pull", image.repository);
        let scope = params.get("scope").unwrap_or(&default_scope);
        query.push(format!("scope={}", percent_encode(scope)));
        let separator = if realm.contains('?') { '&' } else { '?' };
        let token_url = format!("{realm}{separator}{}", query.join("&"));
        let body = self
            .downloader
            .get_small(&token_url, &[], MAX_TOKEN_RESPONSE)
            .map_err(|source| RegistryError::Token {
                realm: realm.clone(),
                source: Box::new(source),
            })?;
        let token_error = |what: &str| RegistryError::TokenBody {
            realm: realm.clone(),
            what: what.to_owned(),
        };
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| token_error(&format!("not the expected JSON: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| token_error("neither `token` nor `access_token`"))?;
        if token.is_empty()
            || token.len() > MAX_TOKEN
            || !token.bytes().all(|b| (0x21..=0x7e).contains(&b))
        {
            return Err(token_error(
                "the token is empty, too long or has characters a header cannot carry",
            ));
        }
        Ok(token)
    }
}

/// Parses `Scheme key="value", key=value` into the scheme and its parameters.
fn parse_challenge(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let (scheme, mut rest) = match text.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest),
        None => (text, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == ',') {
            return None;
        }
        let after = after.trim_start();
        let value;
        if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &quoted[end?..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_owned();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
    Some((scheme.to_owned(), params))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_in_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/debian:pull,push");
        let (scheme, params) = parse_challenge(r#"Basic realm="x \"y\"""#).unwrap();
        assert_eq!(
            (scheme.as_str(), params["realm"].as_str()),
            ("Basic", "x \"y\"")
        );
        let (_, params) = parse_challenge("Bearer realm=https://a/t, service=s").unwrap();
        assert_eq!(
            (params["realm"].as_str(), params["service"].as_str()),
            ("https://a/t", "s")
        );
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("Bearer novalue").is_none());
    }

    #[test]
    fn loopback_only_for_plain_http() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1:5000",
            "example.com",
            "[::2]:5000",
            "127.0.0.1.nip.io:5000",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
        assert!(matches!(
            Registry::new(Downloader::new(), ["registry.example:5000".to_owned()]),
            Err(RegistryError::NotLoopback(_))
        ));
        let registry = Registry::new(Downloader::new(), ["127.0.0.1:5000".to_owned()]).unwrap();
        let local: ImageRef = format!("127.0.0.1:5000/a@sha256:{}", "0".repeat(64))
            .parse()
            .unwrap();
        assert_eq!(registry.base_url(&local), "http://127.0.0.1:5000");
        let other = local.clone();
        let other = ImageRef {
            registry: "127.0.0.1:5001".into(),
            ..other
        };
        assert_eq!(registry.base_url(&other), "https://127.0.0.1:5001");
        let hub: ImageRef = format!("debian@sha256:{}", "0".repeat(64)).parse().unwrap();
        assert_eq!(
            registry.manifest_url(&hub, &hub.digest),
            format!(
                "https://registry-1.docker.io/v2/library/debian/manifests/sha256:{}",
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("repository:library/debian:pull"),
            "repository%3Alibrary%2Fdebian%3Apull"
        );
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
    }
}
