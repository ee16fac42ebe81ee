//! Offloaded builds (issue 13, docs/parallel-builds.md) end to end: the guest's rustc jobs
//! for libraries run in sibling machines resumed from the template, and come back to the
//! build machine at cycles fixed by their own instruction counts.
//!
//! `#[ignore]`d (heavy: each build runs billions of guest instructions; the first run on a
//! mirror also derives the channel board's template and compiles cmbuild-offload in the
//! guest, about 5e10 instructions, kept in the mirror); `.ci/run` runs it with the other
//! heavy tests when time allows.
//!
//! What it proves, on `examples/hello` (four crates.io dependencies):
//! - the root hash, mcycle and artifacts are the same with `--jobs 1`, `2` and `4`, with
//!   the jobs computed in siblings (cold) or taken from the mirror's cache (warm);
//! - a cache entry whose result blob was tampered with is refused, the job runs again, and
//!   the root hash is unchanged;
//! - the artifact equals the one a `--no-offload` build makes;
//! - `machine.json` records every job (action, sibling root hash, cycles) and the offload
//!   setup;
//! - a job that fails (a compile error in the package's library) fails the build with the
//!   same first error every time, cold and from the cache.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cmbuild::manifest::{read_machine_record, read_manifest, MachineRecord};
use common::{cache_dir, commit_tagged, copy_tree, git, repo_root, s};

const X86: &str = "x86_64-unknown-linux-gnu";

/// Runs cmbuild; returns its exit status and stderr (also shown).
fn cmbuild(args: &[&str]) -> (bool, String) {
    let (ok, said, _) = cmbuild_pid(args);
    (ok, said)
}

/// [`cmbuild`], and the process's id.
fn cmbuild_pid(args: &[&str]) -> (bool, String, u32) {
    cmbuild_env(args, &[])
}

