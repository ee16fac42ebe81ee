//! `cmbuild vendor --oci-image` / `--dockerfile` against real registries, on loopback only.
//!
//! - Debian's `docker-registry` (the CNCF distribution registry, package `docker-registry`,
//!   installed by `.ci/install-deps`), started by each test on a loopback port it picks
//!   itself, with a fresh storage directory and a generated config. The test builds a small synthetic image
//!   (a layer tarball, a config, a manifest) for riscv64 and amd64 and an index listing both,
//!   and pushes them through the registry's push API (blob uploads, manifest PUTs).
//! - A lying registry: a small HTTP server in the test that serves wrong bytes, too many
//!   bytes, an oversized manifest, a foreign config, or wants an anonymous bearer token.
//! - A base image assembled from Debian riscv64 packages (busybox-static, pinned by the
//!   guest-image lock) whose vendored layer runs under qemu-riscv64.
//!
//! No test reaches a public registry (this machine reaches no Docker registry at all).

mod oci_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use cmbuild_store::mirror::Mirror;
use cmbuild_store::oci::{self, OciDigest};
use cmbuild_store::sha256::Sha256;
use oci_support::{digest, index_of, index_of_form, TestImage, TestRegistry, DOCKER};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

fn cmbuild_vendor(mirror: &Path, args: &[&str]) -> Output {
    Command::new(CMBUILD)
        .arg("vendor")
        .arg("--mirror")
        .arg(mirror)
        .args(args)
        .current_dir(mirror.parent().unwrap())
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn index_keys(mirror: &Path) -> Vec<String> {
    let Ok(text) = fs::read(mirror.join("index.json")) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    json["entries"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn blob_files(mirror: &Path) -> Vec<String> {
    let Ok(listing) = fs::read_dir(mirror.join("blobs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

#[test]
fn vendors_riscv64_images_from_a_real_registry_by_reference_and_dockerfile() {
    let mut registry = TestRegistry::start();
    let riscv = TestImage::new("riscv64", "riscv64");
    let amd = TestImage::new("amd64", "amd64");
    registry.push_image("test/base", &riscv);
    registry.push_image("test/base", &amd);
    let index = index_of(&[(&amd, "amd64"), (&riscv, "riscv64")]);
    registry.push_manifest("test/base", "v1", oci::MEDIA_OCI_INDEX, &index);
    let host = registry.host.clone();
    let reference = format!("{host}/test/base:v1@{}", digest(&index));

    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");

    // Plain HTTP is never the default: without --insecure-registry, HTTPS to a plain server fails.
    let refused = cmbuild_vendor(&mirror, &["--oci-image", &reference]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(&format!("allow that with --insecure-registry {host}")),
        "{}",
        stderr(&refused)
    );
    assert!(index_keys(&mirror).is_empty(), "{:?}", index_keys(&mirror));

    let first = cmbuild_vendor(
        &mirror,
        &["--oci-image", &reference, "--insecure-registry", &host],
    );
    let text = stderr(&first);
    eprintln!("first vendor:\n{text}");
    assert!(first.status.success(), "{text}");
    assert!(text.contains("1 OCI images (linux/riscv64)"), "{text}");
    assert!(text.contains("OCI blobs: 4 downloaded"), "{text}");
    assert!(
        !text.contains("crates"),
        "images only, no Cargo.toml here: {text}"
    );

    // The index, the riscv64 manifest, its config and layer; nothing of amd64.
    let mut wanted: Vec<String> = [&index, &riscv.manifest, &riscv.config, &riscv.layer]
        .iter()
        .map(|b| format!("oci-blob/sha256/{}", Sha256::of(b)))
        .collect();
    wanted.push(format!("oci-image/{}+test+base/{}", host, digest(&index)));
    wanted.sort();
    assert_eq!(index_keys(&mirror), wanted);

    // Offline, by digest alone: the record names every blob, each readable, verified.
    let store = Mirror::open(&mirror).unwrap();
    let index_digest: OciDigest = digest(&index).parse().unwrap();
    let record = oci::find_image(&store, &index_digest).unwrap();
    assert_eq!(
        record.reference,
        format!("{host}/test/base:v1@{}", digest(&index))
    );
    assert_eq!(record.manifest.digest.to_string(), digest(&riscv.manifest));
    assert_eq!(record.index.as_ref().unwrap().digest, index_digest);
    assert_eq!(
        store.read_verified(&record.config.cid).unwrap(),
        riscv.config
    );
    assert_eq!(record.layers.len(), 1);
    assert_eq!(
        store.read_verified(&record.layers[0].cid).unwrap(),
        riscv.layer
    );
    assert_eq!(record.layers[0].size, riscv.layer.len() as u64);

    // A Dockerfile naming the same image (by index), the riscv64 manifest directly, stages.
    let dockerfile = tmp.path().join("Dockerfile");
    fs::write(
        &dockerfile,
        format!(
            "ARG BASE={reference}\n\
             FROM --platform=$BUILDPLATFORM $BASE AS build\n\
             RUN echo building\n\
             FROM {host}/test/base@{}\n\
             COPY --from=build /etc/greeting /greeting\n\
             FROM scratch\n",
            digest(&riscv.manifest)
        ),
    )
    .unwrap();
    let dockerfile_arg = dockerfile.to_str().unwrap();
    let fresh = tmp.path().join("mirror2");
    let from_dockerfile = cmbuild_vendor(
        &fresh,
        &["--dockerfile", dockerfile_arg, "--insecure-registry", &host],
    );
    let text = stderr(&from_dockerfile);
    assert!(from_dockerfile.status.success(), "{text}");
    assert!(text.contains("2 OCI images"), "{text}");
    // Four blobs fetched for the first image; the second shares them all.
    assert!(text.contains("OCI blobs: 4 downloaded"), "{text}");
    let store2 = Mirror::open(&fresh).unwrap();
    let bases = cmbuild::ops::oci::vendored_bases(&store2, &dockerfile).unwrap();
    let lines: Vec<usize> = bases.iter().map(|(b, _)| b.line).collect();
    assert_eq!(lines, [2, 4]);
    assert_eq!(bases[0].1.digest.to_string(), digest(&index));
    // The first mirror holds the image by index: its riscv64 manifest is found by digest too.
    let bases_in_first = cmbuild::ops::oci::vendored_bases(&store, &dockerfile).unwrap();
    assert_eq!(bases_in_first[1].1.layers, record.layers);
    assert_eq!(
        bases_in_first[1].1.digest.to_string(),
        digest(&riscv.manifest)
    );
    // An image never vendored is named by its digest.
    let other = tmp.path().join("Dockerfile.other");
    let absent = format!("sha256:{}", "7".repeat(64));
    fs::write(&other, format!("FROM {host}/test/base@{absent}\n")).unwrap();
    let err = cmbuild::ops::oci::vendored_bases(&store, &other).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("no image with digest {absent}")),
        "{err}"
    );
    let by_manifest: OciDigest = digest(&riscv.manifest).parse().unwrap();
    let direct = oci::find_image(&store2, &by_manifest).unwrap();
    assert!(direct.index.is_none());
    assert_eq!(direct.layers, record.layers);

    // With the registry gone, vendoring again succeeds from the mirror alone: nothing fetched.
    registry.stop();
    for (dir, args) in [
        (&mirror, vec!["--oci-image", reference.as_str()]),
        (&fresh, vec!["--dockerfile", dockerfile_arg]),
    ] {
        let mut args = args.clone();
        args.extend(["--insecure-registry", host.as_str()]);
        let again = cmbuild_vendor(dir, &args);
        let text = stderr(&again);
        eprintln!("vendor again:\n{text}");
        assert!(again.status.success(), "{text}");
        assert!(text.contains("OCI blobs: 0 downloaded (0 B)"), "{text}");
        assert!(text.contains("were already there"), "{text}");
    }
}

/// A base image assembled from Debian's riscv64 busybox-static (pinned by the guest-image
/// lock), pushed to the registry, vendored through a Dockerfile; then, from the mirror alone,
/// its layer is unpacked and its busybox runs under qemu-riscv64 on the host.
/// Needs deb.debian.org once (about 1 MB, cached in `$CMBUILD_CACHE/oci-test-debs`).
#[test]
fn a_debian_riscv64_base_image_vendored_from_the_registry_runs_under_qemu() {
    let registry = TestRegistry::start();
    let (base, index) = oci_support::push_busybox_base(&registry);

    let tmp = tempfile::tempdir().unwrap();
    let host = registry.host.clone();
    let dockerfile = tmp.path().join("Dockerfile");
    fs::write(
        &dockerfile,
        format!(
            "FROM {host}/debian/busybox:trixie@{}\nRUN busybox echo built\n",
            digest(&index)
        ),
    )
    .unwrap();
    let mirror = tmp.path().join("mirror");
    let out = cmbuild_vendor(
        &mirror,
        &[
            "--dockerfile",
            dockerfile.to_str().unwrap(),
            "--insecure-registry",
            &host,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    drop(registry);

    let store = Mirror::open(&mirror).unwrap();
    let bases = cmbuild::ops::oci::vendored_bases(&store, &dockerfile).unwrap();
    assert_eq!(bases.len(), 1);
    let record = &bases[0].1;
    assert_eq!(record.manifest.digest.to_string(), digest(&base.manifest));
    let layer = store.read_verified(&record.layers[0].cid).unwrap();
    let root = tmp.path().join("rootfs");
    tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]))
        .unpack(&root)
        .unwrap();
    let busybox = root.join("usr/bin/busybox");
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let elf = fs::read(&busybox).unwrap();
    // ELF, 64-bit, machine 243 (RISC-V).
    assert_eq!(&elf[..5], b"\x7fELF\x02");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 243);
    let run = Command::new("qemu-riscv64")
        .arg(&busybox)
        .args(["echo", "hello from the vendored riscv64 base"])
        .output()
        .expect("qemu-riscv64 runs (package qemu-user, installed by .ci/install-deps)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from the vendored riscv64 base\n"
    );
}

#[test]
fn docker_schema_2_manifest_lists_are_read_too() {
    let registry = TestRegistry::start();
    let riscv = TestImage::of_form("riscv64", "riscv64", DOCKER);
    let amd = TestImage::of_form("amd64", "amd64", DOCKER);
    registry.push_image_of_form("test/docker", &riscv, DOCKER);
    registry.push_image_of_form("test/docker", &amd, DOCKER);
    let list = index_of_form(&[(&amd, "amd64"), (&riscv, "riscv64")], DOCKER);
    registry.push_manifest("test/docker", "v2", oci::MEDIA_DOCKER_LIST, &list);

    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    let host = registry.host.clone();
    let out = cmbuild_vendor(
        &mirror,
        &[
            "--oci-image",
            &format!("{host}/test/docker:v2@{}", digest(&list)),
            "--insecure-registry",
            &host,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let store = Mirror::open(&mirror).unwrap();
    let record = oci::find_image(&store, &digest(&list).parse().unwrap()).unwrap();
    assert_eq!(record.index.unwrap().media_type, oci::MEDIA_DOCKER_LIST);
    assert_eq!(record.manifest.media_type, oci::MEDIA_DOCKER_MANIFEST);
    assert_eq!(record.manifest.digest.to_string(), digest(&riscv.manifest));
    assert_eq!(record.config.media_type, oci::MEDIA_DOCKER_CONFIG);
    assert_eq!(record.layers[0].media_type, DOCKER.layer);
    assert_eq!(
        store.read_verified(&record.layers[0].cid).unwrap(),
        riscv.layer
    );
}

#[test]
fn an_index_without_riscv64_is_refused_listing_its_platforms() {
    let registry = TestRegistry::start();
    let amd = TestImage::new("amd64", "amd64");
    let arm = TestImage::new("arm64", "arm64");
    registry.push_image("test/foreign", &amd);
    registry.push_image("test/foreign", &arm);
    let index = index_of(&[(&amd, "amd64"), (&arm, "arm64")]);
    registry.push_manifest("test/foreign", "latest", oci::MEDIA_OCI_INDEX, &index);

    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    let host = registry.host.clone();
    let out = cmbuild_vendor(
        &mirror,
        &[
            "--oci-image",
            &format!("{host}/test/foreign@{}", digest(&index)),
            "--insecure-registry",
            &host,
        ],
    );
    let text = stderr(&out);
    eprintln!("no riscv64:\n{text}");
    assert!(!out.status.success());
    assert!(
        text.contains("has no linux/riscv64 image (it has: linux/amd64, linux/arm64)"),
        "{text}"
    );
    assert!(
        text.contains("foreign-architecture bases are refused"),
        "{text}"
    );
    assert!(
        !index_keys(&mirror)
            .iter()
            .any(|k| k.starts_with("oci-image/")),
        "{:?}",
        index_keys(&mirror)
    );

    // The amd64 manifest named directly is refused too: its config says amd64.
    let out = cmbuild_vendor(
        &mirror,
        &[
            "--oci-image",
            &format!("{host}/test/foreign@{}", digest(&amd.manifest)),
            "--insecure-registry",
            &host,
        ],
    );
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("is for linux/amd64, not linux/riscv64"),
        "{text}"
    );
}

#[test]
fn a_dockerfile_without_digests_is_refused_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dockerfile = tmp.path().join("Dockerfile");
    fs::write(
        &dockerfile,
        format!(
            "FROM debian@sha256:{} AS a\n# a comment\nFROM rust:1.85-slim\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let mirror = tmp.path().join("mirror");
    let out = cmbuild_vendor(&mirror, &["--dockerfile", dockerfile.to_str().unwrap()]);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("{}:3:", dockerfile.display())),
        "{text}"
    );
    assert!(text.contains("FROM rust:1.85-slim"), "{text}");
    assert!(text.contains("@sha256:<digest>"), "{text}");
    assert!(!mirror.join("index.json").exists());

    // Plain HTTP only for loopback registries.
    let out = cmbuild_vendor(
        &mirror,
        &[
            "--oci-image",
            &format!("10.1.2.3:5000/x@sha256:{}", "1".repeat(64)),
            "--insecure-registry",
            "10.1.2.3:5000",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("loopback registries only"),
        "{}",
        stderr(&out)
    );
}

/// What the lying registry answers for one path.
#[derive(Clone)]
enum Answer {
    /// 200 with a Content-Length.
    Body(Vec<u8>),
    /// 200 without a Content-Length: the body ends when the connection closes.
    Unsized(Vec<u8>),
    /// 307 to this path.
    Redirect(String),
}

/// An HTTP server in the test: answers from a table, optionally wanting a bearer token for
/// /v2/ paths (handed out at /token; other paths, such as a redirect's target, want none),
/// and logs every request (path, Accept, Authorization).
struct Liar {
    host: String,
    log: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl Liar {
    fn start(routes: BTreeMap<String, Answer>, want_token: bool) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        let realm = format!("http://{host}/token");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &routes, want_token, &realm, &seen);
            }
        });
        Liar { host, log }
    }

    fn requests(&self) -> Vec<(String, String, String)> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    stream: TcpStream,
    routes: &BTreeMap<String, Answer>,
    want_token: bool,
    realm: &str,
    log: &Mutex<Vec<(String, String, String)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let (mut accept, mut auth) = (String::new(), String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if lower.starts_with("accept:") {
            accept = header[7..].trim().to_owned();
        } else if lower.starts_with("authorization:") {
            auth = header[14..].trim().to_owned();
        }
    }
    log.lock()
        .unwrap()
        .push((path.clone(), accept.clone(), auth.clone()));
    let mut stream = stream;
    let respond = |stream: &mut TcpStream, head: String, body: &[u8]| {
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    if path.starts_with("/token") {
        let body = br#"{"token":"anonymous-token-1"}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        return respond(&mut stream, head, body);
    }
    if want_token && path.starts_with("/v2/") && auth != "Bearer anonymous-token-1" {
        let head = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",\
             service=\"liar\",scope=\"repository:test/base:pull\"\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        return respond(&mut stream, head, b"");
    }
    match routes.get(&path) {
        Some(Answer::Body(body)) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            respond(&mut stream, head, body)
        }
        Some(Answer::Redirect(to)) => {
            let head = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            respond(&mut stream, head, b"")
        }
        Some(Answer::Unsized(body)) => respond(
            &mut stream,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
            body,
        ),
        None => respond(
            &mut stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            b"",
        ),
    }
}

