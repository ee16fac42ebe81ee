//! `cmbuild-offload rustc-wrapper RUSTC ARGS...`: what cargo's `RUSTC_WRAPPER` runs.
//!
//! It decides whether the invocation is offloaded (docs/parallel-builds.md, "Which jobs are
//! offloaded"), lists and hashes its inputs (through the multiplexer's cache), submits the
//! job, sends the blobs the host lacks, and applies the result. Whenever it does not
//! offload, or anything goes wrong before a result is applied, it execs `RUSTC ARGS`
//! itself: the build then goes on exactly as without offloading.

use crate::client::Client;
use crate::paths::{is_at_or_below, is_below, normalize};
use crate::proto::{self, FileHash};
use crate::sha256;
use crate::wire::{self, FileEntry, Job, MetaHead, Response, ResultHead};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The environment variable naming the multiplexer's socket.
pub const SOCKET_ENV: &str = "CMBUILD_OFFLOAD_SOCKET";
/// The environment variable overriding the build root `/build` (for the tests only).
pub const ROOT_ENV: &str = "CMBUILD_OFFLOAD_ROOT";
/// The build root in the guest.
pub const DEFAULT_ROOT: &str = "/build";
/// The most input files a job may have; a larger one runs here.
pub const MAX_INPUTS: usize = 100_000;
/// How many blob chunks one wrapper keeps outstanding.
const BLOB_WINDOW: usize = 8;
/// How many times a job is submitted before the wrapper gives up and runs rustc itself
/// (the first time, and once after each round of blobs).
const MAX_ROUNDS: usize = 3;

/// Environment variables that are host-specific and never part of a job (plus every
/// `CMBUILD_OFFLOAD_*`).
const DROPPED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TERM",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_MAKEFLAGS",
];

/// Whether the variable `name` goes into a job's `env`.
pub fn keeps_env(name: &str) -> bool {
    !DROPPED_ENV.contains(&name) && !name.starts_with("CMBUILD_OFFLOAD_")
}

/// rustc options that take a value (as the next argument, after `=` for the long ones, or
/// joined for the short ones).
const VALUE_OPTIONS: &[&str] = &[
    "--cfg",
    "--check-cfg",
    "--crate-type",
    "--crate-name",
    "--edition",
    "--emit",
    "--print",
    "--out-dir",
    "--explain",
    "--target",
    "--cap-lints",
    "--error-format",
    "--json",
    "--color",
    "--diagnostic-width",
    "--remap-path-prefix",
    "--extern",
    "--sysroot",
    "--codegen",
    "--warn",
    "--allow",
    "--deny",
    "--forbid",
    "--force-warn",
    "--env-set",
    "-L",
    "-l",
    "-o",
    "-C",
    "-W",
    "-A",
    "-D",
    "-F",
    "-Z",
];

/// rustc options without a value.
const FLAG_OPTIONS: &[&str] = &[
    "--test",
    "-O",
    "-g",
    "-v",
    "--verbose",
    "-V",
    "-vV",
    "--version",
    "-h",
    "--help",
];

/// The `-L` kinds.
const LIB_KINDS: &[&str] = &["dependency", "crate", "native", "framework", "all"];

/// The rustc arguments the decision needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RustcArgs {
    /// Options with their values, in order (`-C opt-level=3` as `("-C", "opt-level=3")`,
    /// long options under their `--` name).
    pub options: Vec<(String, String)>,
    pub flags: Vec<String>,
    pub inputs: Vec<String>,
}

impl RustcArgs {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits rustc's arguments into options, flags and inputs. `Err` names an argument the
/// wrapper does not understand (then it runs rustc itself).
pub fn parse_args(args: &[String]) -> Result<RustcArgs, String> {
    let mut out = RustcArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "-" || !arg.starts_with('-') {
            if arg.starts_with('@') {
                return Err(format!("an argument file {arg}"));
            }
            out.inputs.push(arg.clone());
            continue;
        }
        if FLAG_OPTIONS.contains(&arg.as_str()) {
            out.flags.push(arg.clone());
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if !VALUE_OPTIONS.contains(&name.as_str()) {
                return Err(format!("an unknown option {name}"));
            }
            let value = match value {
                Some(v) => v,
                None => {
                    let v = args.get(i).ok_or(format!("{name} without a value"))?;
                    i += 1;
                    v.clone()
                }
            };
            out.options.push((name, value));
            continue;
        }
        // A short option: `-X value` or `-Xvalue`.
        let name: String = arg.chars().take(2).collect();
        if !VALUE_OPTIONS.contains(&name.as_str()) {
            return Err(format!("an unknown option {arg}"));
        }
        let value = if arg.len() > name.len() {
            arg[name.len()..].to_string()
        } else {
            let v = args.get(i).ok_or(format!("{name} without a value"))?;
            i += 1;
            v.clone()
        };
        out.options.push((name, value));
    }
    Ok(out)
}

