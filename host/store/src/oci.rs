//! OCI container images named by digest: [`OciDigest`], image references ([`ImageRef`]), the
//! manifest and index documents of the OCI distribution API ([`ManifestDoc`]), and the record
//! the mirror keeps for each vendored image ([`ImageRecord`]).
//!
//! Everything here reads untrusted bytes (a registry's answers): every document is size-capped
//! before it is parsed, every list is bounded, and anything cmbuild does not understand is
//! refused with a message naming it rather than guessed at.
//!
//! In the mirror, every blob of an image (index, manifest, config, layers) is stored under its
//! CID and indexed as `oci-blob/sha256/<hex>` (see [`blob_key`]); each vendored image gets one
//! more entry, `oci-image/<registry+repository>/sha256:<hex>` (see [`image_key`]), naming the
//! blob that holds its [`ImageRecord`]: which manifest was chosen for linux/riscv64, its config
//! and its layers, each with its CID. [`find_image`] looks a digest up offline.

use std::fmt;
use std::str::FromStr;

use crate::cid::Cid;
use crate::mirror::{Key, Kind, Mirror, MirrorError};
use crate::sha256::Sha256;

/// OCI image index (a list of manifests, one per platform).
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest (a config and layers).
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list, schema 2 (the Docker form of an index).
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The layer media types cmbuild accepts: plain, gzip and zstd tarballs, OCI and Docker.
pub const LAYER_MEDIA_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// The `Accept` header of a manifest request: every form cmbuild reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or index accepted (Docker Hub's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// The largest image config accepted.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;
/// The largest layer accepted.
pub const MAX_LAYER_SIZE: u64 = 16 << 30;
/// Most entries of an index, or layers of a manifest.
pub const MAX_ENTRIES: usize = 1024;
/// The platform every base image must have: cmbuild's machine is linux/riscv64.
pub const PLATFORM: &str = "linux/riscv64";

/// Errors of OCI references and documents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    /// `{0}` is not a digest of the form sha256:<64 lowercase hex digits>
    #[error("`{0}` is not a digest of the form sha256:<64 lowercase hex digits>")]
    Digest(String),
    /// `{reference}` is not an image reference ([registry[:port]/]repository[:tag]@sha256:<digest>): {what}
    #[error(
        "`{reference}` is not an image reference \
         ([registry[:port]/]repository[:tag]@sha256:<digest>): {what}"
    )]
    Reference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        what: String,
    },
    /// `{0}` names no digest: pin it as `{0}@sha256:<digest>` (a tag can move, a digest cannot)
    #[error(
        "`{0}` names no digest: pin it as `{0}@sha256:<digest>` (a tag can move, a digest cannot)"
    )]
    NoDigest(String),
    /// {what} {digest} is not a document cmbuild reads: {why}
    #[error("{what} {digest} is not a document cmbuild reads: {why}")]
    Document {
        /// Which document (manifest, index, config).
        what: &'static str,
        /// Its digest.
        digest: OciDigest,
        /// What is wrong with it.
        why: String,
    },
    /// {digest} has no linux/riscv64 image (it has: {present}); cmbuild's machine is riscv64, foreign-architecture bases are refused
    #[error(
        "{digest} has no linux/riscv64 image (it has: {present}); cmbuild's machine is \
         riscv64, foreign-architecture bases are refused"
    )]
    NoRiscv64 {
        /// The index's digest.
        digest: OciDigest,
        /// The platforms the index lists.
        present: String,
    },
    /// the image {digest} is for {platform}, not linux/riscv64; foreign-architecture bases are refused
    #[error(
        "the image {digest} is for {platform}, not linux/riscv64; \
         foreign-architecture bases are refused"
    )]
    Foreign {
        /// The manifest's or config's digest.
        digest: OciDigest,
        /// The platform it declares.
        platform: String,
    },
}

/// A `sha256:<hex>` content digest as the OCI specifications write it.
///
/// `Display`, `FromStr` and serde use the `sha256:` prefix and lowercase hex; other
/// algorithms are refused (cmbuild verifies every byte against it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciDigest(pub Sha256);

impl OciDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> OciDigest {
        OciDigest(Sha256::of(bytes))
    }

    /// The sha256 it names.
    pub fn sha256(&self) -> &Sha256 {
        &self.0
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OciDigest({self})")
    }
}