/// The routes that serve `image` (and its index) honestly.
fn honest_routes(index: &[u8], image: &TestImage) -> BTreeMap<String, Answer> {
    let mut routes = BTreeMap::new();
    routes.insert(
        format!("/v2/test/base/manifests/{}", digest(index)),
        Answer::Body(index.to_vec()),
    );
    routes.insert(
        format!("/v2/test/base/manifests/{}", digest(&image.manifest)),
        Answer::Body(image.manifest.clone()),
    );
    for blob in [&image.config, &image.layer] {
        routes.insert(
            format!("/v2/test/base/blobs/{}", digest(blob)),
            Answer::Body(blob.clone()),
        );
    }
    routes
}

/// Vendors `test/base@index` from `liar` into a fresh mirror.
fn vendor_from(liar: &Liar, index: &[u8], mirror: &Path) -> Output {
    cmbuild_vendor(
        mirror,
        &[
            "--oci-image",
            &format!("{}/test/base@{}", liar.host, digest(index)),
            "--insecure-registry",
            &liar.host,
        ],
    )
}

/// After a refused vendor: no image record, no temporary file, no blob with `bad` bytes.
fn assert_nothing_half_written(mirror: &Path, bad: &[u8]) {
    let keys = index_keys(mirror);
    assert!(
        !keys.iter().any(|k| k.starts_with("oci-image/")),
        "{keys:?}"
    );
    let files = blob_files(mirror);
    assert!(!files.iter().any(|f| f.starts_with(".tmp")), "{files:?}");
    let bad_cid = cmbuild_store::cid::cid_of_bytes(bad).to_string();
    assert!(!files.contains(&bad_cid), "{files:?}");
    // What is there is whole and verified.
    let report = Mirror::open(mirror).unwrap().verify_all().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_lying_registry_is_refused_and_nothing_is_half_written() {
    let image = TestImage::new("riscv64", "riscv64");
    let index = index_of(&[(&image, "riscv64")]);
    let layer_path = format!("/v2/test/base/blobs/{}", digest(&image.layer));
    let tmp = tempfile::tempdir().unwrap();

    // Wrong bytes, of the right length.
    let mut wrong = image.layer.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 0xff;
    let mut routes = honest_routes(&index, &image);
    routes.insert(layer_path.clone(), Answer::Body(wrong.clone()));
    let liar = Liar::start(routes, false);
    let mirror = tmp.path().join("wrong");
    let out = vendor_from(&liar, &index, &mirror);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("sha256 mismatch") && text.contains(hex(&digest(&image.layer))),
        "{text}"
    );
    assert_nothing_half_written(&mirror, &wrong);

    // Too many bytes, with no Content-Length to warn: refused at one byte past the descriptor.
    let mut longer = image.layer.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    let mut routes = honest_routes(&index, &image);
    routes.insert(layer_path.clone(), Answer::Unsized(longer.clone()));
    let liar = Liar::start(routes, false);
    let mirror = tmp.path().join("longer");
    let out = vendor_from(&liar, &index, &mirror);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!(
            "sends more than the {} bytes expected",
            image.layer.len()
        )),
        "{text}"
    );
    assert_nothing_half_written(&mirror, &longer);

    // A root manifest over the cap (its digest is what was asked for, but it is too big).
    let mut huge = b"{\"schemaVersion\":2,\"manifests\":[]".to_vec();
    huge.resize(oci::MAX_MANIFEST_SIZE as usize + 10, b' ');
    huge.push(b'}');
    let mut routes = BTreeMap::new();
    routes.insert(
        format!("/v2/test/base/manifests/{}", digest(&huge)),
        Answer::Unsized(huge.clone()),
    );
    let liar = Liar::start(routes, false);
    let mirror = tmp.path().join("huge");
    let out = vendor_from(&liar, &huge, &mirror);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!(
            "sends more than the {} bytes",
            oci::MAX_MANIFEST_SIZE
        )),
        "{text}"
    );
    assert_nothing_half_written(&mirror, &huge);

    // An index that says riscv64 for a manifest whose config says amd64.
    let disguised = TestImage::new("riscv64", "amd64");
    let disguised_index = index_of(&[(&disguised, "riscv64")]);
    let liar = Liar::start(honest_routes(&disguised_index, &disguised), false);
    let mirror = tmp.path().join("disguised");
    let out = vendor_from(&liar, &disguised_index, &mirror);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("is for linux/amd64, not linux/riscv64"),
        "{text}"
    );
    assert_nothing_half_written(&mirror, b"");
    // Refused on its config, before any layer was asked for.
    let layer_path = format!("/v2/test/base/blobs/{}", digest(&disguised.layer));
    let requests = liar.requests();
    assert!(!requests.iter().any(|r| r.0 == layer_path), "{requests:?}");
}

