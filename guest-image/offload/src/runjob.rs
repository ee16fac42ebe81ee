//! `cmbuild-offload run-job JOB RESULT`: the sibling's side (docs/parallel-builds.md, "In
//! the guest"). Runs the job's `argv` in its `cwd` with exactly its `env` plus `PATH` and
//! `HOME`, and writes `RESULT` in the `result` response's format: the exit status, the
//! streams, and every regular file under an `outputs` directory that is not an input with
//! the same digest, sorted by path.

use crate::proto;
use crate::sha256::Sha256;
use crate::wire::{FileEntry, Job, ResultHead};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// `PATH` in the sibling.
pub const PATH: &str = "/usr/bin:/usr/sbin:/usr/lib/cmbuild/bin";
/// `HOME` in the sibling.
pub const HOME: &str = "/build/home";

/// Runs the job in `job_path` and writes its result to `result_path`.
pub fn run(job_path: &str, result_path: &str) -> Result<(), String> {
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
        .output()
    {
        Ok(out) => (exit_code(out.status), out.stdout, out.stderr),
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
