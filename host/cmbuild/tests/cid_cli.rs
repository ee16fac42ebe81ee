//! `cmbuild cid FILE...`: the public vectors of docs/design.md through the command line.

use std::io::Write;
use std::process::{Command, Stdio};

const CMBUILD: &str = env!("CARGO_BIN_EXE_cmbuild");

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(7) + 3) as u8).collect()
}

#[test]
fn prints_public_vectors_like_sha256sum() {
    let tmp = tempfile::tempdir().unwrap();
    let files = [
        (
            "hello",
            b"hello cmbuild\n".to_vec(),
            "bafkreif6ekkwbc3cq345vbpe5nekixuqqkiayv6qewdrwussmu63x3q4hm",
        ),
        (
            "empty",
            Vec::new(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
        (
            "one-chunk",
            pattern(262_144),
            "bafkreih4mbpgbbmrcjifkrtxbk4fbp57ajbuqqkawqwr62xjkvv3vj3yjy",
        ),
        (
            "two-chunks",
            pattern(262_145),
            "bafybeidwin3m5xskbuqroa6hesb2krs2xmmdekolinwokjj2hmdmst5ozu",
        ),
    ];
    let mut expected = String::new();
    let mut command = Command::new(CMBUILD);
    command.arg("cid");
    for (name, bytes, cid) in &files {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        command.arg(&path);
        expected.push_str(&format!("{cid}  {}\n", path.display()));
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn reads_standard_input_for_dash() {
    let mut child = Command::new(CMBUILD)
        .args(["cid", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&pattern(262_145))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "bafybeidwin3m5xskbuqroa6hesb2krs2xmmdekolinwokjj2hmdmst5ozu  -\n"
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let out = Command::new(CMBUILD)
        .args(["cid", "/nonexistent/cmbuild-cid-test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("/nonexistent/cmbuild-cid-test"), "{text}");
}