#[test]
fn anonymous_bearer_tokens_then_a_second_vendor_fetches_nothing() {
    let image = TestImage::new("riscv64", "riscv64");
    let index = index_of(&[(&image, "riscv64")]);
    // The layer is served elsewhere, after a redirect, like Docker Hub's CDN.
    let mut routes = honest_routes(&index, &image);
    let layer_path = format!("/v2/test/base/blobs/{}", digest(&image.layer));
    let layer = routes.remove(&layer_path).unwrap();
    routes.insert(layer_path, Answer::Redirect("/cdn/layer".to_owned()));
    routes.insert("/cdn/layer".to_owned(), layer);
    let liar = Liar::start(routes, true);
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    let out = vendor_from(&liar, &index, &mirror);
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = liar.requests();
    let tokens = requests
        .iter()
        .filter(|r| r.0.starts_with("/token"))
        .count();
    assert_eq!(tokens, 1, "one token for the repository: {requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.0 == "/token?service=liar&scope=repository%3Atest%2Fbase%3Apull"),
        "{requests:?}"
    );
    // The manifest requests asked for all four manifest forms.
    let manifest_request = requests
        .iter()
        .find(|r| r.0.contains("/manifests/") && !r.2.is_empty())
        .unwrap();
    for media in [
        oci::MEDIA_OCI_INDEX,
        oci::MEDIA_OCI_MANIFEST,
        oci::MEDIA_DOCKER_LIST,
        oci::MEDIA_DOCKER_MANIFEST,
    ] {
        assert!(manifest_request.1.contains(media), "{manifest_request:?}");
    }
    // The token went to the registry only, not to where the redirect led.
    let cdn = requests.iter().find(|r| r.0 == "/cdn/layer").unwrap();
    assert_eq!(cdn.2, "", "{requests:?}");
    let before = requests.len();
    let again = vendor_from(&liar, &index, &mirror);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        liar.requests().len(),
        before,
        "the second vendor made requests"
    );
    let mut buf = String::new();
    let _ = (&again.stderr[..]).read_to_string(&mut buf);
    assert!(
        buf.contains("OCI blobs: 0 downloaded (0 B), 4 already there"),
        "{buf}"
    );
}
