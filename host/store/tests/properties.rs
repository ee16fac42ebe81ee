//! Property tests (proptest, stable toolchain) of what reads untrusted bytes: tar streams
//! and `.crate` unpacking, Cargo.lock parsing, the CAR reader, Dockerfiles and image references.
//!
//! Each property runs `CMBUILD_PROPTEST_CASES` cases (default 200, a few seconds in all);
//! raise it for a longer search, e.g. `CMBUILD_PROPTEST_CASES=20000 cargo test -p
//! cmbuild-store --test properties --release -- --nocapture`. Each prints its executions per
//! second.

use std::path::Path;
use std::time::Instant;

use cmbuild_store::car::{CarReader, CarWriter};
use cmbuild_store::cid::cid_of_bytes;
use cmbuild_store::crates::unpack_crate;
use cmbuild_store::lockfile::{is_valid_crate_name, is_valid_version, parse_lockfile, Source};
use cmbuild_store::mirror::Key;
use cmbuild_store::sha256::Sha256;
use cmbuild_store::tarball::{Limits, TarReader};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("CMBUILD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Runs `property` over `strategy` and prints the rate.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    if let Err(err) = runner.run(&strategy, property) {
        panic!("{name}: {err}");
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: {cases} cases in {secs:.2} s ({:.0} executions/s)",
        f64::from(cases) / secs.max(1e-9)
    );
}

/// One entry of a generated tar stream: name, type byte, claimed size, data, and whether
/// its checksum is broken.
type RawEntry = (Vec<u8>, u8, u64, Vec<u8>, bool);

