//! Fault injection: `kill -9` at seeded random points of `cmbuild vendor` and
//! `cmbuild machine run --store`, then a re-run; and a full disk (a small tmpfs) under the
//! mirror and under a snapshot.
//!
//! After every kill: `cmbuild mirror verify` is clean (every blob under its final name is
//! whole, the index loads and names only present blobs), no half-written file or directory
//! sits under a final name, and the next run removes the killed run's temporaries and
//! finishes. `cmbuild run`'s output publishing has its own kill test (tests/run_outputs.rs);
//! `cmbuild image build` needs the ~550 MB of locked Debian packages and is not killed here
//! (its files and `digests.lock.env` go through `cmbuild_store::atomic`, which has its own
//! tests).
//!
//! The kill points: `CMBUILD_FAULT_POINTS` per command (default 4; the heavy `--ignored` run
//! has its own tests with 40 and other seeds),
//! drawn from `CMBUILD_FAULT_SEED` (printed, so a failure can be replayed) over the length of
//! an uninterrupted run of the same command: every other point uniformly, the rest in its
//! last 40 % (where the results are written).
//!
//! The vendor source is a loopback HTTP server serving a fake crate set (no internet). The
//! machine program is tests/stall/idle.S, assembled with Debian's riscv64-linux-gnu-gcc
//! (SKIP without it, failure under CI=true). The disk-full tests mount a 2 MiB tmpfs, which
//! needs root: they print a loud SKIP when the mount fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

/// splitmix64: a small seeded generator (no dependency, same sequence everywhere).
struct Rng(u64);

