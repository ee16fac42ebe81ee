//! A job's libraries narrowed to the crates it can reach (`docs/parallel-builds.md`, "What
//! a job reads").
//!
//! The wrapper lists every library file in the job's `-L dependency=` directories as they
//! are at submission: what rustc may search. Which of them exist then depends on which
//! other crates happened to be done, a matter of timing: the same crate submitted a little
//! later (by the next release, whose earlier crates took longer, or by a scout) would list
//! more files, have another action digest, and miss the cache. rustc only loads the crates
//! named by `--extern` and, through their metadata, the crates those were compiled against.
//! The host knows the latter: it answered the jobs that made each `--extern` file, so it
//! keeps, of the listed libraries, exactly those of the crates the job reaches, in one
//! form chosen by the job's kind (`.rlib` for a job that links, `.rmeta` for one that does
//! not, a proc macro's `.so` always). The job the sibling runs and the action digest are
//! the narrowed ones. A job whose `--extern` file the host did not make (a crate its build
//! machine compiled itself) keeps every listed library, as before.

use std::collections::BTreeSet;
use std::sync::Arc;

use cmbuild_store::sha256::Sha256;

use super::job::{GuestPath, Input, Job};

/// The crates a job reaches, each as the path of its library files without the extension
/// (`/build/src/target/release/deps/libfoo-0123abcd`).
pub type Reach = BTreeSet<String>;

/// Crate types whose compile links its dependencies' code (and so needs their `.rlib`).
const LINKING: &[&str] = &["bin", "proc-macro", "dylib", "cdylib", "staticlib"];

/// A library file's name: its stem (path without the extension) and extension, if `path`
/// is one (`lib*.rlib`, `.rmeta`, `.so`, `.a`).
fn library(path: &str) -> Option<(&str, &str)> {
    let name = path.rsplit('/').next()?;
    if !name.starts_with("lib") {
        return None;
    }
    ["rlib", "rmeta", "so", "a"].into_iter().find_map(|ext| {
        let stem = path.strip_suffix(ext)?.strip_suffix('.')?;
        (stem.len() > path.len() - name.len() + 3).then_some((stem, ext))
    })
}

/// What the command line says: its `-L dependency=` directories, its `--extern` files
/// under the build root, and whether it links.
struct Command {
    dependency_dirs: BTreeSet<GuestPath>,
    externs: Vec<GuestPath>,
    links: bool,
}

impl Command {
    /// `None` when an argument is not understood (a relative `-L` or `--extern` path).
    fn parse(argv: &[String]) -> Option<Command> {
        let mut command = Command {
            dependency_dirs: BTreeSet::new(),
            externs: Vec::new(),
            links: false,
        };
        let mut args = argv.iter().skip(1).map(String::as_str);
        while let Some(arg) = args.next() {
            let (flag, value) = match arg {
                "-L" | "--extern" | "--crate-type" => (arg, args.next()?),
                "--test" => {
                    command.links = true;
                    continue;
                }
                _ => match arg.strip_prefix("-L") {
                    Some(value) => ("-L", value),
                    None => continue,
                },
            };
            match flag {
                "-L" => {
                    if let Some(dir) = value.strip_prefix("dependency=") {
                        command.dependency_dirs.insert(GuestPath::new(dir).ok()?);
                    }
                }
                "--extern" => {
                    // `[modifiers:]name=path`; a bare name is the sysroot's.
                    if let Some((_, path)) = value.split_once('=') {
                        match GuestPath::new(path) {
                            Ok(path) => command.externs.push(path),
                            Err(_) if path.starts_with('/') && !path.starts_with("/build/") => {}
                            Err(_) => return None,
                        }
                    }
                }
                _ => command.links |= value.split(',').any(|t| LINKING.contains(&t)),
            }
        }
        Some(command)
    }

    /// Whether `path` is a library file directly in a `-L dependency=` directory.
    fn searched(&self, path: &str) -> bool {
        library(path).is_some()
            && path
                .rsplit_once('/')
                .is_some_and(|(dir, _)| self.dependency_dirs.iter().any(|d| d.as_str() == dir))
    }
}

/// Whether `path` names a library file (`lib*.rlib`, `.rmeta`, `.so`, `.a`).
pub fn is_library(path: &GuestPath) -> bool {
    library(path.as_str()).is_some()
}

