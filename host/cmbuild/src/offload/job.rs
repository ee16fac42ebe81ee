//! One offloaded rustc invocation, as the guest describes it (`docs/parallel-builds.md`,
//! "The job format"): validated before anything uses it, written back canonically, and
//! named by its action digest, the cache key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cmbuild_store::cid::Cid;
use cmbuild_store::sha256::Sha256;
use serde::{Deserialize, Serialize};

/// Longest path the guest may name, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Most arguments of one job.
pub const MAX_ARGS: usize = 16_384;
/// Most environment variables of one job.
pub const MAX_ENV: usize = 4096;
/// Most input files of one job.
pub const MAX_INPUTS: usize = 200_000;
/// Most output directories of one job.
pub const MAX_OUTPUTS: usize = 16;
/// Largest input file.
pub const MAX_INPUT_SIZE: u64 = 1 << 30;
/// Largest sum of a job's input sizes.
pub const MAX_INPUTS_TOTAL: u64 = 8 << 30;
/// The one directory every path of a job is under.
pub const ROOT: &str = "/build/";
/// The job format this host reads.
pub const VERSION: u32 = 1;
/// Variables that almost no compile reads but that differ where the compile does not:
/// `SOURCE_DATE_EPOCH` changes with every release, and `TARGETS` (the build driver's list
/// of its machine's triples) and `RUSTFLAGS` (the flags cargo gives that triple's units,
/// which it also leaves in every rustc's environment) differ between the build machines of
/// one release. A job first runs without them, and only if rustc's dep-info says the crate
/// read one (`# env-dep:`, what `env!` and `option_env!` record) is it run again with them.
/// That is the rule cargo itself uses to reuse a dependency's artifacts: it lets the next
/// release take its unchanged dependencies from the cache, and the build machines of one
/// release share the jobs compiled for the guest itself (proc macros, build scripts and
/// their dependencies), which are otherwise the same in every machine.
pub const VOLATILE_ENV: &[&str] = &["SOURCE_DATE_EPOCH", "TARGETS", "RUSTFLAGS"];

/// Domain of the action digest (its version is the REAPI `salt`).
const ACTION_DOMAIN: &[u8] = b"cmbuild offload action v1\n";

