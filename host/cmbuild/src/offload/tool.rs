//! `cmbuild-offload`, the guest's side of the channel, as a binary: compiled from its
//! sources (`guest-image/offload/`, carried in cmbuild) by the pinned rustc in a machine
//! resumed from the run's template, once per template and source, and kept in the mirror.
//! Parents and siblings get the binary on their input drives, so no build machine spends
//! time compiling it (in the guest that costs about 4e10 instructions), and its digest is a
//! platform property of every job.

use std::path::PathBuf;

use cmbuild_image::rootfs::Tree;
use cmbuild_store::atomic::write_json_atomically;
use cmbuild_store::cid::Cid;
use cmbuild_store::mirror::Mirror;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

use super::service::SiblingRunner;

/// The sources of `cmbuild-offload`, as the tool's machine sees them under
/// `/build/in/offload/`.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "src/client.rs",
        include_str!("../../../../guest-image/offload/src/client.rs"),
    ),
    (
        "src/json.rs",
        include_str!("../../../../guest-image/offload/src/json.rs"),
    ),
    (
        "src/main.rs",
        include_str!("../../../../guest-image/offload/src/main.rs"),
    ),
    (
        "src/mux.rs",
        include_str!("../../../../guest-image/offload/src/mux.rs"),
    ),
    (
        "src/paths.rs",
        include_str!("../../../../guest-image/offload/src/paths.rs"),
    ),
    (
        "src/proto.rs",
        include_str!("../../../../guest-image/offload/src/proto.rs"),
    ),
    (
        "src/runjob.rs",
        include_str!("../../../../guest-image/offload/src/runjob.rs"),
    ),
    (
        "src/sha256.rs",
        include_str!("../../../../guest-image/offload/src/sha256.rs"),
    ),
    (
        "src/wire.rs",
        include_str!("../../../../guest-image/offload/src/wire.rs"),
    ),
    (
        "src/wrapper.rs",
        include_str!("../../../../guest-image/offload/src/wrapper.rs"),
    ),
];
/// The script the tool's machine runs.
pub const BOOTSTRAP: &str = include_str!("../../../../guest-image/offload-bootstrap.sh");
/// Largest binary accepted from the tool's machine.
const MAX_TOOL: u64 = 64 << 20;
const TOOL_UUID: [u8; 16] = *b"cmbuild-tool-v1\0";

/// Errors making the tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// cannot lay out the tool's input drive: {0}
    #[error("cannot lay out the tool's input drive: {0}")]
    Layout(String),
    /// the machine that compiles cmbuild-offload failed: {0}
    #[error("the machine that compiles cmbuild-offload failed: {0}")]
    Machine(String),
    /// cmbuild-offload did not compile in the guest; its machine's console ended with:\n{0}
    #[error(
        "cmbuild-offload did not compile in the guest; its machine's console ended with:\n{0}"
    )]
    Compile(String),
    /// cannot keep cmbuild-offload in the mirror
    #[error("cannot keep cmbuild-offload in the mirror")]
    Mirror(#[from] cmbuild_store::mirror::MirrorError),
    /// cannot write {0}
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// The tool: its bytes and digest.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The RISC-V binary.
    pub bytes: Vec<u8>,
    /// Its sha256 (a platform property of every job).
    pub sha256: Sha256,
    /// Its CID in the mirror.
    pub cid: Cid,
    /// Whether it was compiled now (rather than found in the mirror).
    pub built: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    cid: Cid,
    key: Sha256,
    sha256: Sha256,
    v: u32,
}

