//! `cmbuild-offload run-job JOB RESULT [META_DRIVE]`: the sibling's side
//! (docs/parallel-builds.md, "In the guest"). Runs the job's `argv` in its `cwd` with
//! exactly its `env` plus `PATH` and `HOME`, and writes `RESULT` in the `result` response's
//! format: the exit status, the streams, and every regular file under an `outputs`
//! directory that is not an input with the same digest, sorted by path.
//!
//! Pipelining ("Pipelining" in the design note): when rustc announces its `.rmeta` on
//! standard error (`{"artifact":"…rmeta","emit":"metadata"}`, what cargo starts a
//! library's dependents on), run-job writes a `meta` record (standard error so far, the
//! `.rmeta` and the dep-info file beside it) at the start of `META_DRIVE` and yields to
//! the host ([`META_YIELD`]), which reads it there at that instruction count and lets the
//! machine go on. The final result overwrites the record.

use crate::proto;
use crate::sha256::Sha256;
use crate::wire::{FileEntry, Job, MetaHead, ResultHead};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// What starts a `meta` record on the output drive.
pub const META_MAGIC: &[u8; 8] = b"CMBMETA1";
/// The HTIF yield that says a `meta` record is on the output drive: `tohost` = device 2
/// (yield), command 0, data "meta". The build driver's own yield (the template's ready
/// point) has data 0.
pub const META_YIELD: &str = "0x020000006d657461";
/// HTIF `tohost` on the board (docs/design: the board's memory map).
const TOHOST: &str = "0x40008000";

/// `PATH` in the sibling.
pub const PATH: &str = "/usr/bin:/usr/sbin:/usr/lib/cmbuild/bin";
/// `HOME` in the sibling.
pub const HOME: &str = "/build/home";

/// Runs the job in `job_path` and writes its result to `result_path` (and its metadata
/// point's record to `meta_drive`, when given).
pub fn run(job_path: &str, result_path: &str, meta_drive: Option<&str>) -> Result<(), String> {
    let mut body = Vec::new();
    File::open(job_path)
        .and_then(|f| f.take(proto::MAX_REQUEST as u64 + 1).read_to_end(&mut body))
        .map_err(|e| format!("reading {job_path}: {e}"))?;
    if body.len() > proto::MAX_REQUEST {
        return Err(format!("{job_path} is larger than a request may be"));
    }
    let job = Job::parse(&body).map_err(|e| format!("{job_path}: {e}"))?;
    // The parent's cargo made these before it ran rustc; here only directories holding an
    // input exist.
    for dir in job.outputs.iter().chain(std::iter::once(&job.cwd)) {
        fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
    }
    let (exit, stdout, stderr) = match Command::new(&job.argv[0])
        .args(&job.argv[1..])
        .current_dir(&job.cwd)
        .env_clear()
        .envs(&job.env)
        .env("PATH", PATH)
        .env("HOME", HOME)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => run_child(child, &job, meta_drive)?,
        Err(e) => (
            127,
            Vec::new(),
            format!("cmbuild-offload run-job: cannot run {}: {e}\n", job.argv[0]).into_bytes(),
        ),
    };
    let files = changed_files(&job).map_err(|e| format!("collecting the outputs: {e}"))?;
    write_result(result_path, exit, &stdout, &stderr, &files)
        .map_err(|e| format!("writing {result_path}: {e}"))
}

