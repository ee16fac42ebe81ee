//! A job's sibling machine, as data: its input drive (the job and its input files, made
//! from the run's blobs) and its result read back from its output drive. The machine
//! itself is an ordinary build machine resumed from the template (`crate::run`).

use std::path::Path;

use cmbuild_image::rootfs::Tree;

use super::blobs::{BlobError, BlobStore};
use super::job::Job;
use super::wire::{JobResult, WireError};

/// The script that runs a job in the sibling (on the sibling's input drive).
pub const ENTRY: &str = include_str!("../../../../guest-image/sibling-entry.sh");
/// The sibling's `plan.env`: the build driver sources it before it builds anything (with
/// `say` and `finish` defined), so the plan hands the machine to `entry.sh`, which ends it.
/// The pinned driver needs no change for this (guest-image/PROTOCOL.md, "Hooks"). Under a
/// glibc floor it mounts the floor's sysroots first ([`plan_env`]).
pub const PLAN_ENV: &str = "CMBUILD_PLAN_VERSION='2'\n. /build/in/entry.sh\n";

/// The sibling's `plan.env`: [`PLAN_ENV`], or under a glibc floor (`floor`) the same with
/// the floor's mount before the entry ([`crate::floor::sibling_plan_env`]).
pub fn plan_env(floor: bool) -> String {
    // PLAN_ENV's first line is the plan's version, its last hands the machine to entry.sh.
    let (version, entry) = PLAN_ENV.split_once('\n').expect("PLAN_ENV has two lines");
    match floor {
        false => PLAN_ENV.to_owned(),
        true => format!("{version}\n{}{entry}", crate::floor::sibling_plan_env()),
    }
}
/// The sibling input drive's volume UUID (fixed: the drive is a function of the job).
const SIBLING_UUID: [u8; 16] = *b"cmbuild-job-v1\0\0";