/// What the tool is a function of: the template it is compiled in and its sources.
pub fn key(template_hash: &str) -> Sha256 {
    let mut bytes = b"cmbuild offload tool v1\n".to_vec();
    bytes.extend_from_slice(template_hash.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(BOOTSTRAP.as_bytes());
    for (path, text) in SOURCES {
        bytes.extend_from_slice(path.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
    }
    Sha256::of(bytes)
}

/// The input drive of the tool's machine.
pub fn input_drive() -> Result<Vec<u8>, ToolError> {
    let layout = |e: &dyn std::fmt::Display| ToolError::Layout(e.to_string());
    let mut tree = Tree::new();
    let plan = "CMBUILD_PLAN_VERSION='2'\n. /build/in/bootstrap.sh\n";
    tree.add_file("plan.env", 0o644, plan.as_bytes().to_vec())
        .map_err(|e| layout(&e))?;
    tree.add_file("bootstrap.sh", 0o644, BOOTSTRAP.as_bytes().to_vec())
        .map_err(|e| layout(&e))?;
    for (path, text) in SOURCES {
        tree.add_file(&format!("offload/{path}"), 0o644, text.as_bytes().to_vec())
            .map_err(|e| layout(&e))?;
    }
    crate::plan::drive_image(&tree, TOOL_UUID, "cmbuild-tool", 0).map_err(|e| layout(&e))
}

fn record_path(mirror: &Mirror, key: &Sha256) -> PathBuf {
    mirror
        .root()
        .join(super::cache::DIR)
        .join(format!("tool-{key}.json"))
}

/// The tool the record at `path` names, if the record is one for `key` and the blob
/// matches its CID and sha256 (anything else: compile it again).
fn recorded(mirror: &Mirror, path: &std::path::Path, key: &Sha256) -> Option<Tool> {
    let record: Record =
        serde_json::from_slice(&crate::untrusted::read_capped(path, 4096).ok()?).ok()?;
    if record.v != 1 || record.key != *key {
        return None;
    }
    let bytes = mirror.read_verified(&record.cid).ok()?;
    (Sha256::of(&bytes) == record.sha256).then_some(Tool {
        sha256: record.sha256,
        cid: record.cid,
        bytes,
        built: false,
    })
}

/// The tool for `template_hash`: from the mirror when its record and blob check out, else
/// compiled now in a machine `runner` resumes from the template, and recorded.
pub fn obtain(
    mirror: &Mirror,
    template_hash: &str,
    runner: &dyn SiblingRunner,
    scratch: &std::path::Path,
) -> Result<Tool, ToolError> {
    let key = key(template_hash);
    let path = record_path(mirror, &key);
    if let Some(tool) = recorded(mirror, &path, &key) {
        return Ok(tool);
    }
    let run = runner
        .run(input_drive()?, &|_| {}, &|_, _| {})
        .map_err(ToolError::Machine)?;
    let files = crate::untrusted::extract_tar(
        &run.output_drive[..],
        scratch,
        crate::untrusted::TarLimits::default(),
    )
    .map_err(|e| ToolError::Machine(e.to_string()))?;
    if files.iter().any(|f| f == "error") || !files.iter().any(|f| f == "cmbuild-offload") {
        return Err(ToolError::Compile(run.console_tail));
    }
    let bytes = crate::untrusted::read_capped(&scratch.join("cmbuild-offload"), MAX_TOOL)
        .map_err(|e| ToolError::Machine(e.to_string()))?;
    let stored = mirror.put_bytes(&bytes)?;
    let record = Record {
        cid: stored.cid,
        key,
        sha256: stored.sha256,
        v: 1,
    };
    write_json_atomically(&path, &record).map_err(|e| ToolError::Write(e.path, e.source))?;
    Ok(Tool {
        sha256: stored.sha256,
        cid: stored.cid,
        bytes,
        built: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_of_cmbuild_offload_is_carried() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-image/offload/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let carried: Vec<&str> = SOURCES.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            carried,
            on_disk,
            "SOURCES must list every file of {}",
            dir.display()
        );
        for (path, text) in SOURCES {
            assert_eq!(
                std::fs::read_to_string(dir.join(&path[4..])).unwrap(),
                *text
            );
        }
    }

    #[test]
    fn the_key_covers_the_template() {
        assert_eq!(key("cmvm-sha256-v1:aa"), key("cmvm-sha256-v1:aa"));
        assert_ne!(key("cmvm-sha256-v1:aa"), key("cmvm-sha256-v1:ab"));
    }
}
