//! `cmbuild vendor --dockerfile PATH` / `--oci-image REF@sha256:…`: container base images into
//! the mirror, by digest, for linux/riscv64.
//!
//! For each image: the manifest (or index) the reference's digest names, the linux/riscv64
//! manifest an index lists (an index without one is refused, listing what it has), the image
//! config (whose platform must be linux/riscv64 too) and every layer are fetched through the
//! OCI distribution API ([`cmbuild_store::registry`]), each verified against its digest and
//! declared size before it is stored under its CID and indexed as `oci-blob/sha256/<hex>`.
//! Only when all of them are in does the image's record ([`ImageRecord`]) go into the mirror
//! under `oci-image/<registry+repository>/<digest>`: a failure leaves no record, and no
//! partial blob (what was verified stays, so a retry fetches only the rest). A blob the
//! mirror already holds intact is not fetched again; an image whose record and blobs are all
//! there costs no request at all.

use std::path::PathBuf;

use cmbuild_store::cid::{Cid, Codec};
use cmbuild_store::dockerfile::{self, DockerfileError};
use cmbuild_store::download::DownloadError;
use cmbuild_store::download::SizeRule;
use cmbuild_store::mirror::{Entry, Mirror, MirrorError, Stored};
use cmbuild_store::oci::{
    self, BlobRecord, FindError, ImageRecord, ImageRef, ManifestDoc, OciDigest, OciError,
    MAX_MANIFEST_SIZE,
};
use cmbuild_store::registry::{is_loopback, Registry, RegistryError};

use super::vendor::{FetchProgress, KindCounts, Wanted};

/// Why vendoring container images failed.
#[derive(Debug, thiserror::Error)]
pub enum OciOpError {
    /// A Dockerfile could not be read.
    #[error("cannot read the Dockerfile {}", .path.display())]
    ReadDockerfile {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A Dockerfile names an image cmbuild cannot vendor (no digest, unresolved variable, ...).
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// An `--oci-image` reference is malformed or names no digest.
    #[error("--oci-image")]
    Reference(#[source] OciError),
    /// The image is not what cmbuild can use (no riscv64 image, foreign config, bad document).
    #[error("vendoring {image}")]
    Image {
        /// The reference.
        image: String,
        /// What is wrong.
        #[source]
        source: OciError,
    },
    /// The registry failed or sent bytes that do not match the digest.
    #[error("vendoring {image}")]
    Registry {
        /// The reference.
        image: String,
        /// What failed.
        #[source]
        source: RegistryError,
    },
    /// A loopback registry could not be reached over HTTPS (it may speak plain HTTP).
    #[error(
        "vendoring {image}: cannot reach the loopback registry {host} over HTTPS; if it \
         speaks plain HTTP, allow that with --insecure-registry {host}"
    )]
    LoopbackHttps {
        /// The reference.
        image: String,
        /// The registry's host and port.
        host: String,
        /// What failed.
        #[source]
        source: RegistryError,
    },
    /// A blob's digest matched but not the size its descriptor declares.
    #[error(
        "vendoring {image}: blob {digest} is {actual} bytes, its descriptor declares {declared}"
    )]
    Size {
        /// The reference.
        image: String,
        /// The blob.
        digest: OciDigest,
        /// The declared size.
        declared: u64,
        /// The size found.
        actual: u64,
    },
    /// The mirror failed.
    #[error("the mirror")]
    Mirror(#[from] MirrorError),
    /// The mirror holds a malformed image record.
    #[error(transparent)]
    Find(#[from] FindError),
}

type Result<T, E = OciOpError> = std::result::Result<T, E>;

/// Which images to vendor.
#[derive(Clone, Debug, Default)]
pub struct OciOptions {
    /// Dockerfiles whose every base image is vendored.
    pub dockerfiles: Vec<PathBuf>,
    /// Image references (`[registry[:port]/]repository[:tag]@sha256:…`).
    pub images: Vec<String>,
    /// Loopback registries (`HOST:PORT`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl OciOptions {
    /// Whether any image is asked for.
    pub fn is_empty(&self) -> bool {
        self.dockerfiles.is_empty() && self.images.is_empty()
    }
}

/// What vendoring images did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciReport {
    /// The images vendored (records written now or already there), as `reference -> manifest`.
    pub images: Vec<(String, OciDigest)>,
    /// How many of them were already complete in the mirror.
    pub images_present: usize,
    /// Blob counts (downloaded, bytes, already there).
    pub blobs: KindCounts,
}