/// Errors making a sibling's drive or reading its result.
#[derive(Debug, thiserror::Error)]
pub enum SiblingError {
    /// the host lacks input {0} of the job
    #[error("the host lacks input {0} of the job")]
    Blob(#[from] BlobError),
    /// cannot lay out the job's inputs: {0}
    #[error("cannot lay out the job's inputs: {0}")]
    Layout(String),
    /// the sibling's output drive is not a result: {0}
    #[error("the sibling's output drive is not a result: {0}")]
    Output(String),
    /// the sibling's run-job failed ({0}); its console says why
    #[error("the sibling's run-job failed ({0}); its console says why")]
    Failed(String),
    /// the sibling's result is refused
    #[error("the sibling's result is refused")]
    Result(#[from] WireError),
}

/// The sibling's input drive for `job`: `plan.env` ([`plan_env`] of `floor`), `entry.sh`,
/// `job.json`, `cmbuild-offload` (the binary `tool`, which runs the job) and every input
/// under `root/`, from `blobs` (each checked against its digest as read).
pub fn input_drive(
    job: &Job,
    blobs: &BlobStore,
    tool: &[u8],
    floor: bool,
) -> Result<Vec<u8>, SiblingError> {
    let layout = |e: &dyn std::fmt::Display| SiblingError::Layout(e.to_string());
    let mut tree = Tree::new();
    tree.add_file("plan.env", 0o644, plan_env(floor).into_bytes())
        .map_err(|e| layout(&e))?;
    tree.add_file("entry.sh", 0o644, ENTRY.as_bytes().to_vec())
        .map_err(|e| layout(&e))?;
    let mut line = job.canonical_json();
    line.push(b'\n');
    tree.add_file("job.json", 0o644, line)
        .map_err(|e| layout(&e))?;
    tree.add_file("cmbuild-offload", 0o755, tool.to_vec())
        .map_err(|e| layout(&e))?;
    for input in &job.inputs {
        let bytes = blobs.get(&input.sha256)?;
        let mode = if input.exec { 0o755 } else { 0o644 };
        tree.add_file(&format!("root/{}", input.path.relative()), mode, bytes)
            .map_err(|e| layout(&e))?;
    }
    crate::plan::drive_image(&tree, SIBLING_UUID, "cmbuild-job", 0).map_err(|e| layout(&e))
}

/// What starts a metadata record on a sibling's output drive (`run-job`'s `META_MAGIC`).
pub const META_MAGIC: &[u8; 8] = b"CMBMETA1";
/// The HTIF yield data with which a sibling says a metadata record is on its output drive
/// (`run-job`'s `META_YIELD`: "meta").
pub const META_YIELD: u64 = 0x6d65_7461;

/// The metadata record at the start of a sibling's output drive (magic, body length u64
/// LE, body), if one is there and fits the drive and the response limit.
pub fn meta_record(output_drive: &[u8]) -> Option<&[u8]> {
    let rest = output_drive.strip_prefix(&META_MAGIC[..])?;
    let (len, body) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    (len <= super::wire::MAX_RESPONSE).then_some(body.get(..len)?)
}

/// The result in a sibling's output drive (a tar holding `result`, or `error` when the
/// driver or `run-job` failed), unpacked under `scratch`.
pub fn read_result(
    output_drive: &[u8],
    job: &Job,
    scratch: &Path,
) -> Result<JobResult, SiblingError> {
    let limits = crate::untrusted::TarLimits::default();
    let files = crate::untrusted::extract_tar(output_drive, scratch, limits)
        .map_err(|e| SiblingError::Output(e.to_string()))?;
    if files.iter().any(|f| f == "error") {
        let said = crate::untrusted::read_capped(&scratch.join("error"), 256).unwrap_or_default();
        let said = crate::terminal::sanitize_bytes(&said);
        return Err(SiblingError::Failed(said.trim().to_owned()));
    }
    if !files.iter().any(|f| f == "result") {
        return Err(SiblingError::Output("no result file".into()));
    }
    let max = super::wire::MAX_RESPONSE as u64;
    let body = crate::untrusted::read_capped(&scratch.join("result"), max)
        .map_err(|e| SiblingError::Output(e.to_string()))?;
    Ok(JobResult::parse(&body, job)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::job::{GuestPath, Input};
    use crate::offload::wire::OutFile;
    use cmbuild_store::sha256::Sha256;
    use std::collections::BTreeMap;

    fn job(blobs: &BlobStore) -> Job {
        let input = |path: &str, data: &[u8], exec| Input {
            exec,
            path: GuestPath::new(path).unwrap(),
            sha256: blobs.put(data).unwrap(),
            size: data.len() as u64,
        };
        Job {
            argv: vec!["rustc".into(), "src/lib.rs".into()],
            cwd: GuestPath::new("/build/vendor/a-1.0.0").unwrap(),
            env: BTreeMap::from([("CARGO_PKG_NAME".into(), "a".into())]),
            inputs: vec![
                input("/build/src/build.rs", b"fn main() {}\n", true),
                input(
                    "/build/vendor/a-1.0.0/src/lib.rs",
                    b"pub fn a() {}\n",
                    false,
                ),
            ],
            outputs: vec![GuestPath::new("/build/src/target/release/deps").unwrap()],
        }
    }

    #[test]
    fn the_drive_holds_the_job_and_its_inputs_at_their_paths() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let job = job(&blobs);
        let drive = input_drive(&job, &blobs, b"tool", false).unwrap();
        assert_eq!(
            drive,
            input_drive(&job, &blobs, b"tool", false).unwrap(),
            "a function of the job"
        );
        let x = crate::plan::extract_input_drive(&drive);
        let x = x.path().join("x");
        assert_eq!(
            std::fs::read_to_string(x.join("plan.env")).unwrap(),
            PLAN_ENV
        );
        assert_eq!(std::fs::read_to_string(x.join("entry.sh")).unwrap(), ENTRY);
        let line = std::fs::read(x.join("job.json")).unwrap();
        assert_eq!(Job::parse(line.strip_suffix(b"\n").unwrap()).unwrap(), job);
        let lib = x.join("root/build/vendor/a-1.0.0/src/lib.rs");
        assert_eq!(std::fs::read(&lib).unwrap(), b"pub fn a() {}\n");
        use std::os::unix::fs::PermissionsExt;
        let tool = x.join("cmbuild-offload");
        assert_eq!(std::fs::read(&tool).unwrap(), b"tool");
        assert_eq!(
            std::fs::metadata(tool).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let exec = x.join("root/build/src/build.rs");
        assert_eq!(
            std::fs::metadata(exec).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::metadata(lib).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // An input the host lacks is an error, not an empty file.
        let mut lacking = job.clone();
        lacking.inputs[1].sha256 = Sha256::of(b"never stored");
        assert!(matches!(
            input_drive(&lacking, &blobs, b"tool", false),
            Err(SiblingError::Blob(_))
        ));
        // Under a glibc floor: the same drive but for plan.env, which mounts the floor's
        // sysroots before the job.
        let floored = input_drive(&job, &blobs, b"tool", true).unwrap();
        let y = crate::plan::extract_input_drive(&floored);
        let y = y.path().join("x");
        let env = std::fs::read_to_string(y.join("plan.env")).unwrap();
        assert_eq!(env, plan_env(true));
        assert!(env.starts_with("CMBUILD_PLAN_VERSION='2'\n"), "{env}");
        assert!(env.ends_with("\n. /build/in/entry.sh\n"), "{env}");
        assert!(
            env.contains("mount -t erofs -o ro /dev/pmem3 /build/sysroot"),
            "{env}"
        );
        for name in [
            "entry.sh",
            "job.json",
            "cmbuild-offload",
            "root/build/src/build.rs",
        ] {
            assert_eq!(
                std::fs::read(y.join(name)).unwrap(),
                std::fs::read(x.join(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_metadata_record_is_read_within_the_drive_and_the_limit() {
        let mut drive = META_MAGIC.to_vec();
        drive.extend_from_slice(&5u64.to_le_bytes());
        drive.extend_from_slice(b"body!tail");
        assert_eq!(meta_record(&drive), Some(&b"body!"[..]));
        // A length past the drive's end, or past the response limit: no record.
        let mut long = META_MAGIC.to_vec();
        long.extend_from_slice(&100u64.to_le_bytes());
        long.extend_from_slice(b"short");
        assert_eq!(meta_record(&long), None);
        let mut huge = META_MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(meta_record(&huge), None);
        // A final tar (or nothing) where the record was: no record.
        assert_eq!(meta_record(&tar_of(&[("result", b"x")])), None);
        assert_eq!(meta_record(b"CMBMETA1\x01"), None);
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_result_is_read_back_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let job = job(&blobs);
        let result = JobResult {
            exit: 0,
            stdout: vec![],
            stderr: vec![],
            files: vec![OutFile {
                path: GuestPath::new("/build/src/target/release/deps/liba.rlib").unwrap(),
                exec: false,
                bytes: b"rlib".to_vec(),
            }],
        };
        let scratch = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            path
        };
        let drive = tar_of(&[("result", &result.encode())]);
        assert_eq!(read_result(&drive, &job, &scratch("a")).unwrap(), result);
        let failed = tar_of(&[("error", b"sibling-run-job\n")]);
        assert!(matches!(
            read_result(&failed, &job, &scratch("b")),
            Err(SiblingError::Failed(_))
        ));
        let empty = tar_of(&[]);
        assert!(matches!(
            read_result(&empty, &job, &scratch("c")),
            Err(SiblingError::Output(_))
        ));
        let mut bad = result.clone();
        bad.files[0].path = GuestPath::new("/build/vendor/a-1.0.0/src/lib.rs").unwrap();
        let drive = tar_of(&[("result", &bad.encode())]);
        assert!(matches!(
            read_result(&drive, &job, &scratch("d")),
            Err(SiblingError::Result(_))
        ));
    }
}