impl FromStr for OciDigest {
    type Err = OciError;

    fn from_str(s: &str) -> Result<OciDigest, OciError> {
        let bad = || OciError::Digest(s.chars().take(100).collect());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        hex.parse().map(OciDigest).map_err(|_| bad())
    }
}

impl serde::Serialize for OciDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OciDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OciDigest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The registry a reference without one names.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Longest repository path (the distribution specification's limit).
const MAX_REPOSITORY: usize = 255;

/// An image named by digest: `[registry[:port]/]repository[:tag]@sha256:<hex>`.
///
/// Docker's defaults apply: no registry means `docker.io`, and a one-component repository
/// there means `library/NAME` (`debian@sha256:…` is `docker.io/library/debian@sha256:…`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// The registry host, with `:port` if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/debian`, `test/base`).
    pub repository: String,
    /// The tag, if written (informative only: the digest decides).
    pub tag: Option<String>,
    /// The digest of the index or manifest.
    pub digest: OciDigest,
}

impl ImageRef {
    /// Parses a reference; a reference without a digest is [`OciError::NoDigest`].
    pub fn parse(text: &str) -> Result<ImageRef, OciError> {
        let bad = |what: &str| OciError::Reference {
            reference: text.chars().take(300).collect(),
            what: what.to_owned(),
        };
        if text.len() > 600 {
            return Err(bad("longer than 600 characters"));
        }
        let (name, digest) = match text.rsplit_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (text, None),
        };
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest)
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        if !is_valid_registry(&registry) {
            return Err(bad(&format!("`{registry}` is not a registry host[:port]")));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            if !is_valid_tag(tag) {
                return Err(bad(&format!("`{tag}` is not a tag")));
            }
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if !is_valid_repository(&repository) {
            return Err(bad(&format!(
                "`{repository}` is not a repository (lowercase letters, digits and \
                 . _ - separators, components joined by /)"
            )));
        }
        let Some(digest) = digest else {
            return Err(OciError::NoDigest(text.chars().take(300).collect()));
        };
        let digest = digest.parse().map_err(|e: OciError| bad(&e.to_string()))?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the registry API answers on (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same repository at another digest.
    pub fn with_digest(&self, digest: OciDigest) -> ImageRef {
        ImageRef {
            digest,
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        write!(f, "@{}", self.digest)
    }
}

impl FromStr for ImageRef {
    type Err = OciError;

    fn from_str(s: &str) -> Result<ImageRef, OciError> {
        ImageRef::parse(s)
    }
}

fn is_valid_registry(registry: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        let ok = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (ok, port)
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        (ok, port)
    };
    host_ok
        && port.is_none_or(|p| {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok()
        })
}

fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A repository: components of lowercase letters and digits, joined inside by `.`, `_`, `__`
/// or dashes, separated by `/`.
fn is_valid_repository(repository: &str) -> bool {
    if repository.is_empty() || repository.len() > MAX_REPOSITORY {
        return false;
    }
    repository.split('/').all(|component| {
        let bytes = component.as_bytes();
        if bytes.is_empty()
            || !bytes[0].is_ascii_alphanumeric()
            || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_lowercase() || b.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__` or one or more `-`.
            let start = i;
            match b {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if bytes.get(i) == Some(&b'_') {
                        i += 1;
                    }
                }
                b'-' => {
                    while bytes.get(i) == Some(&b'-') {
                        i += 1;
                    }
                }
                _ => return false,
            }
            if i == start || !bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric()) {
                return false;
            }
        }
        true
    })
}

/// A pointer to a blob inside a manifest or index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Descriptor {
    /// What the blob is.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest.
    pub digest: OciDigest,
    /// Its size in bytes.
    pub size: u64,
    /// The platform of a manifest listed in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Other places to fetch it from (foreign layers); cmbuild refuses these.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

/// An image's platform, as an index lists it (or a config declares it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    /// The CPU architecture (`riscv64`, `amd64`, ...).
    #[serde(default)]
    pub architecture: String,
    /// The operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// The CPU variant, if any (`v8`).
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether this is linux/riscv64.
    pub fn is_riscv64_linux(&self) -> bool {
        self.os == "linux" && self.architecture == "riscv64"
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |s: &str| {
            if s.is_empty() {
                "?".to_owned()
            } else {
                s.to_owned()
            }
        };
        write!(f, "{}/{}", show(&self.os), show(&self.architecture))?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A list of manifests, one per platform (OCI image index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    /// The document's media type.
    pub media_type: String,
    /// The manifests it lists.
    pub manifests: Vec<Descriptor>,
}

/// One platform's image: its config and layers (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// The document's media type.
    pub media_type: String,
    /// The image config.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// What a manifest request returned: an index or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDoc {
    /// An index (or manifest list).
    Index(ImageIndex),
    /// An image manifest.
    Manifest(ImageManifest),
}

/// The fields of both document kinds; which are present decides the kind.
#[derive(serde::Deserialize)]
struct RawDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

impl ManifestDoc {
    /// Parses the bytes of the manifest or index whose digest is `digest` (already verified).
    pub fn parse(digest: OciDigest, bytes: &[u8]) -> Result<ManifestDoc, OciError> {
        let bad = |why: String| OciError::Document {
            what: "manifest",
            digest,
            why,
        };
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(bad(format!("larger than {MAX_MANIFEST_SIZE} bytes")));
        }
        let raw: RawDoc =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if raw.schema_version != Some(2) {
            return Err(bad(format!(
                "schemaVersion is {:?}, cmbuild reads schema 2 only",
                raw.schema_version
            )));
        }
        let is_index = match raw.media_type.as_deref() {
            Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST) => true,
            Some(MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST) => false,
            Some(other) => return Err(bad(format!("media type {other:?} is not an image"))),
            None => raw.manifests.is_some() && raw.config.is_none(),
        };
        if is_index {
            let manifests = raw
                .manifests
                .ok_or_else(|| bad("an index without `manifests`".into()))?;
            if manifests.len() > MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} manifests")));
            }
            Ok(ManifestDoc::Index(ImageIndex {
                media_type: raw.media_type.unwrap_or_else(|| MEDIA_OCI_INDEX.to_owned()),
                manifests,
            }))
        } else {
            let config = raw
                .config
                .ok_or_else(|| bad("a manifest without `config`".into()))?;
            let layers = raw
                .layers
                .ok_or_else(|| bad("a manifest without `layers`".into()))?;
            if layers.len() > MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} layers")));
            }
            Ok(ManifestDoc::Manifest(ImageManifest {
                media_type: raw
                    .media_type
                    .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_owned()),
                config,
                layers,
            }))
        }
    }
}

impl ImageIndex {
    /// The linux/riscv64 manifest this index (whose digest is `digest`) lists; if there is
    /// none, [`OciError::NoRiscv64`] lists the platforms it has.
    pub fn riscv64(&self, digest: OciDigest) -> Result<&Descriptor, OciError> {
        let is_manifest = |d: &&Descriptor| {
            matches!(
                d.media_type.as_str(),
                MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST
            )
        };
        let candidates: Vec<&Descriptor> = self
            .manifests
            .iter()
            .filter(is_manifest)
            .filter(|d| d.platform.as_ref().is_some_and(Platform::is_riscv64_linux))
            .collect();
        // Prefer an entry without a variant; riscv64 has none today.
        if let Some(found) = candidates
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .or(candidates.first())
        {
            return Ok(found);
        }
        let mut present: Vec<String> = self
            .manifests
            .iter()
            .map(|d| match &d.platform {
                Some(p) => p.to_string(),
                None => "no platform".to_owned(),
            })
            .collect();
        present.sort();
        present.dedup();
        Err(OciError::NoRiscv64 {
            digest,
            present: if present.is_empty() {
                "no manifests".to_owned()
            } else {
                present.join(", ")
            },
        })
    }
}

impl ImageManifest {
    /// Checks what cmbuild needs of the manifest whose digest is `digest`: an image config,
    /// layers of known tarball types, each within the size caps, none fetched from elsewhere.
    pub fn check(&self, digest: OciDigest) -> Result<(), OciError> {
        let bad = |why: String| OciError::Document {
            what: "manifest",
            digest,
            why,
        };
        if !matches!(
            self.config.media_type.as_str(),
            MEDIA_OCI_CONFIG | MEDIA_DOCKER_CONFIG
        ) {
            return Err(bad(format!(
                "its config has media type {:?}, not an image config (an artifact, not an image)",
                self.config.media_type
            )));
        }
        if self.config.size > MAX_CONFIG_SIZE {
            return Err(bad(format!(
                "its config is {} bytes, more than the {MAX_CONFIG_SIZE} allowed",
                self.config.size
            )));
        }
        for layer in &self.layers {
            if !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
                return Err(bad(format!(
                    "layer {} has media type {:?} (foreign or non-distributable layers, \
                     and unknown ones, are refused)",
                    layer.digest, layer.media_type
                )));
            }
            if layer.urls.as_ref().is_some_and(|u| !u.is_empty()) {
                return Err(bad(format!(
                    "layer {} is to be fetched from other URLs, outside the registry",
                    layer.digest
                )));
            }
            if layer.size > MAX_LAYER_SIZE {
                return Err(bad(format!(
                    "layer {} is {} bytes, more than the {MAX_LAYER_SIZE} allowed",
                    layer.digest, layer.size
                )));
            }
        }
        Ok(())
    }
}

/// The platform an image config (whose digest is `digest`) declares; refuses anything but
/// linux/riscv64.
pub fn check_config_platform(digest: OciDigest, bytes: &[u8]) -> Result<Platform, OciError> {
    let platform: Platform = serde_json::from_slice(bytes).map_err(|e| OciError::Document {
        what: "image config",
        digest,
        why: format!("not valid JSON: {e}"),
    })?;
    if platform.is_riscv64_linux() {
        Ok(platform)
    } else {
        Err(OciError::Foreign {
            digest,
            platform: platform.to_string(),
        })
    }
}

/// One blob of a vendored image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRecord {
    /// Its media type.
    pub media_type: String,
    /// Its digest (verified).
    pub digest: OciDigest,
    /// Its size in bytes (verified).
    pub size: u64,
    /// Where it is in the mirror.
    pub cid: Cid,
}

/// What the mirror keeps for one vendored image reference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// The reference as vendored (`registry/repository[:tag]@sha256:…`).
    pub reference: String,
    /// The digest the reference names (the index's, or the manifest's when there is none).
    pub digest: OciDigest,
    /// The index, when the digest names one.
    pub index: Option<BlobRecord>,
    /// The manifest chosen for linux/riscv64.
    pub manifest: BlobRecord,
    /// The platform (always `linux/riscv64`).
    pub platform: String,
    /// The image config.
    pub config: BlobRecord,
    /// The layers, bottom first.
    pub layers: Vec<BlobRecord>,
}

impl ImageRecord {
    /// Every blob of the image: index (if any), manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRecord> {
        self.index
            .iter()
            .chain([&self.manifest, &self.config])
            .chain(&self.layers)
    }

    /// The record's bytes as the mirror stores them (stable JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a record serialises");
        bytes.push(b'\n');
        bytes
    }
}

/// The largest image record read back from the mirror.
pub const MAX_RECORD_SIZE: u64 = 1 << 20;

/// The mirror index key of an OCI blob: `oci-blob/sha256/<hex>`.
pub fn blob_key(digest: &OciDigest) -> Key {
    Key {
        kind: Kind::OciBlob,
        name: "sha256".to_owned(),
        version: digest.0.to_string(),
        arch: None,
    }
}

/// The mirror index key of a vendored image: `oci-image/<registry+repository>/sha256:<hex>`
/// (the `/` of the name written `+`, which no registry or repository name contains).
pub fn image_key(image: &ImageRef) -> Key {
    Key {
        kind: Kind::OciImage,
        name: format!("{}/{}", image.registry, image.repository).replace('/', "+"),
        version: image.digest.to_string(),
        arch: None,
    }
}

/// Why an image could not be found in the mirror.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// the mirror failed
    #[error("the mirror failed")]
    Mirror(#[from] MirrorError),
    /// no image with digest {0} was vendored into the mirror (run `cmbuild vendor --dockerfile PATH` or `--oci-image REF` first)
    #[error(
        "no image with digest {0} was vendored into the mirror \
         (run `cmbuild vendor --dockerfile PATH` or `--oci-image REF` first)"
    )]
    NotVendored(OciDigest),
    /// the mirror's record of {0} is malformed or incomplete: {1}
    #[error("the mirror's record of {0} is malformed or incomplete: {1}")]
    Record(OciDigest, String),
}

/// Reads the record of image `key` from `index` and checks that every blob it names is in
/// the mirror, intact. `Ok(None)` when the image was not vendored (or a blob is missing).
pub fn read_record(
    mirror: &Mirror,
    index: &crate::mirror::Index,
    key: &Key,
) -> Result<Option<ImageRecord>, FindError> {
    let Some(entry) = index.get(key) else {
        return Ok(None);
    };
    let digest: OciDigest = key
        .version
        .parse()
        .map_err(|e: OciError| FindError::Record(OciDigest(entry.sha256), e.to_string()))?;
    if entry.size > MAX_RECORD_SIZE || !mirror.has_valid(&entry.cid)? {
        return Ok(None);
    }
    let bytes = mirror.read_verified(&entry.cid)?;
    let record: ImageRecord = serde_json::from_slice(&bytes)
        .map_err(|e| FindError::Record(digest, format!("not a record: {e}")))?;
    if record.digest != digest {
        return Err(FindError::Record(
            digest,
            format!("it describes {}", record.digest),
        ));
    }
    for blob in record.blobs() {
        if !mirror.has_valid(&blob.cid)? {
            return Ok(None);
        }
    }
    Ok(Some(record))
}

/// Finds a vendored image by the digest a `FROM` line names (whatever registry it came from),
/// every blob present and intact: what an offline build loads. The digest may be the one an
/// image was vendored by, or the linux/riscv64 manifest chosen from a vendored index.
pub fn find_image(mirror: &Mirror, digest: &OciDigest) -> Result<ImageRecord, FindError> {
    let index = mirror.load_index()?;
    let wanted = digest.to_string();
    let images = || index.entries.keys().filter(|k| k.kind == Kind::OciImage);
    for key in images().filter(|k| k.version == wanted) {
        if let Some(record) = read_record(mirror, &index, key)? {
            return Ok(record);
        }
    }
    for key in images() {
        if let Some(record) = read_record(mirror, &index, key)? {
            if record.manifest.digest == *digest {
                return Ok(ImageRecord {
                    digest: *digest,
                    index: None,
                    ..record
                });
            }
        }
    }
    Err(FindError::NotVendored(*digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_sha256_lowercase_only() {
        let d: OciDigest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(
            serde_json::from_str::<OciDigest>(&format!("\"sha256:{HEX}\"")).unwrap(),
            d
        );
        for bad in [
            HEX.to_owned(),
            format!("sha512:{HEX}"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            "sha256:".to_owned(),
        ] {
            assert!(bad.parse::<OciDigest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn references_follow_docker_defaults() {
        let parse = |s: &str| ImageRef::parse(&format!("{s}@sha256:{HEX}")).unwrap();
        let r = parse("debian");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/debian", None)
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/debian@sha256:{HEX}")
        );
        let r = parse("riscv64/debian:trixie-slim");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "riscv64/debian", Some("trixie-slim"))
        );
        let r = parse("index.docker.io/busybox");
        assert_eq!(r.repository, "library/busybox");
        let r = parse("127.0.0.1:5000/test/base:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "test/base", Some("v1"))
        );
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        let r = parse("localhost/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        let r = parse("ghcr.io/a/b/c");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("ghcr.io", "a/b/c")
        );
        let r = parse("[::1]:5000/a__b.c-d");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("[::1]:5000", "a__b.c-d")
        );
        // Display round-trips.
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn bad_references_are_refused_by_name() {
        assert!(matches!(
            ImageRef::parse("debian:trixie"),
            Err(OciError::NoDigest(_))
        ));
        for bad in [
            "Debian",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "host:99999/x",
            "host:port/x",
            "debian:-tag",
            "x/../y",
            "",
        ] {
            let err = ImageRef::parse(&format!("{bad}@sha256:{HEX}")).unwrap_err();
            assert!(matches!(err, OciError::Reference { .. }), "{bad}: {err}");
        }
        let err = ImageRef::parse("debian@sha256:abc").unwrap_err();
        assert!(
            err.to_string().contains("sha256:<64 lowercase hex"),
            "{err}"
        );
    }

    fn descriptor(media: &str, arch: Option<&str>) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": media,
            "digest": format!("sha256:{HEX}"),
            "size": 10,
        });
        if let Some(arch) = arch {
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        }
        d
    }

    #[test]
    fn documents_are_classified_and_riscv64_is_chosen() {
        let digest = OciDigest::of(b"x");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                descriptor(MEDIA_OCI_MANIFEST, Some("amd64")),
                descriptor(MEDIA_OCI_MANIFEST, Some("riscv64")),
            ],
        });
        let ManifestDoc::Index(doc) =
            ManifestDoc::parse(digest, &serde_json::to_vec(&index).unwrap()).unwrap()
        else {
            panic!("not an index")
        };
        let chosen = doc.riscv64(digest).unwrap();
        assert_eq!(chosen.platform.as_ref().unwrap().architecture, "riscv64");

        let foreign = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                descriptor(MEDIA_DOCKER_MANIFEST, Some("amd64")),
                descriptor(MEDIA_DOCKER_MANIFEST, Some("arm64")),
                descriptor(MEDIA_DOCKER_MANIFEST, None),
            ],
        });
        let ManifestDoc::Index(doc) =
            ManifestDoc::parse(digest, &serde_json::to_vec(&foreign).unwrap()).unwrap()
        else {
            panic!("not an index")
        };
        let err = doc.riscv64(digest).unwrap_err().to_string();
        assert!(
            err.contains("linux/amd64, linux/arm64, no platform") && err.contains("riscv64"),
            "{err}"
        );

        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": descriptor(MEDIA_OCI_CONFIG, None),
            "layers": [descriptor(LAYER_MEDIA_TYPES[1], None)],
        });
        let ManifestDoc::Manifest(m) =
            ManifestDoc::parse(digest, &serde_json::to_vec(&manifest).unwrap()).unwrap()
        else {
            panic!("not a manifest")
        };
        m.check(digest).unwrap();
        let mut foreign_layer = m.clone();
        foreign_layer.layers[0].media_type =
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
        assert!(foreign_layer.check(digest).is_err());
        let mut artifact = m.clone();
        artifact.config.media_type = "application/vnd.cncf.helm.config.v1+json".into();
        assert!(artifact.check(digest).is_err());
        let mut huge = m;
        huge.config.size = MAX_CONFIG_SIZE + 1;
        assert!(huge.check(digest).is_err());
    }

    #[test]
    fn hostile_documents_are_refused() {
        let digest = OciDigest::of(b"x");
        for doc in [
            &b"not json"[..],
            br#"{"schemaVersion":1,"fsLayers":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"text/plain"}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
            br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#,
        ] {
            assert!(ManifestDoc::parse(digest, doc).is_err(), "{doc:?}");
        }
        let many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|_| descriptor(MEDIA_OCI_MANIFEST, Some("riscv64")))
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": many});
        assert!(ManifestDoc::parse(digest, &serde_json::to_vec(&index).unwrap()).is_err());
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        assert!(ManifestDoc::parse(digest, &big).is_err());
    }

    #[test]
    fn config_platform_must_be_riscv64() {
        let digest = OciDigest::of(b"c");
        assert!(
            check_config_platform(digest, br#"{"architecture":"riscv64","os":"linux"}"#).is_ok()
        );
        let err = check_config_platform(digest, br#"{"architecture":"amd64","os":"linux"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("foreign"),
            "{err}"
        );
    }

    #[test]
    fn keys_read_back() {
        let image = ImageRef::parse(&format!("127.0.0.1:5000/test/base:v1@sha256:{HEX}")).unwrap();
        let key = image_key(&image);
        assert_eq!(
            key.to_string(),
            format!("oci-image/127.0.0.1:5000+test+base/sha256:{HEX}")
        );
        assert_eq!(key.to_string().parse::<Key>().unwrap(), key);
        let key = blob_key(&image.digest);
        assert_eq!(key.to_string(), format!("oci-blob/sha256/{HEX}"));
        assert_eq!(key.to_string().parse::<Key>().unwrap(), key);
    }
}
