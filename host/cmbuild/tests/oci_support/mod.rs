//! Helpers shared by the container-image tests: synthetic images, images assembled from
//! Debian riscv64 packages, and Debian's `docker-registry` on a loopback port with the push
//! API (blob uploads, manifest PUTs) driven from the test.

// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cmbuild_store::oci;
use cmbuild_store::sha256::Sha256;

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::of(bytes))
}

/// A synthetic single-layer image for one architecture.
pub struct TestImage {
    /// The layer (a gzipped tarball).
    pub layer: Vec<u8>,
    /// The image config.
    pub config: Vec<u8>,
    /// The manifest.
    pub manifest: Vec<u8>,
}

/// The media types of the OCI form or of Docker's schema 2.
#[derive(Clone, Copy)]
pub struct Form {
    pub index: &'static str,
    pub manifest: &'static str,
    pub config: &'static str,
    pub layer: &'static str,
}

pub const OCI: Form = Form {
    index: oci::MEDIA_OCI_INDEX,
    manifest: oci::MEDIA_OCI_MANIFEST,
    config: oci::MEDIA_OCI_CONFIG,
    layer: "application/vnd.oci.image.layer.v1.tar+gzip",
};

pub const DOCKER: Form = Form {
    index: oci::MEDIA_DOCKER_LIST,
    manifest: oci::MEDIA_DOCKER_MANIFEST,
    config: oci::MEDIA_DOCKER_CONFIG,
    layer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
};

impl TestImage {
    pub fn new(arch: &str, config_arch: &str) -> TestImage {
        TestImage::of_form(arch, config_arch, OCI)
    }

    pub fn of_form(arch: &str, config_arch: &str, form: Form) -> TestImage {
        // A tarball with one file, as an image layer.
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("hello from a {arch} base image\n");
        let mut header = tar::Header::new_ustar();
        header.set_path("etc/greeting").unwrap();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append(&header, content.as_bytes()).unwrap();
        TestImage::from_layer(&tar.into_inner().unwrap(), config_arch, form)
    }

    /// An image of one layer, the gzipped `tar`, whose config declares `config_arch`.
    pub fn from_layer(tar: &[u8], config_arch: &str, form: Form) -> TestImage {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": config_arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": form.manifest,
            "config": {
                "mediaType": form.config,
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": form.layer,
                "digest": digest(&layer),
                "size": layer.len(),
            }],
        }))
        .unwrap();
        TestImage {
            layer,
            config,
            manifest,
        }
    }
}

pub fn index_of(entries: &[(&TestImage, &str)]) -> Vec<u8> {
    index_of_form(entries, OCI)
}

pub fn index_of_form(entries: &[(&TestImage, &str)], form: Form) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(image, arch)| {
            serde_json::json!({
                "mediaType": form.manifest,
                "digest": digest(&image.manifest),
                "size": image.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": form.index,
        "manifests": manifests,
    }))
    .unwrap()
}

/// Kills a child process (one this test started) when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's docker-registry on a free loopback port, storing under a temporary directory.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    process: Option<Running>,
    _dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl TestRegistry {
    pub fn start() -> TestRegistry {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect(
                "Debian's docker-registry is not installed: `apt-get install docker-registry` \
                 (.ci/install-deps does it)",
            );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        // Port 0: the registry picks a free port and logs it, so that two tests never race
        // for one.
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: cmbuild-test\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let process = Running(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Reads the log to its end (so the registry never blocks on a full pipe).
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("msg=\"listening on ").nth(1) {
                    let _ = tx.send(rest.split('"').next().unwrap_or("").to_owned());
                }
            }
        });
        let host = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("docker-registry never said where it listens");
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.get(&format!("http://{host}/v2/")).call().is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "docker-registry never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestRegistry {
            host,
            process: Some(process),
            _dir: dir,
            agent,
        }
    }

    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Monolithic blob upload: POST an upload session, PUT the bytes with their digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) {
        let response = self
            .agent
            .post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.host))
            .call()
            .unwrap();
        assert_eq!(response.status(), 202);
        let location = response.header("location").unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.host)
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = self
            .agent
            .put(&format!("{location}{separator}digest={}", digest(bytes)))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let response = self
            .agent
            .put(&format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.host
            ))
            .set("Content-Type", media_type)
            .send_bytes(bytes)
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    pub fn push_image(&self, repo: &str, image: &TestImage) {
        self.push_image_of_form(repo, image, OCI)
    }

    pub fn push_image_of_form(&self, repo: &str, image: &TestImage, form: Form) {
        self.push_blob(repo, &image.layer);
        self.push_blob(repo, &image.config);
        self.push_manifest(
            repo,
            &digest(&image.manifest),
            form.manifest,
            &image.manifest,
        );
    }
}