/// Every image the options name, Dockerfiles first, each once.
pub fn wanted_images(opts: &OciOptions) -> Result<Vec<ImageRef>> {
    let mut images: Vec<ImageRef> = Vec::new();
    for path in &opts.dockerfiles {
        let (name, text) = read_dockerfile(path)?;
        for base in dockerfile::base_images(&name, &text)? {
            images.push(base.image);
        }
    }
    for text in &opts.images {
        images.push(ImageRef::parse(text).map_err(OciOpError::Reference)?);
    }
    let mut seen = std::collections::BTreeSet::new();
    images.retain(|i| seen.insert(oci::image_key(i)));
    Ok(images)
}

/// Reads a Dockerfile (at most [`dockerfile::MAX_DOCKERFILE_SIZE`] bytes of UTF-8): its name
/// for messages and its text.
fn read_dockerfile(path: &std::path::Path) -> Result<(String, String)> {
    use std::io::Read;
    let name = path.display().to_string();
    let io_error = |source| OciOpError::ReadDockerfile {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io_error)?
        .take(dockerfile::MAX_DOCKERFILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() > dockerfile::MAX_DOCKERFILE_SIZE {
        return Err(DockerfileError::File {
            file: name,
            what: format!("larger than {} bytes", dockerfile::MAX_DOCKERFILE_SIZE),
        }
        .into());
    }
    let text = String::from_utf8(bytes).map_err(|_| DockerfileError::File {
        file: name.clone(),
        what: "is not UTF-8".to_owned(),
    })?;
    Ok((name, text))
}

/// Offline: the vendored record of every image the Dockerfile at `path` names, in order
/// (what `run --dockerfile` loads into the machine). An image the mirror lacks (or holds
/// incompletely) is [`FindError::NotVendored`], naming its digest.
pub fn vendored_bases(
    mirror: &Mirror,
    path: &std::path::Path,
) -> Result<Vec<(dockerfile::BaseImage, ImageRecord)>> {
    let (name, text) = read_dockerfile(path)?;
    let mut out = Vec::new();
    for base in dockerfile::base_images(&name, &text)? {
        let record = oci::find_image(mirror, &base.image.digest)?;
        out.push((base, record));
    }
    Ok(out)
}

/// Vendors `images` into `mirror` through `registry`, reporting to `progress`.
pub fn vendor_images(
    mirror: &Mirror,
    images: &[ImageRef],
    registry: &mut Registry,
    progress: &mut dyn FetchProgress,
) -> Result<OciReport> {
    let mut report = OciReport::default();
    for image in images {
        let mut vendoring = Vendoring {
            mirror,
            registry,
            image,
            counts: &mut report.blobs,
        };
        let (record, present) = vendoring.image(progress)?;
        report.images_present += usize::from(present);
        progress.note(&format!(
            "cmbuild vendor: OCI image {} -> linux/riscv64 manifest {} ({} layer{}{})",
            image,
            record.manifest.digest,
            record.layers.len(),
            if record.layers.len() == 1 { "" } else { "s" },
            if present { ", already there" } else { "" }
        ));
        report
            .images
            .push((record.reference.clone(), record.manifest.digest));
    }
    Ok(report)
}

/// One image being vendored.
struct Vendoring<'a> {
    mirror: &'a Mirror,
    registry: &'a mut Registry,
    image: &'a ImageRef,
    counts: &'a mut KindCounts,
}