fn name_part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"demo-1.0.0".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"".to_vec()),
        Just(b"/".to_vec()),
        Just(b"Cargo.toml".to_vec()),
        Just(b".cargo-checksum.json".to_vec()),
        Just(b"src".to_vec()),
        Just(b"/etc/passwd".to_vec()),
        Just(b"a\\b".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn entry() -> impl Strategy<Value = RawEntry> {
    (
        prop::collection::vec(name_part(), 1..5).prop_map(|parts| parts.join(&b'/')),
        prop_oneof![
            Just(b'0'),
            Just(0u8),
            Just(b'5'),
            Just(b'2'),
            Just(b'1'),
            Just(b'L'),
            Just(b'x'),
            Just(b'g'),
            Just(b'3'),
            any::<u8>()
        ],
        prop_oneof![
            3 => Just(None),
            1 => any::<u64>().prop_map(Some),
            1 => (0u64..10_000).prop_map(Some)
        ],
        prop::collection::vec(any::<u8>(), 0..700),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(name, kind, claimed, data, broken)| {
            let size = claimed.unwrap_or(data.len() as u64);
            (name, kind, size, data, broken)
        })
}

fn header(name: &[u8], kind: u8, size: u64, broken: bool) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(b"0000755\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum::<u32>() + u32::from(broken);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn tar_bytes(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, size, data, broken) in entries {
        out.extend_from_slice(&header(name, *kind, *size, *broken));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Every path below `root`, checking that none is a symlink and none leaves `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(!meta.file_type().is_symlink(), "{}", path.display());
        assert!(path.starts_with(root));
        if meta.is_dir() {
            walk(root, &path, out);
        }
        out.push(path);
    }
}

#[test]
fn tar_reader_stays_within_its_caps_on_any_stream() {
    let limits = Limits {
        max_total: 64 << 10,
        max_entry: 16 << 10,
        max_long_name: 4096,
        max_pax: 4096,
    };
    let streams = prop_oneof![
        prop::collection::vec(entry(), 0..8).prop_map(|e| tar_bytes(&e)),
        prop::collection::vec(any::<u8>(), 0..4096),
    ];
    check("tar reader", streams, |bytes| {
        let mut reader = TarReader::new(&bytes[..], limits);
        let mut held = 0u64;
        while let Ok(Some(entry)) = reader.next_entry() {
            held += entry.data.len() as u64;
            prop_assert!(entry.data.len() as u64 <= limits.max_entry);
            prop_assert!(entry.path.len() as u64 <= limits.max_long_name.max(limits.max_pax));
        }
        // Memory held by data never exceeds the total cap, nor reads past it by more than
        // a block.
        prop_assert!(held <= limits.max_total);
        prop_assert!(reader.consumed() <= limits.max_total + 512);
        Ok(())
    });
}

#[test]
fn unpacking_a_crate_writes_only_regular_files_under_its_directory() {
    check(
        "crate unpacking",
        prop::collection::vec(entry(), 0..8),
        |entries| {
            let archive = gzip(&tar_bytes(&entries));
            let dir = tempfile::tempdir().unwrap();
            let parent = dir.path().join("vendor");
            let sha = Sha256::of(&archive);
            let result = unpack_crate(&archive, "demo", "1.0.0", &sha, &parent);
            let mut written = Vec::new();
            if parent.exists() {
                walk(&parent, &parent, &mut written);
            }
            match result {
                Ok(crate_dir) => {
                    prop_assert_eq!(crate_dir, parent.join("demo-1.0.0"));
                    for path in &written {
                        prop_assert!(path.starts_with(parent.join("demo-1.0.0")));
                    }
                }
                // A refused archive leaves nothing behind.
                Err(_) => prop_assert!(written.is_empty(), "{:?}", written),
            }
            Ok(())
        },
    );
}

fn lock_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("serde".to_owned()),
        Just("evil/x".to_owned()),
        Just("..".to_owned()),
        Just(".x".to_owned()),
        Just("a\\b".to_owned()),
        "[a-z_-]{0,70}",
        any::<String>(),
    ];
    let version = prop_oneof![
        Just("1.0.0".to_owned()),
        Just("../1".to_owned()),
        Just("1.0.0-rc.1+b".to_owned()),
        "[0-9.a-z+-]{0,140}",
        any::<String>(),
    ];
    let source = prop_oneof![
        Just(None),
        Just(Some(cmbuild_store::lockfile::CRATES_IO_GIT.to_owned())),
        Just(Some("git+https://example.com/x#abc".to_owned())),
        any::<String>().prop_map(Some),
    ];
    let checksum = prop_oneof![
        Just(None),
        Just(Some("ab".repeat(32))),
        Just(Some("AB".repeat(32))),
        any::<String>().prop_map(Some),
    ];
    let package = (name, version, source, checksum);
    (
        prop::collection::vec(package, 0..6),
        prop_oneof![Just(None), (0u32..6).prop_map(Some)],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(packages, version, garble)| {
            let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
            let mut text = String::new();
            if let Some(v) = version {
                text.push_str(&format!("version = {v}\n"));
            }
            for (name, version, source, checksum) in packages {
                text.push_str(&format!(
                    "\n[[package]]\nname = {}\nversion = {}\n",
                    quote(&name),
                    quote(&version)
                ));
                if let Some(s) = source {
                    text.push_str(&format!("source = {}\n", quote(&s)));
                }
                if let Some(c) = checksum {
                    text.push_str(&format!("checksum = {}\n", quote(&c)));
                }
            }
            if garble {
                let mut at = text.len() / 2;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert(at, '[');
            }
            text
        })
}

#[test]
fn cargo_lock_parsing_accepts_only_names_that_make_safe_keys() {
    check("Cargo.lock parsing", lock_text(), |text| {
        if let Ok(lock) = parse_lockfile(&text, Path::new("Cargo.lock")) {
            for p in &lock.packages {
                prop_assert!(is_valid_crate_name(&p.name), "{:?}", p.name);
                prop_assert!(is_valid_version(&p.version), "{:?}", p.version);
                let key = Key::crate_(&p.name, &p.version);
                prop_assert!(key.check().is_ok());
                prop_assert_eq!(key.to_string().parse::<Key>().ok(), Some(key));
                if let Source::CratesIo { sha256 } = &p.source {
                    prop_assert_eq!(sha256.to_string().len(), 64);
                }
            }
        }
        Ok(())
    });
}

fn valid_car() -> Vec<u8> {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let root = cid_of_bytes(&data);
    let mut writer = CarWriter::new(Vec::new(), &[root]).unwrap();
    writer.write_file(&data[..]).unwrap();
    writer.write_file(&b"small"[..]).unwrap();
    writer.finish().unwrap()
}

#[test]
fn the_car_reader_never_panics() {
    let car = valid_car();
    let len = car.len();
    let inputs = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        // A valid CAR with a few bytes changed, or cut short.
        (prop::collection::vec((0..len, any::<u8>()), 1..6), 0..=len).prop_map(
            move |(edits, cut)| {
                let mut bytes = car.clone();
                for (at, value) in edits {
                    bytes[at] = value;
                }
                bytes.truncate(cut);
                bytes
            }
        ),
    ];
    check("CAR reader", inputs, |bytes| {
        if let Ok(mut reader) = CarReader::new(&bytes[..]) {
            let _ = reader.roots().len();
            let mut blocks = 0;
            while let Ok(Some((_cid, block))) = reader.next_block() {
                blocks += 1;
                prop_assert!(block.len() <= bytes.len());
                prop_assert!(blocks <= bytes.len());
            }
        }
        Ok(())
    });
}

/// Pieces Dockerfiles and image references are made of, hostile ones included.
fn docker_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_owned()),
        Just("from ".to_owned()),
        Just("ARG ".to_owned()),
        Just("COPY --from=".to_owned()),
        Just("RUN --mount=type=bind,from=".to_owned()),
        Just("RUN <<".to_owned()),
        Just("<<-\"EOF\"".to_owned()),
        Just("EOF".to_owned()),
        Just(" AS ".to_owned()),
        Just("--platform=".to_owned()),
        Just("$".to_owned()),
        Just("${".to_owned()),
        Just("}".to_owned()),
        Just("=".to_owned()),
        Just("\\\n".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("# escape=`\n".to_owned()),
        Just("#".to_owned()),
        Just("`".to_owned()),
        Just("@sha256:".to_owned()),
        Just("1111111111111111111111111111111111111111111111111111111111111111".to_owned()),
        Just("127.0.0.1:5000/".to_owned()),
        Just("[::1]:".to_owned()),
        Just("debian".to_owned()),
        Just(":".to_owned()),
        Just("/".to_owned()),
        Just("é".to_owned()),
        "[ -~]{0,6}",
    ]
}

#[test]
fn dockerfiles_and_image_references_never_panic() {
    use cmbuild_store::dockerfile::base_images;
    use cmbuild_store::oci::{image_key, ImageRef};
    let text = prop::collection::vec(docker_piece(), 0..40).prop_map(|p| p.concat());
    check("Dockerfile and references", text, |text| {
        if let Ok(images) = base_images("Dockerfile", &text) {
            for base in images {
                // Every accepted image reads back as itself and makes a valid mirror key.
                let again = ImageRef::parse(&base.image.to_string());
                prop_assert_eq!(again.as_ref(), Ok(&base.image));
                let key = image_key(&base.image);
                if key.check().is_ok() {
                    prop_assert_eq!(key.to_string().parse::<Key>().ok(), Some(key));
                }
            }
        }
        if let Ok(image) = ImageRef::parse(&text) {
            prop_assert_eq!(ImageRef::parse(&image.to_string()), Ok(image));
        }
        Ok(())
    });
}