/// Waits for rustc, collecting its streams; at its metadata notice (the first), writes the
/// `meta` record to `meta_drive` and yields.
fn run_child(
    mut child: std::process::Child,
    job: &Job,
    meta_drive: Option<&str>,
) -> Result<(u8, Vec<u8>, Vec<u8>), String> {
    use std::io::BufRead;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).map(|_| bytes)
    });
    let mut err = io::BufReader::new(child.stderr.take().expect("piped"));
    let mut stderr = Vec::new();
    let mut announced = meta_drive.is_none();
    loop {
        let start = stderr.len();
        let n = err
            .read_until(b'\n', &mut stderr)
            .map_err(|e| format!("reading rustc's standard error: {e}"))?;
        if n == 0 {
            break;
        }
        if announced {
            continue;
        }
        if let Some(rmeta) = metadata_notice(&stderr[start..], &job.cwd) {
            announced = true;
            let drive = meta_drive.expect("checked above");
            write_meta(drive, job, &rmeta, &stderr)
                .map_err(|e| format!("writing the metadata record to {drive}: {e}"))?;
            yield_to_host().map_err(|e| format!("yielding to the host: {e}"))?;
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for rustc: {e}"))?;
    let stdout = reader
        .join()
        .map_err(|_| "reading rustc's standard output panicked".to_string())?
        .map_err(|e| format!("reading rustc's standard output: {e}"))?;
    Ok((exit_code(status), stdout, stderr))
}

/// The `.rmeta` path a line of rustc's standard error announces (`--json=artifacts`), made
/// absolute against `cwd` and normalised (so that the outputs check sees the real path).
pub fn metadata_notice(line: &[u8], cwd: &str) -> Option<String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    // Cheap test first: most lines are diagnostics.
    if !line.starts_with(b"{") || !line.windows(8).any(|w| w == b"artifact") {
        return None;
    }
    let value = crate::json::parse(line).ok()?;
    let object = value.as_object()?;
    if object.get("emit")?.as_str()? != "metadata" {
        return None;
    }
    let path = object.get("artifact")?.as_str()?;
    if !path.ends_with(".rmeta") {
        return None;
    }
    crate::paths::normalize(cwd, path)
}

/// The dep-info file rustc writes beside `lib<name><extra>.rmeta`: `<name><extra>.d`.
fn dep_info_beside(rmeta: &str) -> Option<String> {
    let (dir, file) = rmeta.rsplit_once('/')?;
    let stem = file.strip_prefix("lib")?.strip_suffix(".rmeta")?;
    Some(format!("{dir}/{stem}.d"))
}

/// Writes the `meta` record (magic, body length u64 LE, body) at the start of `drive`.
fn write_meta(drive: &str, job: &Job, rmeta: &str, stderr: &[u8]) -> io::Result<()> {
    let mut paths = vec![rmeta.to_string()];
    if let Some(d) = dep_info_beside(rmeta).filter(|d| fs::metadata(d).is_ok_and(|m| m.is_file())) {
        paths.push(d);
    }
    paths.sort();
    let mut files = Vec::new();
    let mut contents = Vec::new();
    for path in paths {
        if !job.outputs.iter().any(|o| crate::paths::is_below(&path, o)) {
            return Err(io::Error::other(format!(
                "{path} is outside the job's outputs"
            )));
        }
        let bytes = fs::read(&path)?;
        let exec = fs::metadata(&path)?.permissions().mode() & 0o111 != 0;
        files.push(FileEntry {
            path,
            sha256: crate::sha256::digest(&bytes),
            size: bytes.len() as u64,
            exec,
        });
        contents.push(bytes);
    }
    let head = MetaHead {
        files,
        of: None,
        stderr: stderr.len() as u64,
    };
    let mut body = head.to_line();
    body.extend_from_slice(stderr);
    for bytes in contents {
        body.extend_from_slice(&bytes);
    }
    let mut record = META_MAGIC.to_vec();
    record.extend_from_slice(&(body.len() as u64).to_le_bytes());
    record.extend_from_slice(&body);
    let mut file = fs::OpenOptions::new().write(true).open(drive)?;
    file.write_all(&record)?;
    file.sync_all()
}

/// Yields to the host with [`META_YIELD`] (busybox `devmem`, as the build driver yields).
fn yield_to_host() -> io::Result<()> {
    let status = Command::new("devmem")
        .args([TOHOST, "64", META_YIELD])
        .env_clear()
        .env("PATH", PATH)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("devmem ended with {status}")))
    }
}