impl Vendoring<'_> {
    fn image_error(&self, source: OciError) -> OciOpError {
        OciOpError::Image {
            image: self.image.to_string(),
            source,
        }
    }

    /// The image's record, and whether it was already complete in the mirror.
    fn image(&mut self, progress: &mut dyn FetchProgress) -> Result<(ImageRecord, bool)> {
        let key = oci::image_key(self.image);
        key.check()?;
        let index = self.mirror.load_index()?;
        if let Some(record) = oci::read_record(self.mirror, &index, &key)? {
            self.counts.present += record.blobs().count();
            return Ok((record, true));
        }
        let root_digest = self.image.digest;
        let root = self.manifest(&root_digest, SizeRule::AtMost(MAX_MANIFEST_SIZE))?;
        let (index_record, manifest_record, manifest) = match self
            .parse(&root_digest, &root.stored)?
        {
            ManifestDoc::Index(list) => {
                let chosen = list
                    .riscv64(root_digest)
                    .map_err(|e| self.image_error(e))?
                    .clone();
                if chosen.size > MAX_MANIFEST_SIZE {
                    return Err(self.image_error(OciError::Document {
                        what: "manifest",
                        digest: chosen.digest,
                        why: format!("declared {} bytes, over the cap", chosen.size),
                    }));
                }
                let stored = self.manifest(&chosen.digest, SizeRule::Exactly(chosen.size))?;
                let ManifestDoc::Manifest(manifest) = self.parse(&chosen.digest, &stored.stored)?
                else {
                    return Err(self.image_error(OciError::Document {
                        what: "manifest",
                        digest: chosen.digest,
                        why: "the index lists another index as linux/riscv64 image".into(),
                    }));
                };
                let index_record = root.record(list.media_type.clone());
                (
                    Some(index_record),
                    stored.record(chosen.media_type.clone()),
                    manifest,
                )
            }
            ManifestDoc::Manifest(manifest) => {
                (None, root.record(manifest.media_type.clone()), manifest)
            }
        };
        manifest
            .check(manifest_record.digest)
            .map_err(|e| self.image_error(e))?;

        // The config and the layers: announce what is missing, then fetch it.
        let blobs: Vec<_> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .collect();
        let index = self.mirror.load_index()?;
        let mut missing = Vec::new();
        for blob in &blobs {
            if self.present(&index, &blob.digest)?.is_none() {
                missing.push(Wanted {
                    key: oci::blob_key(&blob.digest),
                    url: self.registry.blob_url(self.image, &blob.digest),
                    sha256: *blob.digest.sha256(),
                    size: Some(blob.size),
                });
            }
        }
        if !missing.is_empty() {
            progress.begin(&missing.iter().collect::<Vec<_>>());
        }
        let mut done = 0;
        let mut records = Vec::new();
        for blob in &blobs {
            let fetched = self.blob(&blob.digest, blob.size, done, progress)?;
            if fetched.downloaded {
                done += fetched.stored.size;
                progress.stored(fetched.stored.size);
            }
            if records.is_empty() {
                // The config comes first: a foreign platform is refused before any layer.
                let config_bytes = self.mirror.read_verified(&fetched.stored.cid)?;
                oci::check_config_platform(fetched.digest, &config_bytes)
                    .map_err(|e| self.image_error(e))?;
            }
            records.push(fetched.record(blob.media_type.clone()));
        }
        if !missing.is_empty() {
            progress.end();
        }
        let config = records.remove(0);

        let record = ImageRecord {
            reference: self.image.to_string(),
            digest: root_digest,
            index: index_record,
            manifest: manifest_record,
            platform: oci::PLATFORM.to_owned(),
            config,
            layers: records,
        };
        let bytes = record.to_bytes();
        let stored = self.mirror.put_bytes(&bytes)?;
        let url = self.registry.manifest_url(self.image, &root_digest);
        self.mirror
            .record([(key, Entry::new(&stored, Some(url)))])?;
        Ok((record, false))
    }

    fn registry_error(&self, source: RegistryError) -> OciOpError {
        let host = self.image.api_host();
        let unreachable = matches!(
            &source,
            RegistryError::Download(e) if matches!(**e, DownloadError::Network { .. })
        );
        if unreachable
            && is_loopback(host)
            && self.registry.base_url(self.image).starts_with("https:")
        {
            OciOpError::LoopbackHttps {
                image: self.image.to_string(),
                host: host.to_owned(),
                source,
            }
        } else {
            OciOpError::Registry {
                image: self.image.to_string(),
                source,
            }
        }
    }

    fn parse(&self, digest: &OciDigest, stored: &Stored) -> Result<ManifestDoc> {
        if stored.size > MAX_MANIFEST_SIZE {
            return Err(self.image_error(OciError::Document {
                what: "manifest",
                digest: *digest,
                why: format!("{} bytes, over the {MAX_MANIFEST_SIZE} cap", stored.size),
            }));
        }
        let bytes = self.mirror.read_verified(&stored.cid)?;
        ManifestDoc::parse(*digest, &bytes).map_err(|e| self.image_error(e))
    }

    /// The CID of blob `digest` if the mirror holds it intact.
    fn present(
        &self,
        index: &cmbuild_store::mirror::Index,
        digest: &OciDigest,
    ) -> Result<Option<Stored>> {
        if let Some(entry) = index.get(&oci::blob_key(digest)) {
            if entry.sha256 == *digest.sha256() && self.mirror.has_valid(&entry.cid)? {
                return Ok(Some(Stored {
                    cid: entry.cid,
                    sha256: entry.sha256,
                    size: entry.size,
                }));
            }
        }
        // A blob of at most one chunk is a raw leaf named by its sha256 (say, a crate or
        // package with the same bytes): found without the index.
        let leaf = Cid::new(Codec::Raw, *digest.sha256().as_bytes());
        if self.mirror.has_valid(&leaf)? {
            let size = std::fs::metadata(self.mirror.blob_path(&leaf))
                .map_err(|source| MirrorError::Io {
                    action: "read",
                    path: self.mirror.blob_path(&leaf),
                    source,
                })?
                .len();
            return Ok(Some(Stored {
                cid: leaf,
                sha256: *digest.sha256(),
                size,
            }));
        }
        Ok(None)
    }

    fn manifest(&mut self, digest: &OciDigest, size: SizeRule) -> Result<Fetched> {
        self.get(digest, size, true, &mut |_| {})
    }

    fn blob(
        &mut self,
        digest: &OciDigest,
        size: u64,
        before: u64,
        progress: &mut dyn FetchProgress,
    ) -> Result<Fetched> {
        self.get(digest, SizeRule::Exactly(size), false, &mut |done| {
            progress.bytes(before + done)
        })
    }

    /// Blob `digest` from the mirror, or else from the registry (recorded in the index).
    fn get(
        &mut self,
        digest: &OciDigest,
        size: SizeRule,
        manifest: bool,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<Fetched> {
        let index = self.mirror.load_index()?;
        let key = oci::blob_key(digest);
        let (stored, downloaded) = match self.present(&index, digest)? {
            Some(stored) => {
                self.counts.present += 1;
                (stored, false)
            }
            None => {
                let mut report = |done: u64, _total: Option<u64>| on_bytes(done);
                let fetched = if manifest {
                    self.registry
                        .fetch_manifest(self.image, digest, size, self.mirror, &mut report)
                } else {
                    let (SizeRule::Exactly(n) | SizeRule::AtMost(n)) = size;
                    self.registry
                        .fetch_blob(self.image, digest, n, self.mirror, &mut report)
                };
                let stored = fetched.map_err(|source| self.registry_error(source))?;
                self.counts.downloaded += 1;
                self.counts.bytes += stored.size;
                (stored, true)
            }
        };
        if let SizeRule::Exactly(declared) = size {
            if stored.size != declared {
                return Err(OciOpError::Size {
                    image: self.image.to_string(),
                    digest: *digest,
                    declared,
                    actual: stored.size,
                });
            }
        }
        if index.get(&key).map(|e| e.cid) != Some(stored.cid) {
            let url = if manifest {
                self.registry.manifest_url(self.image, digest)
            } else {
                self.registry.blob_url(self.image, digest)
            };
            self.mirror
                .record([(key, Entry::new(&stored, Some(url)))])?;
        }
        Ok(Fetched {
            digest: *digest,
            stored,
            downloaded,
        })
    }
}

/// A blob now in the mirror.
struct Fetched {
    digest: OciDigest,
    stored: Stored,
    downloaded: bool,
}

impl Fetched {
    fn record(&self, media_type: String) -> BlobRecord {
        BlobRecord {
            media_type,
            digest: self.digest,
            size: self.stored.size,
            cid: self.stored.cid,
        }
    }
}