/// What a job's inputs are made of, before the file system is read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The job's `outputs`: rustc's `--out-dir`.
    pub outputs: Vec<String>,
    /// Directory trees whose every regular file is an input, each with one subtree left out.
    pub trees: Vec<(String, Option<String>)>,
    /// Single files (`--extern` paths, the crate root).
    pub files: Vec<String>,
    /// Directories whose `lib*.rlib`, `lib*.rmeta`, `lib*.so` and `lib*.a` files directly
    /// inside are inputs (`-L`).
    pub lib_dirs: Vec<String>,
}

/// Decides whether rustc `args`, run by cargo in `cwd` with `env`, are offloaded, and if so
/// where their inputs are. `root` is `/build` (the vendored crates in `root/vendor/`, the
/// project in `root/src/`, cargo's `root/src/target/`). `Err` says why it runs here.
pub fn plan(
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    root: &str,
) -> Result<Plan, String> {
    let parsed = parse_args(args)?;
    for flag in &parsed.flags {
        if flag != "-O" && flag != "-g" {
            return Err(format!("{flag} is not a compilation"));
        }
    }
    if parsed.values("--print").next().is_some() || parsed.values("--explain").next().is_some() {
        return Err("--print or --explain is not a compilation".into());
    }
    let [input] = parsed.inputs.as_slice() else {
        return Err("not exactly one input".into());
    };
    if input == "-" {
        return Err("the input is stdin".into());
    }
    let crate_name = parsed.values("--crate-name").last().unwrap_or("");
    let types: Vec<&str> = parsed
        .values("--crate-type")
        .flat_map(|t| t.split(','))
        .collect();
    let library = !types.is_empty()
        && types
            .iter()
            .all(|t| matches!(*t, "lib" | "rlib" | "proc-macro"));
    // A binary links like a build script; the host's order of work wants it offloaded:
    // a scout submits it as soon as its libraries are answered, while its build machine
    // may still be catching up (`docs/parallel-builds.md`, "Which jobs are offloaded").
    let binary = types == ["bin"];
    if !(library || binary || crate_name.starts_with("build_script_")) {
        return Err("not a library, a binary or a build script".into());
    }
    if parsed.values("-o").next().is_some() {
        return Err("-o names an output outside --out-dir".into());
    }
    if parsed
        .values("--emit")
        .flat_map(|e| e.split(','))
        .any(|e| e.contains('='))
    {
        return Err("--emit names an output path".into());
    }
    if parsed
        .values("-C")
        .chain(parsed.values("--codegen"))
        .any(|c| c.starts_with("incremental"))
    {
        return Err("incremental compilation writes outside --out-dir".into());
    }
    if !is_below(cwd, root) || normalize(cwd, ".").as_deref() != Some(cwd) {
        return Err(format!("the directory {cwd} is not under {root}"));
    }
    let under_root = |what: &str, p: &str| -> Result<String, String> {
        match normalize(cwd, p) {
            Some(n) if is_below(&n, root) => Ok(n),
            _ => Err(format!("{what} {p} is not under {root}")),
        }
    };
    let out_dirs: Vec<&str> = parsed.values("--out-dir").collect();
    let [out_dir] = out_dirs.as_slice() else {
        return Err("not exactly one --out-dir".into());
    };
    let mut plan = Plan {
        outputs: vec![under_root("--out-dir", out_dir)?],
        ..Plan::default()
    };

    let vendor = format!("{root}/vendor");
    let src = format!("{root}/src");
    let manifest = env
        .get("CARGO_MANIFEST_DIR")
        .ok_or("no CARGO_MANIFEST_DIR")?;
    let manifest = under_root("CARGO_MANIFEST_DIR", manifest)?;
    if is_below(&manifest, &vendor) {
        plan.trees.push((manifest, None));
    } else if is_at_or_below(&manifest, &src) {
        plan.trees
            .push((src.clone(), Some(format!("{src}/target"))));
    } else {
        return Err(format!(
            "the package {manifest} is neither vendored nor in {src}"
        ));
    }
    if let Some(out_dir) = env.get("OUT_DIR") {
        plan.trees.push((under_root("OUT_DIR", out_dir)?, None));
    }
    plan.files.push(under_root("the input", input)?);
    for ext in parsed.values("--extern") {
        if let Some((_, path)) = ext.split_once('=') {
            plan.files.push(under_root("--extern", path)?);
        }
    }
    for dir in parsed.values("-L") {
        let path = match dir.split_once('=') {
            Some((kind, path)) if LIB_KINDS.contains(&kind) => path,
            _ => dir,
        };
        // Directories outside the root (the image's) are the same in the sibling.
        if let Some(n) = normalize(cwd, path).filter(|n| is_below(n, root)) {
            plan.lib_dirs.push(n);
        }
    }
    plan.lib_dirs.sort();
    plan.lib_dirs.dedup();
    Ok(plan)
}