/// [`cmbuild_pid`] with variables added to its environment.
fn cmbuild_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, u32) {
    eprintln!("$ cmbuild {}", args.join(" "));
    let child = Command::new(env!("CARGO_BIN_EXE_cmbuild"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for line in stderr.lines().filter(|l| !l.contains(" MIPS, ")) {
        eprintln!("  {line}");
    }
    (out.status.success(), stderr, pid)
}

fn shared_mirror() -> PathBuf {
    cache_dir().join("image-test-mirror")
}

/// A mirror holding the shared test mirror's blobs, templates and cmbuild-offload records
/// (hard links: blobs are never rewritten in place), but none of its cached jobs.
fn cold_mirror(dir: &Path) -> PathBuf {
    let from = shared_mirror();
    let to = dir.join("mirror");
    for sub in ["blobs", "templates", "offload"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        let Ok(entries) = std::fs::read_dir(from.join(sub)) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name();
            let keep = sub != "offload" || name.to_string_lossy().starts_with("tool-");
            if keep {
                std::fs::hard_link(from.join(sub).join(&name), to.join(sub).join(&name)).unwrap();
            }
        }
    }
    std::fs::copy(from.join("index.json"), to.join("index.json")).unwrap();
    to
}

/// examples/hello in a fresh repository tagged v0.1.0, vendored into the shared mirror.
fn hello(dir: &Path) -> Option<PathBuf> {
    let project = dir.join("hello");
    copy_tree(&repo_root().join("examples/hello"), &project);
    commit_tagged(&project, "v0.1.0");
    let (vendored, said) = cmbuild(&[
        "vendor",
        "--manifest-path",
        s(&project.join("Cargo.toml")),
        "--mirror",
        s(&shared_mirror()),
    ]);
    if !vendored {
        eprintln!("SKIP: cannot vendor examples/hello: {said}");
        return None;
    }
    Some(project)
}

struct Build {
    record: MachineRecord,
    artifact: String,
    said: String,
}

fn build(project: &Path, mirror: &Path, out: &Path, extra: &[&str]) -> Build {
    build_pid(project, mirror, out, extra).0
}

/// [`build`], and the id of the cmbuild process.
fn build_pid(project: &Path, mirror: &Path, out: &Path, extra: &[&str]) -> (Build, u32) {
    build_env(project, mirror, out, extra, &[])
}

/// [`build_pid`] with variables added to cmbuild's environment.
fn build_env(
    project: &Path,
    mirror: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Build, u32) {
    let mut args = common::run_release("v0.1.0", project, mirror, out);
    args.extend(["--target", X86]);
    args.extend_from_slice(extra);
    let (ok, said, pid) = cmbuild_env(&args, env);
    assert!(ok, "cmbuild run {extra:?} failed");
    let dir = out.join("v0.1.0");
    let manifest = read_manifest(&dir.join("manifest.json")).unwrap();
    let build = Build {
        record: read_machine_record(&dir.join("machine.json")).unwrap(),
        artifact: manifest.artifacts[0].sha256.to_string(),
        said,
    };
    (build, pid)
}

fn summary(said: &str) -> &str {
    said.lines()
        .find(|l| l.contains("offload: ") && l.contains("job(s) run in sibling machines"))
        .unwrap_or_else(|| panic!("no offload summary in:\n{said}"))
}

#[test]
#[ignore = "heavy: offloaded release builds of examples/hello (run by .ci/run when time allows)"]
fn offloaded_builds_are_the_same_with_any_jobs_cold_or_cached() {
    let dir = tempfile::tempdir().unwrap();
    let Some(project) = hello(dir.path()) else {
        return;
    };
    // Once per mirror: the channel board's template and cmbuild-offload (then cached).
    build(
        &project,
        &shared_mirror(),
        &dir.path().join("prime"),
        &["--offload"],
    );

    let mirror = cold_mirror(dir.path());
    let (cold, pid) = build_pid(
        &project,
        &mirror,
        &dir.path().join("cold1"),
        &["--offload", "--jobs", "1", "--perf-map"],
    );
    let machine = &cold.record.machines[0];
    // --perf-map names the code of every machine: the build machine's and each sibling's
    // (each names its trampoline once, when it first translates).
    let map_path = format!("/tmp/perf-{pid}.map");
    let map = std::fs::read_to_string(&map_path).unwrap();
    std::fs::remove_file(&map_path).unwrap();
    let machines = map.lines().filter(|l| l.ends_with(" rv:entry")).count();
    assert!(
        machines > machine.jobs.len(),
        "{machines} machines named their code, for {} jobs",
        machine.jobs.len()
    );
    assert!(
        summary(&cold.said).contains(" 0 from the cache"),
        "{}",
        summary(&cold.said)
    );
    assert!(
        machine.jobs.len() >= 5,
        "every dependency is a job, and so is the binary: {:?}",
        machine.jobs
    );
    assert!(
        cold.said.contains("cmbuild run: offload: hello: "),
        "the project's binary was compiled in a sibling:\n{}",
        cold.said
    );
    const L: u64 = 1 << 28;
    for job in &machine.jobs {
        assert!(job.cycles > 0);
        assert!(job.sibling_root_hash.starts_with("cmvm-sha256-v1:"));
        // A library's job is pipelined: its rmeta at T + L + C_meta, its result at
        // max(T + L + C, T2 + L) for the rest request the wrapper made at T2.
        match &job.pipelined {
            None => assert_eq!(job.visible_at, job.submitted_at + L + job.cycles),
            Some(p) => {
                assert!(p.meta_cycles > 0 && p.meta_cycles < job.cycles, "{job:?}");
                assert_eq!(p.meta_visible_at, job.submitted_at + L + p.meta_cycles);
                assert!(p.rest_submitted_at > p.meta_visible_at, "{job:?}");
                let result_at = (job.submitted_at + L + job.cycles).max(p.rest_submitted_at + L);
                assert_eq!(job.visible_at, result_at, "{job:?}");
            }
        }
    }
    assert!(
        machine.jobs.iter().any(|j| j.pipelined.is_some()),
        "the libraries' dependents start on their rmeta: {:?}",
        machine.jobs
    );
    let offload = cold
        .record
        .offload
        .as_ref()
        .expect("machine.json records the offload");
    assert_ne!(
        offload.parent_template.hash,
        cold.record.template.as_ref().unwrap().hash
    );
    // Both templates are pinned (default settings, default toolchain): a parent template
    // that differs from its pin fails the run instead of being recorded.
    let pins = cmbuild::pins::parse(cmbuild::pins::BUILTIN).unwrap();
    assert_eq!(
        pins.get(cmbuild::template::PARENT_TEMPLATE_PIN),
        Some(&offload.parent_template.hash)
    );
    assert_eq!(
        pins.get(cmbuild::template::TEMPLATE_PIN),
        Some(&cold.record.template.as_ref().unwrap().hash)
    );

    let same = |other: &Build, what: &str| {
        assert_eq!(
            other.record.machines, cold.record.machines,
            "{what}: machines differ"
        );
        assert_eq!(other.artifact, cold.artifact, "{what}: artifacts differ");
    };
    let warm = build(
        &project,
        &mirror,
        &dir.path().join("warm2"),
        &["--offload", "--jobs", "2"],
    );
    assert!(
        summary(&warm.said).starts_with("cmbuild run: offload: 0 job(s) run"),
        "{}",
        summary(&warm.said)
    );
    same(&warm, "--jobs 2 from the cache");

    // Anyone can check an offloaded build: verify rebuilds it offloaded (as machine.json
    // says), its jobs from this mirror's cache, and reaches the same root hash.
    let published = dir.path().join("cold1/v0.1.0");
    let verify = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "verify",
            s(&published),
            "--project",
            s(&project),
            "--mirror",
            s(&mirror),
            "--out",
            s(&out),
        ];
        args.extend(extra);
        cmbuild(&args)
    };
    let (ok, said) = verify("verify", &[]);
    assert!(
        ok,
        "verify of an offloaded build failed (exit 1 is FAILED):\n{said}"
    );
    assert!(
        said.contains("job(s) run in sibling machines"),
        "the rebuild was offloaded:\n{said}"
    );
    assert!(!said.contains(", 0 from the cache"), "{said}");
    // A verifier who will not take job results from the mirror computes every job again,
    // and reaches the same root hash.
    let (ok, said) = verify("verify-recomputed", &["--recompute-jobs"]);
    assert!(ok, "verify --recompute-jobs failed:\n{said}");
    assert!(
        said.contains("job(s) run in sibling machines, 0 from the cache"),
        "every job was computed again:\n{said}"
    );

    // A tampered result blob: its entry is refused, the job recomputed, nothing changes.
    let entries: Vec<PathBuf> = std::fs::read_dir(mirror.join("offload"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tool-")
        })
        .collect();
    assert_eq!(entries.len(), machine.jobs.len());
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entries[0]).unwrap()).unwrap();
    let blob = mirror.join("blobs").join(entry["result"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::remove_file(&blob).unwrap(); // a hard link: do not write through to the shared mirror
    std::fs::write(&blob, &bytes).unwrap();
    let tampered = build(
        &project,
        &mirror,
        &dir.path().join("tampered4"),
        &["--offload", "--jobs", "4"],
    );
    assert!(
        tampered.said.contains("a cache entry was refused"),
        "the tampering went unnoticed"
    );
    assert!(
        summary(&tampered.said).starts_with("cmbuild run: offload: 1 job(s) run"),
        "{}",
        summary(&tampered.said)
    );
    same(&tampered, "--jobs 4 with a tampered entry");

    // Cold again, four siblings at a time, with a scout (the default above one job)
    // finding the jobs ahead of the build machine and the host running them by rank: the
    // jobs it starts are the build machine's (narrowed to the crates they reach, whatever
    // else was done by then), so nothing the machine sees changes.
    for entry in &entries {
        std::fs::remove_file(entry).unwrap();
    }
    let cold4 = build(
        &project,
        &mirror,
        &dir.path().join("cold4"),
        &["--offload", "--jobs", "4"],
    );
    assert!(
        cold4.said.contains("scout stopped"),
        "no scout ran:\n{}",
        cold4.said
    );
    assert!(
        summary(&cold4.said).contains(" 0 from the cache"),
        "{}",
        summary(&cold4.said)
    );
    same(&cold4, "--jobs 4 cold");

    // A host without the memory for more machines (its reserve set beyond any host's): no
    // scout, and one sibling at a time however many --jobs; the same build.
    let (short, _) = build_env(
        &project,
        &mirror,
        &dir.path().join("short"),
        &["--jobs", "4", "--recompute-jobs"],
        &[("CMBUILD_MACHINE_RESERVE_MIB", "1000000000")],
    );
    assert!(
        short.said.contains("no scout: the host has "),
        "{}",
        short.said
    );
    assert!(
        summary(&short.said).contains("waited for the host's memory"),
        "{}",
        summary(&short.said)
    );
    same(&short, "--jobs 4 with no memory to spare");

    let alone = build(
        &project,
        &mirror,
        &dir.path().join("alone"),
        &["--no-offload"],
    );
    assert_eq!(
        alone.artifact, cold.artifact,
        "offloaded and not: the same artifact"
    );
    assert!(alone.record.offload.is_none() && alone.record.machines[0].jobs.is_empty());
    assert_ne!(alone.record.machines[0].root_hash, machine.root_hash);
}

#[test]
#[ignore = "heavy: offloaded release builds that fail (run by .ci/run when time allows)"]
fn a_failing_job_fails_the_build_the_same_way_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let Some(project) = hello(dir.path()) else {
        return;
    };
    // The package gains a library that does not compile: an offloaded job that fails.
    std::fs::write(
        project.join("src/lib.rs"),
        "pub fn broken() -> u32 { \"not a number\" }\n",
    )
    .unwrap();
    git(&project, &["add", "-A"]);
    git(
        &project,
        &["-c", "commit.gpgsign=false", "commit", "-q", "-m", "broken"],
    );
    git(&project, &["tag", "-f", "v0.1.0"]);
    let mirror = cold_mirror(dir.path());
    let mut errors = Vec::new();
    for (i, jobs) in ["1", "2"].iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let mut args = common::run_release("v0.1.0", &project, &mirror, &out);
        args.extend([
            "--target",
            X86,
            "--offload",
            "--jobs",
            jobs,
            // The summaries are compared: a scout could start jobs the build machine
            // never reached before it failed (its determinism is the test above's).
            "--no-scout",
        ]);
        let (ok, said) = cmbuild(&args);
        assert!(!ok, "a build with a broken library succeeded");
        assert!(said.contains("error[E0308]: mismatched types"), "{said}");
        // The same failure, whether the job ran in a sibling or came from the cache.
        let failure: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("failed (cargo exit status"))
            .collect();
        let siblings = summary(&said).rsplit(", ").next().unwrap();
        let first = format!("{failure:?} {siblings}");
        match i {
            0 => assert!(summary(&said).contains(" 0 from the cache"), "{said}"),
            _ => assert!(
                summary(&said).starts_with("cmbuild run: offload: 0 job(s) run"),
                "{said}"
            ),
        }
        errors.push(first);
    }
    assert_eq!(errors[0], errors[1]);
    assert!(errors[0].contains("error[E0308]"), "{}", errors[0]);
}