impl Rng {
    /// The generator of `CMBUILD_FAULT_SEED` (or a fixed default) plus `salt`.
    fn from_env(salt: u64) -> Rng {
        let seed = std::env::var("CMBUILD_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_fa17u64);
        eprintln!("fault injection: CMBUILD_FAULT_SEED={seed} (salt {salt})");
        Rng(seed.wrapping_add(salt.wrapping_mul(0x1234_5678_9abc_def1)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A delay in `[0, span)`.
    fn delay(&mut self, span: Duration) -> Duration {
        let micros = span.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % micros)
    }

    /// The kill point of point `i`: even points anywhere in `span`, odd ones in its last
    /// 40 % (where a command writes its results), so that a short run covers both.
    fn point(&mut self, i: usize, span: Duration) -> Duration {
        if i % 2 == 0 {
            self.delay(span)
        } else {
            span.mul_f64(0.6) + self.delay(span.mul_f64(0.4))
        }
    }
}

/// Kill points per command: `CMBUILD_FAULT_POINTS`, else `default`.
fn points(default: usize) -> usize {
    std::env::var("CMBUILD_FAULT_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Kill points per command in the default run.
const DEFAULT_POINTS: usize = 4;
/// Kill points per command in the heavy run (`--ignored`).
const HEAVY_POINTS: usize = 40;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts `cmd`, kills it with SIGKILL after `delay` (if it has not ended), and says
/// whether it was killed.
fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Every name in `dir` (not recursive), sorted.
fn names(dir: &Path) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// cmbuild vendor against a loopback crate server

/// Serves `crates` (URL path -> bytes) on loopback, slowly enough (64 KiB then a pause)
/// that a kill can land inside a download. Returns the base URL.
fn serve_crates(crates: BTreeMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/crates", listener.local_addr().unwrap());
    let crates = Arc::new(crates);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let crates = Arc::clone(&crates);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("");
                let Some(body) = crates.get(path) else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in body.chunks(64 << 10) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
    });
    base
}

/// A `.crate` file: `NAME-VERSION/` with a manifest, a library and `len` bytes of
/// pseudo-random data (the bulk, so that a kill can land inside a download or an unpack).
fn make_crate(name: &str, version: &str, len: usize, rng: &mut Rng) -> Vec<u8> {
    let data: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| rng.next().to_le_bytes())
        .take(len)
        .collect();
    let manifest =
        format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\n");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (file, bytes) in [
        ("Cargo.toml", manifest.as_bytes()),
        ("src/lib.rs", b"pub fn f() {}\n".as_slice()),
        ("data.bin", &data),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1);
        header.set_cksum();
        tar.append_data(&mut header, format!("{name}-{version}/{file}"), bytes)
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A project whose Cargo.lock names `n` fake crates.io packages (300 KiB to 1.3 MiB
/// each), served on loopback; returns the project and the server's base URL.
fn fake_project(dir: &Path, n: usize) -> (PathBuf, String) {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"faulty\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(project.join("src/main.rs"), "fn main() {}\n").unwrap();
    let mut lock =
        String::from("version = 4\n\n[[package]]\nname = \"faulty\"\nversion = \"0.1.0\"\n");
    let mut crates = BTreeMap::new();
    let mut rng = Rng(n as u64);
    for i in 0..n {
        let name = format!("fake-{i}");
        let version = format!("1.0.{i}");
        let len = (300 << 10) + (rng.next() % (1 << 20)) as usize;
        let bytes = make_crate(&name, &version, len, &mut rng);
        let sha = hex(&Sha256::digest(&bytes));
        lock.push_str(&format!(
            "\n[[package]]\nname = \"{name}\"\nversion = \"{version}\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{sha}\"\n"
        ));
        crates.insert(format!("/crates/{name}/{name}-{version}.crate"), bytes);
    }
    std::fs::write(project.join("Cargo.lock"), lock).unwrap();
    (project, serve_crates(crates))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn vendor_cmd(project: &Path, mirror: &Path, base: &str) -> Command {
    let mut cmd = Command::new(CMBUILD);
    cmd.args(["vendor", "--crates-only", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .arg("--mirror")
        .arg(mirror)
        .env("CMBUILD_CRATES_URL", base);
    cmd
}

/// [`vendor_cmd`] that also writes the offline cargo config `config` and its directory
/// source (`config` with extension `crates`).
fn vendor_config_cmd(project: &Path, mirror: &Path, base: &str, config: &Path) -> Command {
    let mut cmd = vendor_cmd(project, mirror, base);
    cmd.arg("--cargo-config").arg(config);
    cmd
}

/// The directory source beside `config` holds exactly the `n` crates, each whole (its
/// checksum file lists every file with its sha256), and nothing else; the config is whole.
fn check_directory_source(config: &Path, n: usize, what: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.parse::<toml::Table>().is_ok(), "{what}: config {text}");
    let dir = config.with_extension("crates");
    let names = names(&dir);
    let expected: Vec<String> = (0..n).map(|i| format!("fake-{i}-1.0.{i}")).collect();
    assert_eq!(names, expected, "{what}: directory source");
    for name in names {
        let krate = dir.join(&name);
        let sums: serde_json::Value =
            serde_json::from_slice(&std::fs::read(krate.join(".cargo-checksum.json")).unwrap())
                .unwrap();
        let files = sums["files"].as_object().unwrap();
        assert_eq!(files.len(), 3, "{what}: {name}");
        for (file, sum) in files {
            let bytes = std::fs::read(krate.join(file)).unwrap();
            assert_eq!(
                hex(&Sha256::digest(&bytes)),
                sum.as_str().unwrap(),
                "{what}: {name}/{file}"
            );
        }
    }
}

fn mirror_verify(mirror: &Path) -> Output {
    Command::new(CMBUILD)
        .args(["mirror", "verify", "--mirror"])
        .arg(mirror)
        .output()
        .unwrap()
}

/// What a killed vendor may leave: whole blobs under CID names, an index that loads and
/// names only present blobs, the (empty) file of the index's lock, and otherwise only
/// `.tmp-` files.
fn check_mirror_after_kill(mirror: &Path, what: &str) {
    if !mirror.exists() {
        return;
    }
    for name in names(mirror) {
        assert!(
            ["blobs", "index.json", "index.lock"].contains(&name.as_str())
                || name.starts_with(".tmp-"),
            "{what}: unexpected {name} in the mirror"
        );
    }
    let verify = mirror_verify(mirror);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{what}: mirror verify after the kill:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    // Opening the mirror (verify did) removed the dead process's temporaries.
    for dir in [mirror.to_path_buf(), mirror.join("blobs")] {
        let left: Vec<String> = names(&dir)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(
            left.is_empty(),
            "{what}: stale temporaries {left:?} in {}",
            dir.display()
        );
    }
}

#[test]
fn vendor_killed_at_random_points_leaves_a_clean_mirror() {
    vendor_kills(points(DEFAULT_POINTS), 0);
}

#[test]
#[ignore = "heavy: 40 kill points (CMBUILD_FAULT_POINTS) of vendor with other seeds"]
fn vendor_killed_at_many_points_leaves_a_clean_mirror() {
    vendor_kills(points(HEAVY_POINTS), 1);
}

/// `points` kills of vendor, from the seed plus `salt`.
fn vendor_kills(points: usize, salt: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let (project, base) = fake_project(tmp.path(), 6);

    // An uninterrupted run: how long vendoring takes, and what it ends with.
    let reference = tmp.path().join("reference");
    let started = Instant::now();
    let config = tmp.path().join("reference.toml");
    let o = vendor_config_cmd(&project, &reference, &base, &config)
        .output()
        .unwrap();
    let span = started.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("6 downloaded"), "{}", stderr(&o));
    let expected = std::fs::read(reference.join("index.json")).unwrap();
    check_directory_source(&config, 6, "the uninterrupted run");

    let mut rng = Rng::from_env(salt);
    let mut killed = 0;
    for point in 0..points {
        // Each point starts from a fresh mirror or from what the last kill left.
        let mirror = tmp.path().join(format!("mirror-{}", point % 2));
        let delay = rng.point(point, span);
        let what = format!("vendor killed after {delay:?} (point {point})");
        let config = tmp.path().join(format!("offline-{}.toml", point % 2));
        killed += kill_after(vendor_config_cmd(&project, &mirror, &base, &config), delay) as usize;
        check_mirror_after_kill(&mirror, &what);
        // The re-run finishes the job: the same index as the uninterrupted run, and a
        // whole directory source with no temporaries.
        let o = vendor_config_cmd(&project, &mirror, &base, &config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{what}: re-run: {}", stderr(&o));
        check_directory_source(&config, 6, &what);
        assert_eq!(
            std::fs::read(mirror.join("index.json")).unwrap(),
            expected,
            "{what}: the re-run's index differs"
        );
        check_mirror_after_kill(&mirror, &what);
        // Next time round this mirror is resumed from a further kill.
        if point % 2 == 1 {
            std::fs::remove_dir_all(&mirror).unwrap();
            std::fs::remove_dir_all(config.with_extension("crates")).unwrap();
            std::fs::remove_file(&config).unwrap();
        }
    }
    eprintln!("{killed} of {points} vendor runs killed");
}

// ---------------------------------------------------------------------------------------
// cmbuild machine run --store

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg = format!("{tool} not found (needed to build the test program)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    found
}

/// tests/stall/idle.S (prints, then sleeps on timer interrupts), for a machine with 64 MiB
/// of RAM (its first flash drive at the next 2 MiB boundary).
fn idle_program(dir: &Path) -> Option<PathBuf> {
    if !have("riscv64-linux-gnu-gcc") || !have("riscv64-linux-gnu-objcopy") {
        return None;
    }
    let src = dir.join("idle.S");
    std::fs::write(&src, include_str!("stall/idle.S")).unwrap();
    let elf = dir.join("idle.elf");
    let bin = dir.join("idle.bin");
    let link = Path::new(env!("CARGO_MANIFEST_DIR")).join("../machine/tests/isa/link.ld");
    let o = Command::new("riscv64-linux-gnu-gcc")
        .args([
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-march=rv64gc",
            "-mabi=lp64d",
        ])
        .args(["-mcmodel=medany", "-Wl,--no-relax", "-Wl,--build-id=none"])
        .args(["-DDRIVE", "-DFLASH_BASE=0x84000000", "-T"])
        .arg(link)
        .arg("-o")
        .arg(&elf)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new("riscv64-linux-gnu-objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .output()
        .unwrap();
    assert!(o.status.success());
    Some(bin)
}

/// `machine run` of the program for 3 guest seconds with a shared 24 MiB drive, storing a
/// snapshot in `store` (big enough that a kill can land inside the write-back or the store).
fn store_cmd(cwd: &Path, image: &Path, store: &str) -> Command {
    let mut cmd = Command::new(CMBUILD);
    cmd.current_dir(cwd)
        .args(["machine", "run", "--ram-length", "64Mi", "--ram-image"])
        .arg(image)
        .args(["--flash-drive", "label:data,filename:data.img,shared"])
        .args(["--max-mcycle", "384000000", "--store", store]);
    cmd
}

#[test]
fn machine_run_store_killed_at_random_points_leaves_a_whole_snapshot_or_none() {
    machine_store_kills(points(DEFAULT_POINTS), 0);
}

#[test]
#[ignore = "heavy: 40 kill points (CMBUILD_FAULT_POINTS) of machine run --store with other seeds"]
fn machine_run_store_killed_at_many_points_leaves_a_whole_snapshot_or_none() {
    machine_store_kills(points(HEAVY_POINTS), 1);
}

/// `points` kills of `machine run --store`, from the seed plus `salt`.
fn machine_store_kills(points: usize, salt: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = idle_program(dir) else {
        return;
    };
    let drive: Vec<u8> = (0..24u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("data.img"), &drive).unwrap();

    let started = Instant::now();
    let o = store_cmd(dir, &image, "reference").output().unwrap();
    let span = started.elapsed();
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    let written_back = std::fs::read(dir.join("data.img")).unwrap();
    assert_ne!(written_back, drive, "the program writes its drive");

    let mut rng = Rng::from_env(salt);
    for point in 0..points {
        std::fs::write(dir.join("data.img"), &drive).unwrap();
        let target = format!("snap-{point}");
        let delay = rng.point(point, span);
        let what = format!("machine run --store killed after {delay:?} (point {point})");
        kill_after(store_cmd(dir, &image, &target), delay);
        // The drive file is the old one or the new one, never a mix.
        let now = std::fs::read(dir.join("data.img")).unwrap();
        assert!(
            now == drive || now == written_back,
            "{what}: a half-written drive"
        );
        // The snapshot is there whole (it loads and resumes) or not at all.
        if dir.join(&target).exists() {
            let o = Command::new(CMBUILD)
                .current_dir(dir)
                .args([
                    "machine",
                    "run",
                    "--load",
                    &target,
                    "--max-mcycle",
                    "400000000",
                ])
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(124), "{what}: {}", stderr(&o));
        }
        // The next store to the same target removes the killed one's temporaries.
        let _ = std::fs::remove_dir_all(dir.join(&target));
        let o = store_cmd(dir, &image, &target).output().unwrap();
        assert_eq!(o.status.code(), Some(124), "{what}: re-run: {}", stderr(&o));
        let left: Vec<String> = names(dir)
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{what}: stale temporaries {left:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A full disk

/// A fresh 2 MiB tmpfs at `dir`, unmounted on drop; `None` (with a loud SKIP) if mounting
/// is not allowed here.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => stderr(&o),
                    Err(e) => e.to_string(),
                };
                let msg = format!("SKIP: cannot mount a tmpfs for the disk-full test: {why}");
                if std::env::var("CMBUILD_REQUIRE_TMPFS").is_ok_and(|v| v == "1") {
                    panic!("{msg}");
                }
                eprintln!("{msg}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_mirror_is_a_clear_error_and_the_index_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, base) = fake_project(tmp.path(), 6);
    let mirror = tmp.path().join("small");
    let Some(_disk) = SmallDisk::mount(&mirror) else {
        return;
    };
    let o = vendor_cmd(&project, &mirror, &base).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // What did fit is whole and indexed; the index loads; nothing partial is left.
    let verify = mirror_verify(&mirror);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(report.contains("0 problems"), "{report}");
    let left: Vec<String> = names(&mirror.join("blobs"))
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(
        left.is_empty(),
        "temporaries left on the full disk: {left:?}"
    );
}

#[test]
fn a_full_disk_under_a_snapshot_is_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = idle_program(dir) else {
        return;
    };
    // Incompressible bytes: snapshot pages are zstd-compressed, and 4 MiB of them must
    // still not fit on the 2 MiB disk.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(dir.join("data.img"), data).unwrap();
    let small = dir.join("small");
    let Some(_disk) = SmallDisk::mount(&small) else {
        return;
    };
    let o = store_cmd(dir, &image, "small/snap").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(names(&small), Vec::<String>::new(), "{err}");
}

#[test]
fn a_full_disk_under_a_shared_drive_keeps_the_old_drive_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(image) = idle_program(dir) else {
        return;
    };
    let small = dir.join("small");
    let Some(_disk) = SmallDisk::mount(&small) else {
        return;
    };
    // 1.5 MiB on a 2 MiB disk: the new contents do not fit beside the old.
    let drive = vec![5u8; 3 << 19];
    std::fs::write(small.join("data.img"), &drive).unwrap();
    let o = Command::new(CMBUILD)
        .current_dir(dir)
        .args(["machine", "run", "--ram-length", "64Mi", "--ram-image"])
        .arg(&image)
        .args(["--flash-drive", "label:data,filename:small/data.img,shared"])
        .args(["--max-mcycle", "384000000"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("writing back flash drive small/data.img"),
        "{err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(names(&small), ["data.img"], "{err}");
    assert!(std::fs::read(small.join("data.img")).unwrap() == drive);
}