/// Whether `name` is a file a `-L` directory contributes.
pub fn is_lib_file(name: &str) -> bool {
    name.starts_with("lib")
        && [".rlib", ".rmeta", ".so", ".a"]
            .iter()
            .any(|ext| name.len() > 3 + ext.len() && name.ends_with(ext))
}

/// The input paths of `plan`, sorted and unique: regular files (or symbolic links to
/// them) found in the file system now.
pub fn collect(plan: &Plan) -> Result<Vec<String>, String> {
    let mut found = BTreeSet::new();
    for (dir, skip) in &plan.trees {
        walk(dir, skip.as_deref(), &mut found)?;
    }
    for file in &plan.files {
        if fs::metadata(file).map(|m| m.is_file()).unwrap_or(false) {
            found.insert(file.clone());
        }
    }
    for dir in &plan.lib_dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {dir}: {e}"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_lib_file(&name) && entry.path().is_file() {
                found.insert(format!("{dir}/{name}"));
            }
        }
        check_count(&found)?;
    }
    Ok(found.into_iter().collect())
}

fn check_count(found: &BTreeSet<String>) -> Result<(), String> {
    if found.len() > MAX_INPUTS {
        return Err(format!("more than {MAX_INPUTS} input files"));
    }
    Ok(())
}

/// Adds every regular file under `dir` (but not under `skip`) to `found`. Symbolic links
/// to files count as files; links to directories are not followed.
fn walk(dir: &str, skip: Option<&str>, found: &mut BTreeSet<String>) -> Result<(), String> {
    let mut stack = vec![dir.to_string()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {dir}: {e}")),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {dir}: {e}"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(format!("a file name in {dir} is not UTF-8"));
            };
            let path = format!("{dir}/{name}");
            let kind = entry
                .file_type()
                .map_err(|e| format!("reading {path}: {e}"))?;
            if kind.is_dir() {
                if Some(path.as_str()) != skip {
                    stack.push(path);
                }
            } else if kind.is_file()
                || (kind.is_symlink() && fs::metadata(&path).is_ok_and(|m| m.is_file()))
            {
                found.insert(path);
            }
        }
        check_count(found)?;
    }
    Ok(())
}

/// What happened to an invocation.
enum Outcome {
    /// The result is applied; exit with this code.
    Done(u8),
    /// Run rustc here; say why if the reason is worth a line on stderr.
    Local(Option<String>),
}

/// Runs the wrapper: never returns.
pub fn run(rustc: OsString, args: Vec<OsString>) -> ! {
    match offload(&rustc, &args) {
        Outcome::Done(code) => std::process::exit(i32::from(code)),
        Outcome::Local(reason) => {
            if let Some(reason) = reason {
                eprintln!("cmbuild-offload: {reason}; running rustc here");
            }
            exec_local(&rustc, &args)
        }
    }
}

fn exec_local(rustc: &OsStr, args: &[OsString]) -> ! {
    let err = Command::new(rustc).args(args).exec();
    eprintln!(
        "cmbuild-offload: cannot run {}: {err}",
        rustc.to_string_lossy()
    );
    std::process::exit(127)
}

fn offload(rustc: &OsStr, args: &[OsString]) -> Outcome {
    let quiet = || Outcome::Local(None);
    let Some(socket) = std::env::var_os(SOCKET_ENV) else {
        return quiet();
    };
    let root = std::env::var(ROOT_ENV).unwrap_or_else(|_| DEFAULT_ROOT.to_string());
    let (Some(socket), Some(rustc)) = (socket.to_str(), rustc.to_str()) else {
        return quiet();
    };
    let Some(args) = args
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return quiet();
    };
    let mut env = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            return quiet();
        };
        if keeps_env(k) {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let Some(cwd) = std::env::current_dir()
        .ok()
        .and_then(|c| c.to_str().map(str::to_string))
    else {
        return quiet();
    };
    let Ok(plan) = plan(&args, &env, &cwd, &root) else {
        return quiet();
    };
    // The multiplexer not running is not an error: offloading is off.
    let Ok(mut client) = Client::connect(socket) else {
        return quiet();
    };
    match offload_job(&mut client, rustc, args, env, cwd, &plan) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Local(Some(e)),
    }
}