/// The exit code, or 128 + the signal that ended the process.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + (signal & 0x7f)) as u8,
        (None, None) => 255,
    }
}

/// Every regular file under the job's outputs (symbolic links not followed) that is not
/// an input with the same digest, sorted by path.
pub fn changed_files(job: &Job) -> io::Result<Vec<FileEntry>> {
    let inputs: BTreeMap<&str, &[u8; 32]> = job
        .inputs
        .iter()
        .map(|i| (i.path.as_str(), &i.sha256))
        .collect();
    let mut found = BTreeMap::new();
    for dir in &job.outputs {
        let mut stack = vec![dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    // Not representable in the format; rustc writes no such names.
                    continue;
                };
                let path = format!("{dir}/{name}");
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() && !found.contains_key(&path) {
                    let (sha256, size) = hash(&path)?;
                    if inputs.get(path.as_str()) == Some(&&sha256) {
                        continue;
                    }
                    let exec = entry.metadata()?.permissions().mode() & 0o111 != 0;
                    found.insert(
                        path.clone(),
                        FileEntry {
                            path,
                            sha256,
                            size,
                            exec,
                        },
                    );
                }
            }
        }
    }
    Ok(found.into_values().collect())
}

fn hash(path: &str) -> io::Result<([u8; 32], u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

fn write_result(
    path: &str,
    exit: u8,
    stdout: &[u8],
    stderr: &[u8],
    files: &[FileEntry],
) -> io::Result<()> {
    let head = ResultHead {
        exit,
        files: files.to_vec(),
        stdout: stdout.len() as u64,
        stderr: stderr.len() as u64,
    };
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(&head.to_line())?;
    out.write_all(stdout)?;
    out.write_all(stderr)?;
    for f in files {
        let mut copied = 0u64;
        let mut file = File::open(&f.path)?.take(f.size + 1);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            out.write_all(&buf[..n])?;
        }
        if copied != f.size {
            return Err(io::Error::other(format!("{} changed while read", f.path)));
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_notice_names_the_rmeta() {
        let cwd = "/build/vendor/a-1.0.0";
        let line = br#"{"$message_type":"artifact","artifact":"/build/src/target/release/deps/liba-0f.rmeta","emit":"metadata"}"#;
        assert_eq!(
            metadata_notice(&[&line[..], b"\n"].concat(), cwd).as_deref(),
            Some("/build/src/target/release/deps/liba-0f.rmeta")
        );
        // Older rustc: no $message_type; a relative path is the job's.
        let line = br#"{"artifact":"./liba-0f.rmeta","emit":"metadata"}"#;
        assert_eq!(
            metadata_notice(line, cwd).as_deref(),
            Some("/build/vendor/a-1.0.0/liba-0f.rmeta")
        );
        let climbing =
            br#"{"artifact":"/build/src/target/deps/../../../../etc/x.rmeta","emit":"metadata"}"#;
        assert_eq!(
            metadata_notice(climbing, cwd).as_deref(),
            Some("/etc/x.rmeta")
        );
        for other in [
            &br#"{"artifact":"/o/a-0f.d","emit":"dep-info"}"#[..],
            br#"{"artifact":"/o/liba-0f.rlib","emit":"link"}"#,
            br#"{"artifact":"/o/liba-0f.rlib","emit":"metadata"}"#,
            br#"{"$message_type":"diagnostic","message":"artifact"}"#,
            b"warning: unused artifact",
            b"{\"artifact\":",
        ] {
            assert_eq!(metadata_notice(other, cwd), None, "{other:?}");
        }
        assert_eq!(
            dep_info_beside("/o/deps/libserde-1a2b.rmeta").as_deref(),
            Some("/o/deps/serde-1a2b.d")
        );
        assert_eq!(dep_info_beside("/o/deps/serde.rmeta"), None);
    }
}