/// `job` with its searched libraries narrowed to the crates it reaches, and that reach
/// (what its outputs' dependents reach through them). `made` gives the reach of the job
/// that made a file, by the file's path and digest; when it knows no maker of an
/// `--extern` file, the job is kept whole and reaches every library it lists.
pub fn narrow(
    job: &Job,
    made: impl Fn(&GuestPath, &Sha256) -> Option<Arc<Reach>>,
) -> (Job, Arc<Reach>) {
    let whole = || {
        let reach = job
            .inputs
            .iter()
            .filter_map(|i| library(i.path.as_str()).map(|(stem, _)| stem.to_owned()))
            .collect();
        (job.clone(), Arc::new(reach))
    };
    let Some(command) = Command::parse(&job.argv) else {
        return whole();
    };
    let mut reach = Reach::new();
    let mut given = BTreeSet::new();
    for path in &command.externs {
        let Ok(at) = job.inputs.binary_search_by(|i| i.path.cmp(path)) else {
            return whole();
        };
        let Some((stem, _)) = library(path.as_str()) else {
            continue;
        };
        let Some(through) = made(path, &job.inputs[at].sha256) else {
            return whole();
        };
        reach.insert(stem.to_owned());
        reach.extend(through.iter().cloned());
        given.insert(path.as_str());
    }
    let searched: Vec<&Input> = job
        .inputs
        .iter()
        .filter(|i| command.searched(i.path.as_str()))
        .collect();
    let present: BTreeSet<&str> = searched.iter().map(|i| i.path.as_str()).collect();
    let keep = |path: &str| -> bool {
        let Some((stem, ext)) = library(path) else {
            return true;
        };
        if !reach.contains(stem) {
            return false;
        }
        if given
            .iter()
            .any(|g| library(g).is_some_and(|(s, _)| s == stem))
        {
            return given.contains(path);
        }
        let (first, second) = match command.links {
            true => ("rlib", "rmeta"),
            false => ("rmeta", "rlib"),
        };
        match ext {
            "so" | "a" => true,
            ext if ext == first => true,
            ext if ext == second => !present.contains(format!("{stem}.{first}").as_str()),
            _ => false,
        }
    };
    let mut narrowed = job.clone();
    narrowed
        .inputs
        .retain(|i| !command.searched(i.path.as_str()) || keep(i.path.as_str()));
    (narrowed, Arc::new(reach))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const DEPS: &str = "/build/src/target/x86_64-unknown-linux-gnu/release/deps";
    const HOST: &str = "/build/src/target/release/deps";

    fn job(argv: &str, files: &[&str]) -> Job {
        let mut inputs: Vec<Input> = files
            .iter()
            .map(|path| Input {
                exec: false,
                path: GuestPath::new(path).unwrap(),
                sha256: Sha256::of(path.as_bytes()),
                size: 1,
            })
            .collect();
        inputs.sort_by(|a, b| a.path.cmp(&b.path));
        Job {
            argv: argv.split(' ').map(str::to_owned).collect(),
            cwd: GuestPath::new("/build/src").unwrap(),
            env: BTreeMap::new(),
            inputs,
            outputs: vec![GuestPath::new(DEPS).unwrap()],
        }
    }

    fn paths(job: &Job) -> Vec<&str> {
        job.inputs.iter().map(|i| i.path.as_str()).collect()
    }

    /// Makers: `libb` was compiled against `libc` and the proc macro `libm`.
    fn made(_: &GuestPath, digest: &Sha256) -> Option<Arc<Reach>> {
        let b = [
            format!("{DEPS}/libb-1.rmeta"),
            format!("{DEPS}/libb-1.rlib"),
        ];
        if b.iter().any(|p| Sha256::of(p.as_bytes()) == *digest) {
            return Some(Arc::new(
                [format!("{DEPS}/libc-2"), format!("{HOST}/libm-3")].into(),
            ));
        }
        let leaves = [format!("{DEPS}/libc-2.rmeta"), format!("{HOST}/libm-3.so")];
        leaves
            .iter()
            .any(|p| Sha256::of(p.as_bytes()) == *digest)
            .then(|| Arc::new(Reach::new()))
    }

    fn listing() -> Vec<String> {
        [
            "/build/src/src/lib.rs".to_owned(),
            format!("{DEPS}/libb-1.rmeta"),
            format!("{DEPS}/libb-1.rlib"),
            format!("{DEPS}/libc-2.rmeta"),
            format!("{DEPS}/libc-2.rlib"),
            format!("{DEPS}/libunrelated-9.rmeta"),
            format!("{DEPS}/libunrelated-9.rlib"),
            format!("{HOST}/libm-3.so"),
            format!("{HOST}/libother-8.so"),
            "/build/src/target/release/build/c-2/out/libnative.a".to_owned(),
        ]
        .into()
    }

    fn argv(kind: &str, extern_file: &str) -> String {
        format!(
            "rustc --crate-name a --crate-type {kind} src/lib.rs -L dependency={DEPS} \
             -L dependency={HOST} --extern b={DEPS}/{extern_file} --extern std \
             --extern noprelude:core=/usr/lib/rustlib/libcore.rlib \
             -L native=/build/src/target/release/build/c-2/out"
        )
    }

    #[test]
    fn a_library_keeps_the_metadata_of_the_crates_it_reaches_and_nothing_else() {
        let files = listing();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        let (narrowed, reach) = narrow(&job(&argv("lib", "libb-1.rmeta"), &files), made);
        assert_eq!(
            paths(&narrowed),
            [
                "/build/src/src/lib.rs",
                "/build/src/target/release/build/c-2/out/libnative.a",
                &format!("{HOST}/libm-3.so"),
                &format!("{DEPS}/libb-1.rmeta"),
                &format!("{DEPS}/libc-2.rmeta"),
            ]
        );
        assert_eq!(
            reach.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                &format!("{HOST}/libm-3"),
                &format!("{DEPS}/libb-1"),
                &format!("{DEPS}/libc-2"),
            ]
        );
        // Whatever else was done by then, the job is the same: its action does not
        // depend on timing.
        let fewer: Vec<&str> = files
            .iter()
            .copied()
            .filter(|p| !p.contains("unrelated") && !p.contains("other") && !p.ends_with("rlib"))
            .collect();
        assert_eq!(
            narrow(&job(&argv("lib", "libb-1.rmeta"), &fewer), made).0,
            narrowed
        );
    }

    #[test]
    fn a_job_that_links_takes_the_rlibs() {
        let files = listing();
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        for kind in ["proc-macro", "bin", "lib,cdylib"] {
            let (narrowed, _) = narrow(&job(&argv(kind, "libb-1.rlib"), &files), made);
            assert_eq!(
                paths(&narrowed)[3..],
                [format!("{DEPS}/libb-1.rlib"), format!("{DEPS}/libc-2.rlib")],
                "{kind}"
            );
        }
    }

    #[test]
    fn a_job_whose_extern_the_host_did_not_make_is_kept_whole() {
        let mut files = listing();
        files.push(format!("{DEPS}/liblocal-5.rlib"));
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        let whole = job(&argv("lib", "liblocal-5.rlib"), &files);
        let (narrowed, reach) = narrow(&whole, made);
        assert_eq!(narrowed, whole);
        assert!(reach.contains(&format!("{DEPS}/libunrelated-9")));
        // An extern the listing does not hold, or a relative path: kept whole too.
        let missing = job(&argv("lib", "libnone-7.rmeta"), &files);
        assert_eq!(narrow(&missing, made).0, missing);
        let relative = job(
            "rustc --crate-type lib -L dependency=target/deps --extern b=x",
            &files,
        );
        assert_eq!(narrow(&relative, made).0, relative);
    }

    #[test]
    fn library_names_are_read_strictly() {
        assert_eq!(
            library("/build/d/libfoo-1.rmeta"),
            Some(("/build/d/libfoo-1", "rmeta"))
        );
        assert_eq!(
            library("/build/d/libfoo.so"),
            Some(("/build/d/libfoo", "so"))
        );
        for not in [
            "/build/d/lib.rlib",
            "/build/d/foo.rlib",
            "/build/d/libfoo.d",
            "/build/d/libfoo",
        ] {
            assert_eq!(library(not), None, "{not}");
        }
    }
}