/// Pushes `debian/busybox:trixie` to `registry`: an index listing an amd64 image and a
/// riscv64 one made of Debian's riscv64 busybox-static (merged /usr, `sh`). Returns the
/// riscv64 image and the index's bytes.
pub fn push_busybox_base(registry: &TestRegistry) -> (TestImage, Vec<u8>) {
    let layer_tar = debian_riscv64_layer(
        &["busybox-static"],
        &[("bin", "usr/bin"), ("usr/bin/sh", "busybox")],
    );
    let base = TestImage::from_layer(&layer_tar, "riscv64", OCI);
    let other = TestImage::new("amd64", "amd64");
    registry.push_image("debian/busybox", &base);
    registry.push_image("debian/busybox", &other);
    let index = index_of(&[(&other, "amd64"), (&base, "riscv64")]);
    registry.push_manifest("debian/busybox", "trixie", oci::MEDIA_OCI_INDEX, &index);
    (base, index)
}

/// A layer tarball (uncompressed) holding the files of the named riscv64 packages of the
/// shipped guest-image lock (the base's or the default toolchain layer's), plus `symlinks` (path, target). The packages are downloaded once,
/// checked against the lock, into `$CMBUILD_CACHE/oci-test-debs` (a mirror). Entries have
/// owner 0, mtime 0, in package then archive order.
pub fn debian_riscv64_layer(packages: &[&str], symlinks: &[(&str, &str)]) -> Vec<u8> {
    use cmbuild_image::deb::{extract_deb, Node};
    let lock = cmbuild_image::lock::shipped_lock().unwrap();
    // The default toolchain's layer too: its packages are downloaded from the same archive.
    let toolchains = cmbuild_image::layers::shipped().unwrap();
    let toolchain = toolchains.toolchains[&toolchains.default].clone();
    let cache = cmbuild_image::http::default_cache_dir()
        .expect("a cache directory ($CMBUILD_CACHE or ~/.cache/cmbuild)")
        .join("oci-test-debs");
    let mirror = cmbuild_store::mirror::Mirror::open(&cache).unwrap();
    let downloader = cmbuild_store::download::Downloader::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header
    };
    for name in packages {
        let package = lock
            .packages
            .iter()
            .chain(&toolchain.packages)
            .find(|p| p.name == *name && matches!(p.architecture.as_str(), "riscv64" | "all"))
            .unwrap_or_else(|| panic!("{name} (riscv64) is not in the guest-image locks"));
        if !mirror.has_valid(&package.cid).unwrap() {
            let stored = downloader
                .fetch_to_mirror(
                    &lock.url_of(package),
                    &package.sha256,
                    Some(package.size),
                    &mirror,
                    &mut |_, _| {},
                )
                .unwrap_or_else(|e| panic!("downloading {name}: {e}"));
            assert_eq!(stored.cid, package.cid);
        }
        let deb = mirror.read_verified(&package.cid).unwrap();
        for entry in extract_deb(&deb).unwrap() {
            if entry.path.is_empty() || !seen.insert(entry.path.clone()) {
                continue;
            }
            match &entry.node {
                Node::Dir => {
                    let mut h = header(tar::EntryType::Directory, entry.mode, 0);
                    builder
                        .append_data(&mut h, &entry.path, std::io::empty())
                        .unwrap();
                }
                Node::File(bytes) => {
                    let mut h = header(tar::EntryType::Regular, entry.mode, bytes.len() as u64);
                    builder
                        .append_data(&mut h, &entry.path, &bytes[..])
                        .unwrap();
                }
                Node::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    builder.append_link(&mut h, &entry.path, target).unwrap();
                }
                Node::Hardlink(target) => {
                    let mut h = header(tar::EntryType::Link, entry.mode, 0);
                    builder.append_link(&mut h, &entry.path, target).unwrap();
                }
            }
        }
    }
    for (path, target) in symlinks {
        if seen.insert((*path).to_owned()) {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            builder.append_link(&mut h, path, target).unwrap();
        }
    }
    builder.into_inner().unwrap()
}