fn offload_job(
    client: &mut Client,
    rustc: &str,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: String,
    plan: &Plan,
) -> Result<Outcome, String> {
    let paths = match collect(plan) {
        Ok(p) => p,
        Err(e) => return Ok(Outcome::Local(Some(e))),
    };
    let hashes = client
        .hash(&paths)
        .map_err(|e| format!("hashing the inputs: {e}"))?;
    let inputs: Vec<FileEntry> = paths
        .into_iter()
        .zip(hashes)
        .filter_map(|(path, h)| {
            h.map(|FileHash { sha256, size, exec }| FileEntry {
                path,
                sha256,
                size,
                exec,
            })
        })
        .collect();
    let mut argv = vec![rustc.to_string()];
    argv.extend(args);
    let job = Job {
        argv,
        cwd,
        env,
        inputs,
        outputs: plan.outputs.clone(),
    };
    let body = job.to_body();
    if body.len() > proto::MAX_REQUEST {
        return Ok(Outcome::Local(Some(format!(
            "the job's description ({} bytes) exceeds the channel's limit",
            body.len()
        ))));
    }
    for _ in 0..MAX_ROUNDS {
        let response = client
            .submit(&body)
            .map_err(|e| format!("submitting the job: {e}"))?;
        match wire::parse_response(&response).map_err(|e| format!("the host's answer: {e}"))? {
            Response::Missing(digests) => send_blobs(client, &job, &digests)?,
            Response::Result { head, payload } => {
                let exit = apply(client, &job, &head, payload, None)?;
                return Ok(Outcome::Done(exit));
            }
            Response::Meta { head, of, payload } => {
                // Cargo starts this library's dependents on the metadata notice at the end
                // of the standard error so far; the rest of the result comes after.
                let early = apply_meta(client, &job, &head, payload)?;
                return finish_rest(client, &job, of, early);
            }
            Response::Refused(message) => {
                return Ok(Outcome::Local(Some(format!(
                    "the host refused the job ({})",
                    sanitize(&message)
                ))))
            }
            Response::Ok => return Err("the host answered a job with ok".into()),
        }
    }
    Err(format!(
        "the host still lacks inputs after {} submissions",
        MAX_ROUNDS
    ))
}