#[test]
#[ignore = "heavy: boots the guest image six times (run by .ci/run when time allows)"]
fn both_templates_are_pinned_and_image_template_derives_them_again() {
    use cmbuild::template::{PARENT_TEMPLATE_PIN, TEMPLATE_PIN};
    let dir = tempfile::tempdir().unwrap();
    if hello(dir.path()).is_none() {
        return;
    }
    let mirror = cold_mirror(dir.path());
    let digests = dir.path().join("digests.lock.env");
    let template = |check: bool| {
        let mut args = vec![
            "image",
            "template",
            "--mirror",
            s(&mirror),
            "--digests",
            s(&digests),
        ];
        if check {
            args.push("--check");
        }
        cmbuild(&args)
    };
    std::fs::write(&digests, cmbuild::pins::BUILTIN).unwrap();
    let (ok, said) = template(true);
    assert!(ok, "the shipped pins reproduce:\n{said}");
    for pin in [TEMPLATE_PIN, PARENT_TEMPLATE_PIN] {
        assert!(
            said.contains(&format!(
                "image template --check: the pinned {pin} reproduces"
            )),
            "{pin}:\n{said}"
        );
    }
    // Without the parent's pin: --check names it missing; without --check it is written,
    // and the pins are the shipped ones again.
    let without: String = cmbuild::pins::BUILTIN
        .lines()
        .filter(|l| !l.starts_with(PARENT_TEMPLATE_PIN))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&digests, &without).unwrap();
    let (ok, said) = template(true);
    assert!(
        !ok && said.contains("MISSING template: ") && said.contains(PARENT_TEMPLATE_PIN),
        "{said}"
    );
    let (ok, said) = template(false);
    assert!(ok, "{said}");
    assert_eq!(
        cmbuild::pins::parse(&std::fs::read_to_string(&digests).unwrap()).unwrap(),
        cmbuild::pins::parse(cmbuild::pins::BUILTIN).unwrap()
    );
}