/// Why a job was refused. Each is answered to the guest as an `error` (the wrapper then
/// runs rustc itself), so each is a function of the request alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// the job is not JSON of the job format: {0}
    #[error("the job is not JSON of the job format: {0}")]
    Format(String),
    /// job format version {0} is not 1
    #[error("job format version {0} is not 1")]
    Version(u32),
    /// path {0:?} is not an absolute, normalised path under /build/
    #[error("path {0:?} is not an absolute, normalised path under /build/")]
    Path(String),
    /// {what} has {count} entries, more than {max}
    #[error("{what} has {count} entries, more than {max}")]
    TooMany {
        /// argv, env, inputs or outputs.
        what: &'static str,
        /// How many there are.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// the job names no program
    #[error("the job names no program")]
    NoProgram,
    /// environment variable name {0:?} is not allowed
    #[error("environment variable name {0:?} is not allowed")]
    EnvName(String),
    /// an argument or environment value holds a NUL byte
    #[error("an argument or environment value holds a NUL byte")]
    Nul,
    /// inputs are not sorted by path, or {0:?} is named twice
    #[error("inputs are not sorted by path, or {0:?} is named twice")]
    Order(String),
    /// input {0:?} is both a file and a directory of other inputs
    #[error("input {0:?} is both a file and a directory of other inputs")]
    FileAndDir(String),
    /// input {path:?} is {size} bytes, more than {max}
    #[error("input {path:?} is {size} bytes, more than {max}")]
    TooLarge {
        /// The input.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// the job has no output directory
    #[error("the job has no output directory")]
    NoOutputs,
    /// input {0:?} is under /build/in, which the sibling's own input drive takes
    #[error("input {0:?} is under /build/in, which the sibling's own input drive takes")]
    Reserved(String),
}

/// An absolute, normalised guest path under [`ROOT`]: no `.` or `..` component, no empty
/// component (`//`), no trailing `/`, no NUL, at most [`MAX_PATH`] bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GuestPath(String);

impl GuestPath {
    /// Checks `path`.
    pub fn new(path: &str) -> Result<GuestPath, JobError> {
        let bad = || JobError::Path(truncated(path));
        let rest = path.strip_prefix(ROOT).ok_or_else(bad)?;
        if path.len() > MAX_PATH || rest.is_empty() || path.contains('\0') {
            return Err(bad());
        }
        if rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad());
        }
        Ok(GuestPath(path.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/` (`build/src/...`), as a tree inside an image has it.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// Whether `self` is `dir` or inside it.
    pub fn is_under(&self, dir: &GuestPath) -> bool {
        self.0 == dir.0
            || (self.0.starts_with(&dir.0) && self.0.as_bytes().get(dir.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPath({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for GuestPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GuestPath, D::Error> {
        let text = String::deserialize(d)?;
        GuestPath::new(&text).map_err(serde::de::Error::custom)
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(200).collect()
}

/// One file a job may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Executable bit (the file's mode is 0755, else 0644).
    pub exec: bool,
    /// Where rustc finds it.
    pub path: GuestPath,
    /// Its contents' digest.
    pub sha256: Sha256,
    /// Its size in bytes.
    pub size: u64,
}

/// A job: field order is the canonical JSON's key order (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    argv: Vec<String>,
    cwd: GuestPath,
    env: BTreeMap<String, String>,
    inputs: Vec<Input>,
    kind: String,
    outputs: Vec<GuestPath>,
    v: u32,
}

/// A validated job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The program (`argv[0]`) and its arguments.
    pub argv: Vec<String>,
    /// Where it runs.
    pub cwd: GuestPath,
    /// Its whole environment but `PATH` and `HOME` (sorted by name).
    pub env: BTreeMap<String, String>,
    /// What it may read, sorted by path, unique.
    pub inputs: Vec<Input>,
    /// Directories whose new or changed files are its result, sorted, unique.
    pub outputs: Vec<GuestPath>,
}

/// What, beyond the job itself, decides its result: the machine it runs in. These are
/// the REAPI action's platform properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// `f(C) = latency + C` (the board's `min_latency`).
    pub latency: u64,
    /// The hash scheme of root hashes (`cmvm-sha256-v1`).
    pub scheme: String,
    /// The template siblings resume from (its root hash).
    pub template: String,
    /// `cmbuild-offload`'s digest (the sibling's `run-job`).
    pub tool: Sha256,
    /// Under a glibc floor, its sysroots' image on the sibling's scratch drive (the jobs
    /// link against it); absent otherwise, so that a run without one keeps its digests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Cid>,
}

impl Job {
    /// The crate rustc compiles (its `--crate-name`), to name the job to the user; when the
    /// command names none (a build script's own rustc run, say), says so. Untrusted text:
    /// sanitise it before it reaches a terminal.
    pub fn crate_name(&self) -> &str {
        self.argv
            .windows(2)
            .find(|w| w[0] == "--crate-name")
            .map_or("(rustc with no --crate-name)", |w| w[1].as_str())
    }

    /// The job as the user knows it: its crate, or for a build script (whose crate cargo
    /// names `build_script_<file stem>` in every package) its package's, from cargo's
    /// `CARGO_PKG_NAME`: `libc build script`. Untrusted text, as [`Job::crate_name`].
    pub fn display_name(&self) -> String {
        let name = self.crate_name();
        match (
            name.starts_with("build_script_"),
            self.env.get("CARGO_PKG_NAME"),
        ) {
            (true, Some(package)) => format!("{package} build script"),
            _ => name.to_owned(),
        }
    }

    /// Parses and checks a job's JSON (a `job` request's header line).
    pub fn parse(json: &[u8]) -> Result<Job, JobError> {
        let wire: Wire =
            serde_json::from_slice(json).map_err(|e| JobError::Format(e.to_string()))?;
        if wire.kind != "job" {
            return Err(JobError::Format(format!(
                "kind {:?}",
                truncated(&wire.kind)
            )));
        }
        if wire.v != VERSION {
            return Err(JobError::Version(wire.v));
        }
        let job = Job {
            argv: wire.argv,
            cwd: wire.cwd,
            env: wire.env,
            inputs: wire.inputs,
            outputs: wire.outputs,
        };
        job.check()?;
        Ok(job)
    }

    /// Checks the limits and the orders [`Job::parse`] requires.
    pub fn check(&self) -> Result<(), JobError> {
        let limit = |what, count, max| match count > max {
            true => Err(JobError::TooMany { what, count, max }),
            false => Ok(()),
        };
        limit("argv", self.argv.len(), MAX_ARGS)?;
        limit("env", self.env.len(), MAX_ENV)?;
        limit("inputs", self.inputs.len(), MAX_INPUTS)?;
        limit("outputs", self.outputs.len(), MAX_OUTPUTS)?;
        if self.argv.first().is_none_or(|p| p.is_empty()) {
            return Err(JobError::NoProgram);
        }
        let values = self.argv.iter().chain(self.env.values());
        if values.clone().any(|v| v.contains('\0')) {
            return Err(JobError::Nul);
        }
        for name in self.env.keys() {
            let ok = !name.is_empty()
                && name.len() <= 256
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok || matches!(name.as_str(), "PATH" | "HOME") {
                return Err(JobError::EnvName(truncated(name)));
            }
        }
        if self.outputs.is_empty() {
            return Err(JobError::NoOutputs);
        }
        if self.outputs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(JobError::Order(self.outputs[0].to_string()));
        }
        let reserved = GuestPath("/build/in".to_owned());
        let mut total = 0u64;
        for (i, input) in self.inputs.iter().enumerate() {
            if let Some(prev) = i.checked_sub(1).map(|p| &self.inputs[p]) {
                if prev.path >= input.path {
                    return Err(JobError::Order(input.path.to_string()));
                }
            }
            if input.path.is_under(&reserved) {
                return Err(JobError::Reserved(input.path.to_string()));
            }
            if input.size > MAX_INPUT_SIZE {
                return Err(JobError::TooLarge {
                    path: input.path.to_string(),
                    size: input.size,
                    max: MAX_INPUT_SIZE,
                });
            }
            total += input.size;
            if total > MAX_INPUTS_TOTAL {
                return Err(JobError::TooLarge {
                    path: input.path.to_string(),
                    size: total,
                    max: MAX_INPUTS_TOTAL,
                });
            }
        }
        // A file that is also a directory of another input cannot be laid out as a tree.
        let dirs: BTreeSet<&str> = self
            .inputs
            .iter()
            .flat_map(|i| {
                let p = i.path.as_str();
                p.match_indices('/').map(move |(at, _)| &p[..at])
            })
            .collect();
        if let Some(both) = self.inputs.iter().find(|i| dirs.contains(i.path.as_str())) {
            return Err(JobError::FileAndDir(both.path.to_string()));
        }
        Ok(())
    }

    /// The canonical JSON line of the job (keys sorted, no whitespace), without the `\n`.
    pub fn canonical_json(&self) -> Vec<u8> {
        let wire = Wire {
            argv: self.argv.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            inputs: self.inputs.clone(),
            kind: "job".to_owned(),
            outputs: self.outputs.clone(),
            v: VERSION,
        };
        serde_json::to_vec(&wire).expect("a job always serializes")
    }

    /// The action digest: the cache key. It covers the job (canonically) and the platform,
    /// so a result computed on another template, toolchain or latency never matches.
    pub fn action_digest(&self, platform: &Platform) -> Sha256 {
        let mut bytes = ACTION_DOMAIN.to_vec();
        bytes.extend(serde_json::to_vec(platform).expect("a platform always serializes"));
        bytes.push(b'\n');
        bytes.extend(self.canonical_json());
        Sha256::of(bytes)
    }

    /// The job without [`VOLATILE_ENV`]: what runs first (`None` when it has none of them).
    pub fn without_volatile_env(&self) -> Option<Job> {
        if !VOLATILE_ENV.iter().any(|v| self.env.contains_key(*v)) {
            return None;
        }
        let mut job = self.clone();
        job.env
            .retain(|name, _| !VOLATILE_ENV.contains(&name.as_str()));
        Some(job)
    }

    /// Whether `path` is under one of the job's output directories.
    pub fn is_output(&self, path: &GuestPath) -> bool {
        self.outputs.iter().any(|dir| path.is_under(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Job {
        let input = |path: &str, data: &[u8]| Input {
            exec: false,
            path: GuestPath::new(path).unwrap(),
            sha256: Sha256::of(data),
            size: data.len() as u64,
        };
        Job {
            argv: vec!["rustc".into(), "--crate-name".into(), "itoa".into()],
            cwd: GuestPath::new("/build/vendor/itoa-1.0.15").unwrap(),
            env: BTreeMap::from([("CARGO_PKG_NAME".into(), "itoa".into())]),
            inputs: vec![
                input("/build/src/target/release/deps/libfoo.rmeta", b"rmeta"),
                input("/build/vendor/itoa-1.0.15/src/lib.rs", b"pub fn f() {}"),
            ],
            outputs: vec![GuestPath::new("/build/src/target/release/deps").unwrap()],
        }
    }

    fn platform() -> Platform {
        Platform {
            latency: 1 << 28,
            scheme: "cmvm-sha256-v1".into(),
            template: "cmvm-sha256-v1:00".into(),
            tool: Sha256::of(b"tool"),
            floor: None,
        }
    }

    #[test]
    fn canonical_json_round_trips_with_sorted_keys() {
        let job = sample();
        let json = job.canonical_json();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.starts_with(r#"{"argv":["rustc","--crate-name","itoa"],"cwd":"/build/vendor/itoa-1.0.15","env":{"CARGO_PKG_NAME":"itoa"},"inputs":[{"exec":false,"path":"#));
        assert!(
            text.ends_with(r#""kind":"job","outputs":["/build/src/target/release/deps"],"v":1}"#)
        );
        assert_eq!(Job::parse(&json).unwrap(), job);
    }

    #[test]
    fn a_job_is_named_by_its_crate_or_says_it_has_none() {
        assert_eq!(sample().crate_name(), "itoa");
        let mut probe = sample();
        probe.argv = vec!["rustc".into(), "-".into(), "--print".into(), "cfg".into()];
        assert_eq!(probe.crate_name(), "(rustc with no --crate-name)");
        assert_eq!(probe.display_name(), "(rustc with no --crate-name)");
        // A build script is named by its package; a crate by itself.
        assert_eq!(sample().display_name(), "itoa");
        let mut script = sample();
        script.argv[2] = "build_script_build".into();
        script.env.insert("CARGO_PKG_NAME".into(), "libc".into());
        assert_eq!(script.display_name(), "libc build script");
        script.env.clear();
        assert_eq!(script.display_name(), "build_script_build");
    }

    #[test]
    fn action_digest_covers_the_job_and_the_platform() {
        let job = sample();
        let base = job.action_digest(&platform());
        assert_eq!(base, sample().action_digest(&platform()));
        let mut other = platform();
        other.template = "cmvm-sha256-v1:01".into();
        assert_ne!(base, job.action_digest(&other));
        let mut tool = platform();
        tool.tool = Sha256::of(b"another tool");
        assert_ne!(base, job.action_digest(&tool));
        let mut changed = sample();
        changed.inputs[1].sha256 = Sha256::of(b"pub fn g() {}");
        assert_ne!(base, changed.action_digest(&platform()));
        let mut env = sample();
        env.env.insert("CARGO_PKG_VERSION".into(), "1.0.15".into());
        assert_ne!(base, env.action_digest(&platform()));
        // A glibc floor's sysroots (what the sibling links against) are part of the
        // platform; without one the platform is what it was before floors, so a run
        // without one keeps its digests (and root hashes).
        let mut floor = platform();
        floor.floor = Some(cmbuild_store::cid::cid_of_bytes(b"sysroots"));
        assert_ne!(base, job.action_digest(&floor));
        let mut other_floor = platform();
        other_floor.floor = Some(cmbuild_store::cid::cid_of_bytes(b"other sysroots"));
        assert_ne!(job.action_digest(&floor), job.action_digest(&other_floor));
        assert_eq!(
            serde_json::to_string(&platform()).unwrap(),
            format!(
                r#"{{"latency":268435456,"scheme":"cmvm-sha256-v1","template":"cmvm-sha256-v1:00","tool":"{}"}}"#,
                Sha256::of(b"tool")
            )
        );
    }

    #[test]
    fn volatile_variables_leave_the_first_action() {
        let job = sample();
        assert_eq!(job.without_volatile_env(), None);
        let mut dated = sample();
        dated
            .env
            .insert("SOURCE_DATE_EPOCH".into(), "1767225600".into());
        let first = dated.without_volatile_env().unwrap();
        assert_eq!(first, job);
        let mut later = sample();
        later
            .env
            .insert("SOURCE_DATE_EPOCH".into(), "1767312000".into());
        assert_eq!(
            later
                .without_volatile_env()
                .unwrap()
                .action_digest(&platform()),
            first.action_digest(&platform())
        );
        assert_ne!(
            later.action_digest(&platform()),
            dated.action_digest(&platform())
        );
        // A proc macro compiled in the x86_64 machine and in the aarch64 one: one first job.
        let in_machine = |triple: &str, flags: &str| {
            let mut job = dated.clone();
            job.env.insert("TARGETS".into(), triple.into());
            job.env.insert("RUSTFLAGS".into(), flags.into());
            job
        };
        let x86 = in_machine("x86_64-unknown-linux-gnu", "-C link-arg=--target=x86_64");
        let arm = in_machine("aarch64-unknown-linux-gnu", "-C link-arg=--target=aarch64");
        assert_ne!(
            x86.action_digest(&platform()),
            arm.action_digest(&platform())
        );
        assert_eq!(x86.without_volatile_env().unwrap(), job);
        assert_eq!(arm.without_volatile_env().unwrap(), job);
    }

    #[test]
    fn paths_must_be_normalised_and_under_build() {
        for bad in [
            "/etc/passwd",
            "build/src",
            "/build/",
            "/build",
            "/build/src/../../etc",
            "/build/./src",
            "/build//src",
            "/build/src/",
            "/build/a\0b",
            "/buildx/src",
        ] {
            assert!(GuestPath::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("/build/{}", "a".repeat(MAX_PATH));
        assert!(GuestPath::new(&long).is_err());
        let dir = GuestPath::new("/build/src/target").unwrap();
        assert!(GuestPath::new("/build/src/target/x")
            .unwrap()
            .is_under(&dir));
        assert!(dir.is_under(&dir));
        assert!(!GuestPath::new("/build/src/targetx").unwrap().is_under(&dir));
    }

    #[test]
    fn hostile_jobs_are_refused_with_reasons() {
        let parse = |job: &Job| Job::parse(&job.canonical_json());
        let mut unsorted = sample();
        unsorted.inputs.reverse();
        assert!(matches!(parse(&unsorted), Err(JobError::Order(_))));
        let mut twice = sample();
        twice.inputs[0] = twice.inputs[1].clone();
        assert!(matches!(parse(&twice), Err(JobError::Order(_))));
        let mut both = sample();
        both.inputs[0].path = GuestPath::new("/build/vendor/itoa-1.0.15/src").unwrap();
        both.inputs.sort_by(|a, b| a.path.cmp(&b.path));
        assert!(matches!(parse(&both), Err(JobError::FileAndDir(_))));
        let mut reserved = sample();
        reserved.inputs[0].path = GuestPath::new("/build/in/plan.env").unwrap();
        reserved.inputs.sort_by(|a, b| a.path.cmp(&b.path));
        assert!(matches!(parse(&reserved), Err(JobError::Reserved(_))));
        let mut path_env = sample();
        path_env.env.insert("PATH".into(), "/tmp".into());
        assert!(matches!(parse(&path_env), Err(JobError::EnvName(_))));
        let mut bad_env = sample();
        bad_env.env.insert("A=B".into(), "x".into());
        assert!(matches!(parse(&bad_env), Err(JobError::EnvName(_))));
        let mut huge = sample();
        huge.inputs[1].size = MAX_INPUT_SIZE + 1;
        assert!(matches!(parse(&huge), Err(JobError::TooLarge { .. })));
        let mut none = sample();
        none.outputs.clear();
        assert_eq!(parse(&none), Err(JobError::NoOutputs));
        let mut empty = sample();
        empty.argv.clear();
        assert_eq!(parse(&empty), Err(JobError::NoProgram));
        let mut nul = sample();
        nul.argv.push("a\0b".into());
        assert_eq!(parse(&nul), Err(JobError::Nul));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let good = sample().canonical_json();
        for cut in 0..good.len() {
            assert!(Job::parse(&good[..cut]).is_err());
        }
        let text = String::from_utf8(good).unwrap();
        let v2 = text.replace(r#""v":1"#, r#""v":2"#);
        assert_eq!(Job::parse(v2.as_bytes()), Err(JobError::Version(2)));
        let extra = text.replace(r#""v":1"#, r#""v":1,"x":0"#);
        assert!(matches!(
            Job::parse(extra.as_bytes()),
            Err(JobError::Format(_))
        ));
        let blob = text.replace(r#""kind":"job""#, r#""kind":"blob""#);
        assert!(matches!(
            Job::parse(blob.as_bytes()),
            Err(JobError::Format(_))
        ));
        let deep = "[".repeat(100_000);
        assert!(Job::parse(deep.as_bytes()).is_err());
    }
}