/// Untrusted text cut to 200 printable ASCII characters.
fn sanitize(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Sends the inputs named by `digests` (each one of the job's inputs) as `blob` chunks.
fn send_blobs(client: &mut Client, job: &Job, digests: &[[u8; 32]]) -> Result<(), String> {
    let mut files = Vec::with_capacity(digests.len());
    for digest in digests {
        let entry = job
            .inputs
            .iter()
            .find(|i| &i.sha256 == digest)
            .ok_or("the host asked for a blob that is not an input")?;
        files.push(entry);
    }
    // Each file is read and checked whole before its chunks go out: the host receives
    // exactly the bytes the job's digest names, or nothing.
    let mut chunks: Vec<io::Result<Vec<u8>>> = Vec::new();
    let mut responses = Vec::new();
    for entry in files {
        let data = fs::read(&entry.path).map_err(|e| format!("reading {}: {e}", entry.path))?;
        if data.len() as u64 != entry.size || sha256::digest(&data) != entry.sha256 {
            return Err(format!("{} changed since it was hashed", entry.path));
        }
        let mut offset = 0usize;
        loop {
            let end = (offset + wire::MAX_CHUNK).min(data.len());
            chunks.push(Ok(wire::blob_body(
                &entry.sha256,
                offset as u64,
                entry.size,
                &data[offset..end],
            )));
            offset = end;
            if offset >= data.len() {
                break;
            }
        }
        responses.extend(
            client
                .submit_all(chunks.drain(..), BLOB_WINDOW)
                .map_err(|e| format!("sending blobs: {e}"))?,
        );
    }
    for response in responses {
        match wire::parse_response(&response) {
            Ok(Response::Ok) => {}
            Ok(Response::Refused(m)) => {
                return Err(format!("the host refused a blob ({})", sanitize(&m)))
            }
            Ok(_) => return Err("the host answered a blob with something else".into()),
            Err(e) => return Err(format!("the host's answer to a blob: {e}")),
        }
    }
    Ok(())
}

/// What a `meta` response already gave: its standard error and its files.
struct Early {
    stderr: Vec<u8>,
    files: Vec<FileEntry>,
}

/// Applies a `meta` response: its files written, its standard error copied.
fn apply_meta(
    client: &mut Client,
    job: &Job,
    head: &MetaHead,
    payload: &[u8],
) -> Result<Early, String> {
    let (stderr, rest) = payload.split_at(head.stderr as usize);
    write_files(client, job, &head.files, rest, &[])?;
    let _ = io::stderr()
        .write_all(stderr)
        .and_then(|_| io::stderr().flush());
    Ok(Early {
        stderr: stderr.to_vec(),
        files: head.files.clone(),
    })
}

/// Asks for the rest of the job whose `meta` response was tagged `of`, and applies it.
fn finish_rest(client: &mut Client, job: &Job, of: u64, early: Early) -> Result<Outcome, String> {
    let response = client
        .submit(&wire::rest_body(of))
        .map_err(|e| format!("asking for the rest of the job: {e}"))?;
    match wire::parse_response(&response).map_err(|e| format!("the host's answer: {e}"))? {
        Response::Result { head, payload } => Ok(Outcome::Done(apply(
            client,
            job,
            &head,
            payload,
            Some(&early),
        )?)),
        Response::Refused(message) => Ok(Outcome::Local(Some(format!(
            "the host refused the rest of the job ({})",
            sanitize(&message)
        )))),
        _ => Err("the host answered the rest of a job with something else".into()),
    }
}

/// Checks a result against the job (every file under one of its outputs, every digest
/// right) and applies it: writes the files, registers their digests with the
/// multiplexer, copies the streams. Returns the exit code. Nothing is written unless
/// everything checks out. What an `early` (`meta`) response gave is not given twice: its
/// standard error is skipped where the result's starts with it, and a file it wrote with
/// the same digest is not written again (a dependent may be reading it).
fn apply(
    client: &mut Client,
    job: &Job,
    head: &ResultHead,
    payload: &[u8],
    early: Option<&Early>,
) -> Result<u8, String> {
    let (stdout, rest) = payload.split_at(head.stdout as usize);
    let (stderr, rest) = rest.split_at(head.stderr as usize);
    let written_early = early.map_or(&[][..], |e| &e.files[..]);
    write_files(client, job, &head.files, rest, written_early)?;
    let stderr = early
        .and_then(|e| stderr.strip_prefix(&e.stderr[..]))
        .unwrap_or(stderr);
    let _ = io::stdout()
        .write_all(stdout)
        .and_then(|_| io::stdout().flush());
    let _ = io::stderr()
        .write_all(stderr)
        .and_then(|_| io::stderr().flush());
    Ok(head.exit)
}

/// Checks `files` (their bytes one after another in `payload`) against the job and writes
/// those not in `skip` (same path and digest), registering their digests.
fn write_files(
    client: &mut Client,
    job: &Job,
    entries: &[FileEntry],
    payload: &[u8],
    skip: &[FileEntry],
) -> Result<(), String> {
    let mut rest = payload;
    let mut files = Vec::with_capacity(entries.len());
    for f in entries {
        if !job.outputs.iter().any(|o| is_below(&f.path, o)) {
            return Err(format!(
                "the result names {}, outside the job's outputs",
                sanitize(&f.path)
            ));
        }
        let (data, tail) = rest.split_at(f.size as usize);
        rest = tail;
        if sha256::digest(data) != f.sha256 {
            return Err(format!("the result's {} does not match its digest", f.path));
        }
        files.push((f, data));
    }
    let mut written = Vec::with_capacity(files.len());
    for (f, data) in files {
        if skip
            .iter()
            .any(|s| s.path == f.path && s.sha256 == f.sha256 && s.exec == f.exec)
        {
            continue;
        }
        write_atomically(&f.path, data, f.exec).map_err(|e| format!("writing {}: {e}", f.path))?;
        written.push((f.path.clone(), f.sha256, f.size));
    }
    // A failure here only costs a later hash.
    let _ = client.register(&written);
    Ok(())
}

/// Writes `path` by a rename from a temporary file beside it (parents created), with mode
/// 0755 or 0644.
fn write_atomically(path: &str, data: &[u8], exec: bool) -> io::Result<()> {
    let path = Path::new(path);
    let parent = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    fs::create_dir_all(parent)?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".cmbuild-offload.{}.tmp", std::process::id()));
    let tmp = parent.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(data)?;
        file.set_permissions(fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }))?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const T: &str = "x86_64-unknown-linux-gnu";

    /// serde 1.0.219 as cargo compiles it for a target (the shape of a real invocation).
    fn serde_lib() -> Vec<String> {
        let mut a = words(
            "--crate-name serde --edition=2018 /build/vendor/serde-1.0.219/src/lib.rs \
             --error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat \
             --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 -C embed-bitcode=no \
             --cfg",
        );
        a.push("feature=\"std\"".into());
        a.extend(words(&format!(
            "--cfg feature=\"derive\" --check-cfg cfg(docsrs,test) \
             -C metadata=0f5a7d2c1e3b4a59 -C extra-filename=-2c1d8f0e7a6b5c4d \
             --out-dir /build/src/target/{T}/release/deps --target {T} \
             -C linker=clang -C strip=debuginfo \
             -L dependency=/build/src/target/{T}/release/deps \
             -L dependency=/build/src/target/release/deps \
             --extern serde_derive=/build/src/target/release/deps/libserde_derive-8e1f2a3b4c5d6e7f.so \
             --cap-lints allow --remap-path-prefix=/build/src=/src \
             --remap-path-prefix=/build/vendor=/vendor -C link-arg=--target=x86_64-linux-gnu \
             --cfg no_core_error"
        )));
        a
    }

    fn serde_env() -> BTreeMap<String, String> {
        env(&[
            ("CARGO_MANIFEST_DIR", "/build/vendor/serde-1.0.219"),
            ("CARGO_PKG_NAME", "serde"),
            (
                "OUT_DIR",
                "/build/src/target/x86_64-unknown-linux-gnu/release/build/serde-6e4b9a0c1d2e3f40/out",
            ),
        ])
    }

    #[test]
    fn parses_cargo_style_arguments() {
        let p = parse_args(&serde_lib()).unwrap();
        assert_eq!(p.inputs, ["/build/vendor/serde-1.0.219/src/lib.rs"]);
        assert_eq!(p.values("--crate-type").collect::<Vec<_>>(), ["lib"]);
        assert_eq!(p.values("--edition").collect::<Vec<_>>(), ["2018"]);
        assert_eq!(
            p.values("--cfg").collect::<Vec<_>>(),
            ["feature=\"std\"", "feature=\"derive\"", "no_core_error"]
        );
        assert_eq!(p.values("-L").count(), 2);
        // Joined short options and `--x=y` long ones.
        let p = parse_args(&words(
            "-Copt-level=3 -Ldependency=/d --crate-type=rlib -O x.rs",
        ))
        .unwrap();
        assert_eq!(
            p.options,
            [
                ("-C".to_string(), "opt-level=3".to_string()),
                ("-L".into(), "dependency=/d".into()),
                ("--crate-type".into(), "rlib".into()),
            ]
        );
        assert_eq!(
            (p.flags, p.inputs),
            (vec!["-O".to_string()], vec!["x.rs".to_string()])
        );
        assert!(parse_args(&words("--frobnicate x.rs")).is_err());
        assert!(parse_args(&words("-Q x.rs")).is_err());
        assert!(parse_args(&words("x.rs --out-dir")).is_err());
        assert!(parse_args(&words("@args.txt")).is_err());
    }

    #[test]
    fn a_vendored_library_is_offloaded_with_its_inputs() {
        let plan = plan(
            &serde_lib(),
            &serde_env(),
            "/build/vendor/serde-1.0.219",
            "/build",
        )
        .unwrap();
        assert_eq!(
            plan.outputs,
            [format!("/build/src/target/{T}/release/deps")]
        );
        assert_eq!(
            plan.trees,
            [
                ("/build/vendor/serde-1.0.219".to_string(), None),
                (
                    format!("/build/src/target/{T}/release/build/serde-6e4b9a0c1d2e3f40/out"),
                    None
                ),
            ]
        );
        assert_eq!(
            plan.files,
            [
                "/build/vendor/serde-1.0.219/src/lib.rs",
                "/build/src/target/release/deps/libserde_derive-8e1f2a3b4c5d6e7f.so",
            ]
        );
        assert_eq!(
            plan.lib_dirs,
            [
                "/build/src/target/release/deps".to_string(),
                format!("/build/src/target/{T}/release/deps"),
            ]
        );
    }

    #[test]
    fn a_path_package_takes_the_whole_source_but_target() {
        // A workspace member: cargo runs in the workspace root with a relative crate root.
        let args = words(&format!(
            "--crate-name app_core --edition=2021 crates/core/src/lib.rs --error-format=json \
             --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 \
             -C metadata=1 --out-dir /build/src/target/{T}/release/deps --target {T} \
             -L dependency=/build/src/target/{T}/release/deps \
             --extern serde=/build/src/target/{T}/release/deps/libserde-2c1d8f0e7a6b5c4d.rmeta \
             -L native=/usr/lib/x86_64-linux-gnu"
        ));
        let plan = plan(
            &args,
            &env(&[("CARGO_MANIFEST_DIR", "/build/src/crates/core")]),
            "/build/src",
            "/build",
        )
        .unwrap();
        assert_eq!(
            plan.trees,
            [(
                "/build/src".to_string(),
                Some("/build/src/target".to_string())
            )]
        );
        assert_eq!(
            plan.files,
            [
                "/build/src/crates/core/src/lib.rs".to_string(),
                format!("/build/src/target/{T}/release/deps/libserde-2c1d8f0e7a6b5c4d.rmeta"),
            ]
        );
        assert_eq!(
            plan.lib_dirs,
            [format!("/build/src/target/{T}/release/deps")],
            "-L outside the root is the image's, not an input"
        );
    }

    #[test]
    fn build_scripts_and_proc_macros_are_offloaded() {
        let build_script = words(
            "--crate-name build_script_build --edition=2018 \
             /build/vendor/serde-1.0.219/build.rs --error-format=json \
             --json=diagnostic-rendered-ansi,artifacts,future-incompat --crate-type bin \
             --emit=dep-info,link -C embed-bitcode=no -C debug-assertions=off \
             -C metadata=3 -C extra-filename=-3 \
             --out-dir /build/src/target/release/build/serde-3 \
             -L dependency=/build/src/target/release/deps --cap-lints allow",
        );
        let e = env(&[("CARGO_MANIFEST_DIR", "/build/vendor/serde-1.0.219")]);
        let p = plan(&build_script, &e, "/build/vendor/serde-1.0.219", "/build").unwrap();
        assert_eq!(p.outputs, ["/build/src/target/release/build/serde-3"]);
        let proc_macro = words(
            "--crate-name serde_derive --edition=2015 \
             /build/vendor/serde_derive-1.0.219/src/lib.rs --error-format=json \
             --crate-type proc-macro --emit=dep-info,link -C prefer-dynamic \
             -C embed-bitcode=no -C metadata=4 --out-dir /build/src/target/release/deps \
             -L dependency=/build/src/target/release/deps \
             --extern proc_macro2=/build/src/target/release/deps/libproc_macro2-5.rlib \
             --extern proc_macro --cap-lints allow",
        );
        let e = env(&[("CARGO_MANIFEST_DIR", "/build/vendor/serde_derive-1.0.219")]);
        let p = plan(
            &proc_macro,
            &e,
            "/build/vendor/serde_derive-1.0.219",
            "/build",
        )
        .unwrap();
        assert_eq!(
            p.files,
            [
                "/build/vendor/serde_derive-1.0.219/src/lib.rs",
                "/build/src/target/release/deps/libproc_macro2-5.rlib",
            ],
            "--extern proc_macro (no path) adds nothing"
        );
        let rlib_and_lib = words(
            "--crate-name x src/lib.rs --crate-type rlib --crate-type lib,rlib \
             --out-dir /build/src/target/release/deps",
        );
        let e = env(&[("CARGO_MANIFEST_DIR", "/build/src")]);
        assert!(plan(&rlib_and_lib, &e, "/build/src", "/build").is_ok());
    }

    #[test]
    fn the_projects_binary_is_offloaded_with_the_project_and_its_libraries() {
        let bin = words(&format!(
            "--crate-name app --edition=2021 src/main.rs --crate-type bin \
             --emit=dep-info,link -C opt-level=3 --out-dir /build/src/target/{T}/release/deps \
             --target {T} -C linker=x86_64-linux-gnu-gcc \
             -L dependency=/build/src/target/{T}/release/deps \
             --extern clap=/build/src/target/{T}/release/deps/libclap-1.rlib"
        ));
        let e = env(&[("CARGO_MANIFEST_DIR", "/build/src")]);
        let p = plan(&bin, &e, "/build/src", "/build").unwrap();
        assert_eq!(p.outputs, [format!("/build/src/target/{T}/release/deps")]);
        assert_eq!(
            p.trees,
            [(
                "/build/src".to_owned(),
                Some("/build/src/target".to_owned())
            )]
        );
        assert_eq!(
            p.files,
            [
                "/build/src/src/main.rs".to_owned(),
                format!("/build/src/target/{T}/release/deps/libclap-1.rlib"),
            ]
        );
    }

    #[test]
    fn everything_else_runs_here() {
        let e = env(&[("CARGO_MANIFEST_DIR", "/build/src")]);
        let local = |args: &str| plan(&words(args), &e, "/build/src", "/build");
        let out = format!("--out-dir /build/src/target/{T}/release/deps");
        for args in [
            // cargo's probes
            "-vV".to_string(),
            "- --crate-name ___ --print=file-names --crate-type bin --crate-type rlib".into(),
            format!("--crate-name ___ --print=cfg --target {T} -"),
            // a test, a cdylib, a staticlib, a binary that is a library too, no crate type
            format!("--crate-name app src/main.rs --test {out}"),
            format!("--crate-name app src/main.rs --crate-type bin --crate-type lib {out}"),
            format!("--crate-name app src/lib.rs --crate-type cdylib {out}"),
            format!("--crate-name app src/lib.rs --crate-type lib --crate-type staticlib {out}"),
            format!("--crate-name app src/lib.rs --crate-type lib,dylib {out}"),
            format!("--crate-name app src/lib.rs {out}"),
            // autocfg-style probes read stdin
            format!("--crate-name probe0 --crate-type lib --emit=llvm-ir {out} -"),
            // outputs elsewhere
            "--crate-name app src/lib.rs --crate-type lib -o /build/src/x.rlib".into(),
            "--crate-name app src/lib.rs --crate-type lib".into(),
            format!("--crate-name app src/lib.rs --crate-type lib {out} --emit=link=/tmp/x"),
            format!("--crate-name app src/lib.rs --crate-type lib {out} -C incremental=/x"),
            "--crate-name app src/lib.rs --crate-type lib --out-dir /tmp/deps".into(),
            format!("--crate-name app src/lib.rs --crate-type lib {out} {out}"),
            // inputs outside the root
            format!("--crate-name app /tmp/lib.rs --crate-type lib {out}"),
            format!("--crate-name app src/lib.rs --crate-type lib {out} --extern a=/tmp/liba.rlib"),
            // two inputs, an unknown option, an argument file
            format!("--crate-name app src/lib.rs other.rs --crate-type lib {out}"),
            format!("--crate-name app src/lib.rs --crate-type lib {out} --frobnicate"),
            format!("--crate-name app src/lib.rs --crate-type lib {out} @/build/args"),
        ] {
            assert!(local(&args).is_err(), "offloaded: {args}");
        }
        // The package must be vendored or in the project, the directory under the root.
        let lib = words(&format!("--crate-name a src/lib.rs --crate-type lib {out}"));
        assert!(plan(&lib, &env(&[]), "/build/src", "/build").is_err());
        let outside = env(&[("CARGO_MANIFEST_DIR", "/home/u/a")]);
        assert!(plan(&lib, &outside, "/build/src", "/build").is_err());
        let home = env(&[("CARGO_MANIFEST_DIR", "/build/cargo-home/git/a")]);
        assert!(plan(&lib, &home, "/build/src", "/build").is_err());
        assert!(plan(&lib, &e, "/tmp", "/build").is_err());
        let bad_out = env(&[("CARGO_MANIFEST_DIR", "/build/src"), ("OUT_DIR", "/tmp/o")]);
        assert!(plan(&lib, &bad_out, "/build/src", "/build").is_err());
        assert!(plan(&lib, &e, "/build/src", "/build").is_ok());
    }

    #[test]
    fn environment_filter() {
        for dropped in [
            "PATH",
            "HOME",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
            "TERM",
            "MAKEFLAGS",
            "MFLAGS",
            "CARGO_MAKEFLAGS",
            "CMBUILD_OFFLOAD_SOCKET",
            "CMBUILD_OFFLOAD_ROOT",
        ] {
            assert!(!keeps_env(dropped), "{dropped}");
        }
        for kept in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "RUSTFLAGS",
            "SOURCE_DATE_EPOCH",
            "LANG",
            "TZ",
            "CMBUILD_PLAN_VERSION",
            "PATHS",
            "HOMEDIR",
        ] {
            assert!(keeps_env(kept), "{kept}");
        }
    }

    #[test]
    fn lib_files() {
        for name in [
            "libserde-2c1d8f0e7a6b5c4d.rlib",
            "libserde-2c1d8f0e7a6b5c4d.rmeta",
            "libserde_derive-8e.so",
            "libring_core.a",
        ] {
            assert!(is_lib_file(name), "{name}");
        }
        for name in [
            "serde-2c1d.d",
            "lib.rlib",
            "build-script-build",
            "libx.rlib.tmp",
            "x.rlib",
        ] {
            assert!(!is_lib_file(name), "{name}");
        }
    }

    #[test]
    fn collect_walks_the_trees() {
        let dir =
            std::env::temp_dir().join(format!("cmbuild-offload-collect-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.to_str().unwrap().to_string();
        let mk = |p: &str, data: &str| {
            let path = format!("{root}/{p}");
            fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        };
        mk("src/Cargo.toml", "[package]");
        mk("src/src/lib.rs", "//");
        mk("src/target/release/deps/libdep-1.rlib", "r");
        mk("src/target/release/deps/libdep-1.rmeta", "m");
        mk("src/target/release/deps/dep-1.d", "d");
        mk("src/target/release/deps/sub/libnested-1.rlib", "n");
        mk("src/target/release/build/x-1/out/gen.rs", "g");
        std::os::unix::fs::symlink(
            format!("{root}/src/src/lib.rs"),
            format!("{root}/src/link.rs"),
        )
        .unwrap();
        std::os::unix::fs::symlink(format!("{root}/src/src"), format!("{root}/src/linkdir"))
            .unwrap();
        let plan = Plan {
            outputs: vec![format!("{root}/src/target/release/deps")],
            trees: vec![
                (format!("{root}/src"), Some(format!("{root}/src/target"))),
                (format!("{root}/src/target/release/build/x-1/out"), None),
            ],
            files: vec![format!("{root}/src/src/lib.rs"), format!("{root}/none")],
            lib_dirs: vec![format!("{root}/src/target/release/deps")],
        };
        let found = collect(&plan).unwrap();
        let rel: Vec<&str> = found.iter().map(|p| &p[root.len() + 1..]).collect();
        assert_eq!(
            rel,
            [
                "src/Cargo.toml",
                "src/link.rs",
                "src/src/lib.rs",
                "src/target/release/build/x-1/out/gen.rs",
                "src/target/release/deps/libdep-1.rlib",
                "src/target/release/deps/libdep-1.rmeta",
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
