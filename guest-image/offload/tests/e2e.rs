//! End-to-end tests of `cmbuild-offload` on the host: the multiplexer and the wrapper run
//! as real processes; a thread of the test plays the host on the port (a Unix socket the
//! multiplexer connects to), speaking the frame protocol and the job format.

// The program's own modules, for the fake host's side of the format. (Their unit tests run
// here a second time.)
#[path = "../src/json.rs"]
mod json;
#[path = "../src/paths.rs"]
mod paths;
#[path = "../src/proto.rs"]
#[allow(dead_code)]
mod proto;
#[path = "../src/sha256.rs"]
mod sha256;
#[path = "../src/wire.rs"]
#[allow(dead_code)]
mod wire;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use wire::{FileEntry, Job, ResultHead};

const BIN: &str = env!("CARGO_BIN_EXE_cmbuild-offload");

/// Writing an executable and spawning a process must not overlap: a child forked while
/// the script is open for writing would keep it busy (ETXTBSY) for the exec.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

fn spawn(cmd: &mut Command) -> Child {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn().expect("spawn")
}

fn run(cmd: &mut Command) -> Output {
    spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .wait_with_output()
        .expect("wait")
}

fn write_script(path: &Path, text: &str) {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cmbuild-offload-e2e-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.0.display())
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        fs::create_dir_all(Path::new(&p).parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the fake host saw.
#[derive(Default)]
struct HostLog {
    jobs: Vec<Job>,
    blob_requests: usize,
    blob_bytes: usize,
    /// Tags seen, in order (to check they are fresh while in flight).
    tags: Vec<u64>,
}

/// How the fake host answers a job whose inputs it has.
type Answer = Box<dyn FnMut(&Job) -> Vec<u8> + Send>;

/// The host's side: its blob store (which also holds every output it produced, as a real
/// host's content store does) and the log.
struct FakeHost {
    store: BTreeMap<[u8; 32], Vec<u8>>,
    uploads: BTreeMap<[u8; 32], Vec<u8>>,
    log: Arc<Mutex<HostLog>>,
    answer: Answer,
}

impl FakeHost {
    fn respond(&mut self, body: &[u8]) -> Vec<u8> {
        let (value, payload) = wire::split_body(body, wire::MAX_LINE).expect("a JSON line");
        match value.as_object().unwrap()["kind"].as_str().unwrap() {
            "job" => {
                let job = Job::parse(body).expect("a valid job");
                self.log.lock().unwrap().jobs.push(job.clone());
                let mut missing: Vec<[u8; 32]> = job
                    .inputs
                    .iter()
                    .map(|i| i.sha256)
                    .filter(|s| !self.store.contains_key(s))
                    .collect();
                missing.sort();
                missing.dedup();
                if !missing.is_empty() {
                    let list = missing
                        .iter()
                        .map(|s| json::Value::str(sha256::hex(s)))
                        .collect();
                    return json::Value::object([
                        ("kind", json::Value::str("missing")),
                        ("sha256", json::Value::Array(list)),
                    ])
                    .to_line();
                }
                let result = (self.answer)(&job);
                // Keep the outputs, as a real host does.
                if let Ok(wire::Response::Result { head, payload }) = wire::parse_response(&result)
                {
                    let mut rest = &payload[(head.stdout + head.stderr) as usize..];
                    for f in &head.files {
                        let (data, tail) = rest.split_at(f.size as usize);
                        self.store.insert(f.sha256, data.to_vec());
                        rest = tail;
                    }
                }
                result
            }
            "blob" => {
                let [_, offset, sha, size, v] = value
                    .exact(["kind", "offset", "sha256", "size", "v"])
                    .unwrap();
                assert_eq!(v.as_u64(), Some(1));
                assert!(payload.len() <= wire::MAX_CHUNK, "chunk too large");
                let sha = sha256::parse_hex(sha.as_str().unwrap()).unwrap();
                let (offset, size) = (offset.as_u64().unwrap(), size.as_u64().unwrap());
                let mut log = self.log.lock().unwrap();
                log.blob_requests += 1;
                log.blob_bytes += payload.len();
                let upload = self.uploads.entry(sha).or_default();
                assert_eq!(upload.len() as u64, offset, "chunks in order from 0");
                upload.extend_from_slice(payload);
                assert!(upload.len() as u64 <= size);
                if upload.len() as u64 == size {
                    let data = self.uploads.remove(&sha).unwrap();
                    assert_eq!(sha256::digest(&data), sha, "blob bytes match the digest");
                    self.store.insert(sha, data);
                }
                b"{\"kind\":\"ok\"}\n".to_vec()
            }
            other => panic!("unexpected request kind {other}"),
        }
    }
}

/// Listens on `port`; serves the multiplexer's connection until it closes (or, with
/// `close_after`, drops it after that many requests).
fn start_host(
    port: &str,
    answer: Answer,
    close_after: Option<usize>,
) -> (Arc<Mutex<HostLog>>, thread::JoinHandle<()>) {
    let listener = UnixListener::bind(port).unwrap();
    let log = Arc::new(Mutex::new(HostLog::default()));
    let mut host = FakeHost {
        store: BTreeMap::new(),
        uploads: BTreeMap::new(),
        log: Arc::clone(&log),
        answer,
    };
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut served = 0;
        while let Some((tag, body)) = proto::read_frame(&mut conn, proto::MAX_REQUEST).unwrap() {
            assert!(body.len() <= proto::MAX_REQUEST);
            host.log.lock().unwrap().tags.push(tag);
            let response = host.respond(&body);
            proto::write_frame(&mut conn, tag, &response).unwrap();
            served += 1;
            if Some(served) == close_after {
                return;
            }
        }
    });
    (log, handle)
}

/// Starts the multiplexer and waits for its socket.
fn start_mux(port: &str, socket: &str) -> Child {
    let child = spawn(Command::new(BIN).args(["mux", port, socket]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(socket).exists() {
        assert!(Instant::now() < deadline, "the multiplexer did not start");
        thread::sleep(Duration::from_millis(10));
    }
    child
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn result_body(head: &ResultHead, stdout: &[u8], stderr: &[u8], files: &[&[u8]]) -> Vec<u8> {
    let mut body = head.to_line();
    body.extend_from_slice(stdout);
    body.extend_from_slice(stderr);
    for f in files {
        body.extend_from_slice(f);
    }
    body
}

fn entry(path: String, data: &[u8], exec: bool) -> FileEntry {
    FileEntry {
        path,
        sha256: sha256::digest(data),
        size: data.len() as u64,
        exec,
    }
}

/// The project: a vendored crate `foo` depending on `bar`, with a build script's output.
struct Project {
    dir: TempDir,
    root: String,
    rustc: String,
    marker: String,
}

impl Project {
    fn new(name: &str) -> Project {
        let dir = TempDir::new(name);
        let root = dir.path("build");
        dir.write(
            "build/vendor/foo-1.0.0/Cargo.toml",
            b"[package]\nname = \"foo\"\n",
        );
        dir.write("build/vendor/foo-1.0.0/src/lib.rs", b"pub fn foo() {}\n");
        // 1.25 MiB: three chunks.
        let big: Vec<u8> = (0..(5 << 18) as u32).map(|i| (i * 7 + 3) as u8).collect();
        dir.write("build/vendor/foo-1.0.0/src/big.bin", &big);
        dir.write("build/src/target/release/deps/libbar-1.rlib", b"bar rlib");
        dir.write("build/src/target/release/deps/libbar-1.rmeta", b"bar rmeta");
        dir.write("build/src/target/release/deps/bar-1.d", b"bar dep-info");
        dir.write(
            "build/src/target/release/build/foo-1/out/gen.rs",
            b"// generated\n",
        );
        dir.write("build/src/src/main.rs", b"fn main() {}\n");
        let rustc = dir.path("fake-rustc");
        let marker = dir.path("local-ran");
        write_script(
            Path::new(&rustc),
            &format!(
                "#!/bin/sh\necho \"$@\" > '{marker}'\necho local-stdout\necho local-stderr >&2\nexit 42\n"
            ),
        );
        Project {
            dir,
            root,
            rustc,
            marker,
        }
    }

    fn deps(&self) -> String {
        format!("{}/src/target/release/deps", self.root)
    }

    fn args(&self, crate_name: &str) -> Vec<String> {
        let root = &self.root;
        let deps = self.deps();
        let mut a: Vec<String> = format!(
            "--crate-name {crate_name} --edition=2021 {root}/vendor/foo-1.0.0/src/lib.rs \
             --error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat \
             --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 \
             -C embed-bitcode=no --cfg"
        )
        .split_whitespace()
        .map(str::to_string)
        .collect();
        a.push("feature=\"std\"".into());
        a.extend(
            format!(
                "-C metadata=1 -C extra-filename=-1 --out-dir {deps} -L dependency={deps} \
                 --extern bar={deps}/libbar-1.rlib --cap-lints allow"
            )
            .split_whitespace()
            .map(str::to_string),
        );
        a
    }

    /// Runs the wrapper as cargo would, in the crate's directory.
    fn wrapper(&self, socket: &str, args: &[String]) -> Output {
        run(Command::new(BIN)
            .arg("rustc-wrapper")
            .arg(&self.rustc)
            .args(args)
            .current_dir(format!("{}/vendor/foo-1.0.0", self.root))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .env("TERM", "xterm")
            .env("MAKEFLAGS", "-j2")
            .env("CARGO_MAKEFLAGS", "-j --jobserver-fds=3,4")
            .env("CMBUILD_OFFLOAD_SOCKET", socket)
            .env("CMBUILD_OFFLOAD_ROOT", &self.root)
            .env(
                "CARGO_MANIFEST_DIR",
                format!("{}/vendor/foo-1.0.0", self.root),
            )
            .env("CARGO_PKG_NAME", "foo")
            .env(
                "OUT_DIR",
                format!("{}/src/target/release/build/foo-1/out", self.root),
            )
            .env("SOURCE_DATE_EPOCH", "1700000000"))
    }

    fn local_ran(&self) -> bool {
        Path::new(&self.marker).exists()
    }
}

/// The result the fake host computes for a job: three files in its first output.
fn foo_result(job: &Job) -> Vec<u8> {
    let out = &job.outputs[0];
    let rlib = format!("rlib of {} inputs", job.inputs.len()).into_bytes();
    let dep_info = b"foo-1.d: src/lib.rs\n".to_vec();
    let tool = b"#!/bin/sh\n".to_vec();
    let mut files = vec![
        entry(format!("{out}/foo-1.d"), &dep_info, false),
        entry(format!("{out}/libfoo-1.rlib"), &rlib, false),
        entry(format!("{out}/sub/tool"), &tool, true),
    ];
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let head = ResultHead {
        exit: 0,
        files,
        stdout: 9,
        stderr: 11,
    };
    result_body(
        &head,
        b"compiled\n",
        b"warning: x\n",
        &[&dep_info, &rlib, &tool],
    )
}

#[test]
fn a_job_is_offloaded_blobs_go_once_and_the_result_is_applied() {
    let p = Project::new("offload");
    let port = p.dir.path("port.sock");
    let socket = p.dir.path("mux.sock");
    let (log, host) = start_host(&port, Box::new(foo_result), None);
    let mut mux = start_mux(&port, &socket);

    let out = p.wrapper(&socket, &p.args("foo"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "warning: x\n",
        "the result's stderr, nothing else"
    );
    assert_eq!(out.stdout, b"compiled\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(!p.local_ran(), "rustc ran here");
    let deps = p.deps();
    assert_eq!(
        fs::read_to_string(format!("{deps}/libfoo-1.rlib")).unwrap(),
        "rlib of 6 inputs"
    );
    assert_eq!(
        fs::read(format!("{deps}/foo-1.d")).unwrap(),
        b"foo-1.d: src/lib.rs\n"
    );
    let mode = |p: &str| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&format!("{deps}/sub/tool")), 0o755);
    assert_eq!(mode(&format!("{deps}/libfoo-1.rlib")), 0o644);
    let mut names: Vec<String> = fs::read_dir(&deps)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bar-1.d",
            "foo-1.d",
            "libbar-1.rlib",
            "libbar-1.rmeta",
            "libfoo-1.rlib",
            "sub"
        ],
        "no temporary files left"
    );
    {
        let log = log.lock().unwrap();
        assert_eq!(log.jobs.len(), 2, "submitted, then again after the blobs");
        assert_eq!(log.jobs[0], log.jobs[1]);
        let job = &log.jobs[0];
        assert_eq!(job.argv[0], p.rustc);
        assert_eq!(job.argv[1..], p.args("foo")[..]);
        assert_eq!(job.cwd, format!("{}/vendor/foo-1.0.0", p.root));
        assert_eq!(job.outputs, std::slice::from_ref(&deps));
        assert_eq!(
            job.env.keys().collect::<Vec<_>>(),
            [
                "CARGO_MANIFEST_DIR",
                "CARGO_PKG_NAME",
                "OUT_DIR",
                "SOURCE_DATE_EPOCH"
            ],
            "PATH, HOME, TERM, MAKEFLAGS, CARGO_MAKEFLAGS and CMBUILD_OFFLOAD_* are dropped"
        );
        let inputs: Vec<&str> = job.inputs.iter().map(|i| &i.path[p.root.len()..]).collect();
        assert_eq!(
            inputs,
            [
                "/src/target/release/build/foo-1/out/gen.rs",
                "/src/target/release/deps/libbar-1.rlib",
                "/src/target/release/deps/libbar-1.rmeta",
                "/vendor/foo-1.0.0/Cargo.toml",
                "/vendor/foo-1.0.0/src/big.bin",
                "/vendor/foo-1.0.0/src/lib.rs",
            ],
            "sorted; bar-1.d is not a library and src/ is another package"
        );
        let big = &job.inputs[4];
        assert_eq!(big.size, 5 << 18);
        assert_eq!(
            big.sha256,
            sha256::digest(&fs::read(&big.path).unwrap()),
            "the multiplexer's digest"
        );
        assert_eq!(
            log.blob_requests,
            5 + 3,
            "one chunk each, three for big.bin"
        );
        assert_eq!(log.blob_bytes, (5 << 18) + 9 + 8 + 13 + 23 + 16);
    }

    // The same job again: the host has every input (the new outputs in deps/ too, as it
    // produced them), so no blob goes out; the new files' digests come from the
    // multiplexer's cache, registered when they were written.
    let out = p.wrapper(&socket, &p.args("foo"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"compiled\n");
    {
        let log = log.lock().unwrap();
        assert_eq!(log.jobs.len(), 3, "one more submission");
        assert_eq!(log.blob_requests, 8, "no blob the second time");
        let inputs: Vec<&str> = log.jobs[2]
            .inputs
            .iter()
            .map(|i| &i.path[deps.len().min(i.path.len())..])
            .collect();
        assert!(inputs.contains(&"/libfoo-1.rlib"), "{inputs:?}");
    }
    assert_eq!(
        fs::read_to_string(format!("{deps}/libfoo-1.rlib")).unwrap(),
        "rlib of 7 inputs"
    );
    assert!(!p.local_ran());

    let quit = run(Command::new(BIN).args(["quit", &socket]));
    assert!(quit.status.success(), "{quit:?}");
    assert_eq!(
        wait_exit(&mut mux, Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );
    assert!(!Path::new(&socket).exists(), "the socket is removed");
    host.join().unwrap();
}

#[test]
fn refused_or_hostile_results_and_unoffloadable_jobs_run_rustc_here() {
    let p = Project::new("fallback");
    let port = p.dir.path("port.sock");
    let socket = p.dir.path("mux.sock");
    let deps = p.deps();
    let answer = move |job: &Job| -> Vec<u8> {
        let name = job.argv[job.argv.iter().position(|a| a == "--crate-name").unwrap() + 1].clone();
        let out = &job.outputs[0];
        match name.as_str() {
            "refused" => b"{\"kind\":\"error\",\"message\":\"no\\u0007thanks\"}\n".to_vec(),
            "escape" => {
                // A file outside the job's outputs.
                let evil = format!("{out}/../../evil");
                let head = ResultHead {
                    exit: 0,
                    files: vec![entry(paths::normalize("/", &evil).unwrap(), b"x", false)],
                    stdout: 0,
                    stderr: 0,
                };
                result_body(&head, b"", b"", &[b"x"])
            }
            "forged" => {
                // Two files, the second's bytes do not match its digest.
                let head = ResultHead {
                    exit: 0,
                    files: vec![
                        entry(format!("{out}/a"), b"a", false),
                        entry(format!("{out}/b"), b"b", false),
                    ],
                    stdout: 0,
                    stderr: 0,
                };
                result_body(&head, b"", b"", &[b"a", b"c"])
            }
            "garbage" => b"{\"kind\": \"result\"}\n".to_vec(),
            "ok" => b"{\"kind\":\"ok\"}\n".to_vec(),
            // A digest that is none of the job's inputs.
            "bogus-missing" => format!(
                "{{\"kind\":\"missing\",\"sha256\":[\"{}\"]}}\n",
                "0".repeat(64)
            )
            .into_bytes(),
            "fails" => {
                let head = ResultHead {
                    exit: 101,
                    files: vec![],
                    stdout: 0,
                    stderr: 6,
                };
                result_body(&head, b"", b"error\n", &[])
            }
            other => panic!("unexpected job {other}"),
        }
    };
    let (log, host) = start_host(&port, Box::new(answer), None);
    let mut mux = start_mux(&port, &socket);

    // A failing rustc on the host is an ordinary result.
    let out = p.wrapper(&socket, &p.args("fails"));
    assert_eq!(out.status.code(), Some(101));
    assert_eq!(out.stderr, b"error\n");
    assert!(!p.local_ran());

    for name in [
        "refused",
        "escape",
        "forged",
        "garbage",
        "ok",
        "bogus-missing",
    ] {
        let out = p.wrapper(&socket, &p.args(name));
        assert_eq!(
            out.status.code(),
            Some(42),
            "{name}: the local rustc's status"
        );
        assert_eq!(out.stdout, b"local-stdout\n", "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("cmbuild-offload: ")
                && stderr.ends_with("; running rustc here\nlocal-stderr\n"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains('\u{7}'), "the host's text is sanitised");
        let ran = fs::read_to_string(&p.marker).unwrap();
        assert_eq!(
            ran.trim_end(),
            p.args(name).join(" "),
            "{name}: the same arguments"
        );
        fs::remove_file(&p.marker).unwrap();
    }
    assert!(!Path::new(&format!("{}/evil", p.root)).exists());
    assert!(
        !Path::new(&format!("{deps}/a")).exists(),
        "nothing is written unless every file checks out"
    );
    let jobs_so_far = log.lock().unwrap().jobs.len();

    // Not offloadable: a cdylib. The host sees nothing, rustc runs here quietly.
    let mut bin_args = p.args("app");
    let i = bin_args.iter().position(|a| a == "lib").unwrap();
    bin_args[i] = "cdylib".into();
    let out = p.wrapper(&socket, &bin_args);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(
        out.stderr, b"local-stderr\n",
        "no message for an ordinary decision"
    );
    assert!(p.local_ran());
    fs::remove_file(&p.marker).unwrap();
    // `-vV` (cargo's first question).
    let out = p.wrapper(&socket, &["-vV".to_string()]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(fs::read_to_string(&p.marker).unwrap(), "-vV\n");
    fs::remove_file(&p.marker).unwrap();
    assert_eq!(log.lock().unwrap().jobs.len(), jobs_so_far);

    // No multiplexer: rustc runs here, quietly.
    let out = p.wrapper(&p.dir.path("nothing.sock"), &p.args("foo"));
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(out.stderr, b"local-stderr\n");
    assert!(p.local_ran());

    drop(log);
    let _ = run(Command::new(BIN).args(["quit", &socket]));
    assert_eq!(
        wait_exit(&mut mux, Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );
    host.join().unwrap();
}

#[test]
fn the_multiplexer_exits_when_the_port_closes() {
    let dir = TempDir::new("portclose");
    let port = dir.path("port.sock");
    let socket = dir.path("mux.sock");
    // The host serves one request and hangs up.
    let answer = Box::new(|_: &Job| b"{\"kind\":\"error\",\"message\":\"x\"}\n".to_vec());
    let (_log, host) = start_host(&port, answer, Some(1));
    let mut mux = start_mux(&port, &socket);
    let mut conn = UnixStream::connect(&socket).unwrap();
    proto::write_message(&mut conn, proto::kind::SUBMIT, 5, b"{\"kind\":\"blob\",\"offset\":0,\"sha256\":\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\",\"size\":0,\"v\":1}\n").unwrap();
    let answer = proto::read_message(&mut conn, 1 << 20).unwrap().unwrap();
    assert_eq!((answer.kind, answer.id), (proto::kind::RESPONSE, 5));
    assert_eq!(answer.body, b"{\"kind\":\"ok\"}\n");
    host.join().unwrap();
    let status = wait_exit(&mut mux, Duration::from_secs(10));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    assert!(!Path::new(&socket).exists());
    // The wrapper's connection ends with it.
    assert!(proto::read_message(&mut conn, 1 << 20).unwrap().is_none());
}

#[test]
fn at_most_63_requests_in_flight_and_responses_routed_by_tag() {
    let dir = TempDir::new("inflight");
    let port = dir.path("port.sock");
    let socket = dir.path("mux.sock");
    let listener = UnixListener::bind(&port).unwrap();
    let host = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let take = |conn: &mut UnixStream, n: usize| -> Vec<(u64, Vec<u8>)> {
            (0..n)
                .map(|_| {
                    proto::read_frame(conn, proto::MAX_REQUEST)
                        .unwrap()
                        .unwrap()
                })
                .collect()
        };
        let first = take(&mut conn, 63);
        let mut tags: Vec<u64> = first.iter().map(|(t, _)| *t).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 63, "tags in flight are distinct");
        assert!(!tags.contains(&0), "tags start at 1");
        // Nothing more while 63 are outstanding.
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut probe = [0u8; 1];
        assert!(
            std::io::Read::read(&mut conn, &mut probe).is_err(),
            "a 64th request went out"
        );
        conn.set_read_timeout(None).unwrap();
        // Answer in reverse order.
        for (tag, body) in first.iter().rev() {
            let mut response = b"re:".to_vec();
            response.extend_from_slice(body);
            proto::write_frame(&mut conn, *tag, &response).unwrap();
        }
        for (tag, body) in take(&mut conn, 37) {
            let mut response = b"re:".to_vec();
            response.extend_from_slice(&body);
            proto::write_frame(&mut conn, tag, &response).unwrap();
        }
        // A response for a tag not in flight is dropped, not fatal.
        proto::write_frame(&mut conn, 999_999, b"stray").unwrap();
        assert!(proto::read_frame(&mut conn, 16).unwrap().is_none());
    });
    let mut mux = start_mux(&port, &socket);
    // Two wrappers' connections, 50 pipelined requests each.
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut conn = UnixStream::connect(&socket).unwrap();
                let mut writer = conn.try_clone().unwrap();
                let sender = thread::spawn(move || {
                    for i in 0..50u32 {
                        let body = format!("c{c}-{i}");
                        proto::write_message(&mut writer, proto::kind::SUBMIT, i, body.as_bytes())
                            .unwrap();
                    }
                });
                let mut seen = BTreeMap::new();
                for _ in 0..50 {
                    let m = proto::read_message(&mut conn, 1 << 20).unwrap().unwrap();
                    assert_eq!(m.kind, proto::kind::RESPONSE);
                    seen.insert(m.id, String::from_utf8(m.body).unwrap());
                }
                sender.join().unwrap();
                for i in 0..50u32 {
                    assert_eq!(seen[&i], format!("re:c{c}-{i}"), "routed to its request");
                }
                conn.flush().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let quit = run(Command::new(BIN).args(["quit", &socket]));
    assert!(quit.status.success());
    assert!(wait_exit(&mut mux, Duration::from_secs(10)).is_some());
    host.join().unwrap();
}

#[test]
fn run_job_runs_the_job_and_reports_new_and_changed_outputs() {
    let dir = TempDir::new("runjob");
    let out = dir.path("build/src/target/release/deps");
    dir.write("build/src/target/release/deps/libdep-1.rlib", b"dep");
    dir.write("build/src/target/release/deps/libstale-1.rmeta", b"stale");
    dir.write("build/vendor/x-1/src/lib.rs", b"//");
    let rustc = dir.path("fake-rustc");
    write_script(
        Path::new(&rustc),
        &format!(
            "#!/bin/sh\n\
             printf 'args=%s;' \"$*\"\n\
             printf 'pwd=%s;FOO=%s;PATH=%s;HOME=%s;OTHER=%s\\n' \"$(pwd)\" \"$FOO\" \"$PATH\" \"$HOME\" \"${{OTHER-unset}}\"\n\
             echo 'warning: something' >&2\n\
             mkdir -p {out}/sub\n\
             printf 'new rlib' > {out}/libx-1.rlib\n\
             printf 'dep-info' > {out}/sub/x-1.d\n\
             printf '#!/bin/sh' > {out}/tool && chmod 755 {out}/tool\n\
             printf 'changed' > {out}/libstale-1.rmeta\n\
             ln -s libx-1.rlib {out}/link\n\
             exit 7\n"
        ),
    );
    let job = Job {
        argv: vec![rustc.clone(), "--crate-name".into(), "x".into()],
        cwd: dir.path("build/vendor/x-1"),
        env: [("FOO".to_string(), "bar baz".to_string())].into(),
        inputs: vec![
            entry(out.clone() + "/libdep-1.rlib", b"dep", false),
            entry(out.clone() + "/libstale-1.rmeta", b"stale", false),
            entry(dir.path("build/vendor/x-1/src/lib.rs"), b"//", false),
        ],
        outputs: vec![out.clone()],
    };
    let job_path = dir.path("job.json");
    fs::write(&job_path, job.to_body()).unwrap();
    let result_path = dir.path("result");
    let status = run(Command::new(BIN)
        .args(["run-job", &job_path, &result_path])
        .env("OTHER", "leaks?"));
    assert!(status.status.success(), "{status:?}");
    let body = fs::read(&result_path).unwrap();
    let wire::Response::Result { head, payload } = wire::parse_response(&body).unwrap() else {
        panic!("not a result");
    };
    assert_eq!(head.exit, 7);
    let (stdout, rest) = payload.split_at(head.stdout as usize);
    let (stderr, files) = rest.split_at(head.stderr as usize);
    assert_eq!(
        String::from_utf8_lossy(stdout),
        format!(
            "args=--crate-name x;pwd={};FOO=bar baz;PATH=/usr/bin:/usr/sbin:/usr/lib/cmbuild/bin;HOME=/build/home;OTHER=unset\n",
            dir.path("build/vendor/x-1")
        )
    );
    assert_eq!(stderr, b"warning: something\n");
    let listed: Vec<(&str, bool, u64)> = head
        .files
        .iter()
        .map(|f| (&f.path[out.len()..], f.exec, f.size))
        .collect();
    assert_eq!(
        listed,
        [
            ("/libstale-1.rmeta", false, 7),
            ("/libx-1.rlib", false, 8),
            ("/sub/x-1.d", false, 8),
            ("/tool", true, 9),
        ],
        "new and changed regular files, sorted; not the unchanged input, not the link"
    );
    assert_eq!(files, b"changednew rlibdep-info#!/bin/sh");
    for f in &head.files {
        assert_eq!(f.sha256, sha256::digest(&fs::read(&f.path).unwrap()));
    }
}

#[test]
fn run_job_reports_a_program_that_cannot_start_and_refuses_a_bad_job() {
    let dir = TempDir::new("runjob-bad");
    let job = Job {
        argv: vec![dir.path("no-such-rustc")],
        cwd: dir.0.to_str().unwrap().to_string(),
        env: BTreeMap::new(),
        inputs: vec![],
        outputs: vec![dir.path("out")],
    };
    let job_path = dir.path("job.json");
    fs::write(&job_path, job.to_body()).unwrap();
    let result_path = dir.path("result");
    let out = run(Command::new(BIN).args(["run-job", &job_path, &result_path]));
    assert!(out.status.success());
    let body = fs::read(&result_path).unwrap();
    let wire::Response::Result { head, payload } = wire::parse_response(&body).unwrap() else {
        panic!("not a result");
    };
    assert_eq!((head.exit, head.files.len(), head.stdout), (127, 0, 0));
    assert!(String::from_utf8_lossy(payload).contains("cannot run"));

    // Not canonical (a space): refused, no result written.
    let bad_path = dir.path("bad.json");
    let text = String::from_utf8(job.to_body())
        .unwrap()
        .replacen(',', ", ", 1);
    fs::write(&bad_path, text).unwrap();
    let bad_result = dir.path("bad-result");
    let out = run(Command::new(BIN).args(["run-job", &bad_path, &bad_result]));
    assert_eq!(out.status.code(), Some(1));
    assert!(!Path::new(&bad_result).exists());
    // Usage errors.
    let out = run(Command::new(BIN).args(["run-job", &bad_path]));
    assert_eq!(out.status.code(), Some(2));
}

/// A real `cargo build` of a small project (a library with a build script, a proc macro,
/// a library and a binary using both) with the wrapper as `RUSTC_WRAPPER`, through the
/// multiplexer, to a fake host that runs each job with `run-job` in place (the paths are
/// the same on one machine, as they are in a sibling). Checks that cargo's real rustc
/// invocations are understood: the libraries, the proc macro and the build script are
/// offloaded, the binary is not, and the build works.
#[test]
fn a_real_cargo_build_through_the_wrapper() {
    if Command::new("cargo").arg("-V").output().is_err() {
        eprintln!("no cargo on PATH: skipped");
        return;
    }
    let t = TempDir::new("cargo");
    let root = t.path("build");
    t.write(
        "build/vendor/dep-0.1.0/Cargo.toml",
        b"[package]\nname = \"dep\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    t.write(
        "build/vendor/dep-0.1.0/build.rs",
        b"fn main() {\n    let out = std::env::var(\"OUT_DIR\").unwrap();\n    \
          std::fs::write(format!(\"{out}/gen.rs\"), \"pub const GEN: u32 = 7;\").unwrap();\n}\n",
    );
    t.write(
        "build/vendor/dep-0.1.0/src/lib.rs",
        b"include!(concat!(env!(\"OUT_DIR\"), \"/gen.rs\"));\npub fn dep() -> u32 { GEN }\n",
    );
    t.write(
        "build/vendor/mac-0.1.0/Cargo.toml",
        b"[package]\nname = \"mac\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[lib]\nproc-macro = true\n",
    );
    t.write(
        "build/vendor/mac-0.1.0/src/lib.rs",
        b"use proc_macro::TokenStream;\n#[proc_macro]\npub fn answer(_: TokenStream) -> TokenStream { \"42\".parse().unwrap() }\n",
    );
    t.write(
        "build/src/Cargo.toml",
        b"[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[dependencies]\n\
          dep = { path = \"../vendor/dep-0.1.0\" }\nmac = { path = \"../vendor/mac-0.1.0\" }\n",
    );
    t.write(
        "build/src/src/lib.rs",
        b"pub fn total() -> u32 { dep::dep() + mac::answer!() }\n",
    );
    t.write(
        "build/src/src/main.rs",
        b"fn main() { println!(\"total {}\", app::total()); }\n",
    );
    let wrapper = t.path("cmbuild-offload-rustc-wrapper");
    std::os::unix::fs::symlink(BIN, &wrapper).unwrap();

    let scratch = t.path("host");
    fs::create_dir_all(&scratch).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let answer = {
        let runs = Arc::clone(&runs);
        move |job: &Job| -> Vec<u8> {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            let job_path = format!("{scratch}/job-{n}.json");
            let result_path = format!("{scratch}/result-{n}");
            fs::write(&job_path, job.to_body()).unwrap();
            let out = run(Command::new(BIN).args(["run-job", &job_path, &result_path]));
            assert!(out.status.success(), "run-job: {out:?}");
            fs::read(&result_path).unwrap()
        }
    };
    let port = t.path("port.sock");
    let socket = t.path("mux.sock");
    let (log, host) = start_host(&port, Box::new(answer), None);
    let mut mux = start_mux(&port, &socket);

    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--offline", "--quiet"])
        .current_dir(format!("{root}/src"))
        .env("RUSTC_WRAPPER", &wrapper)
        .env("CMBUILD_OFFLOAD_SOCKET", &socket)
        .env("CMBUILD_OFFLOAD_ROOT", &root)
        .env("CARGO_TARGET_DIR", format!("{root}/src/target"))
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_BUILD_JOBS", "1")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    // The variables cargo set for this test must not leak into the inner build.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&k.as_str())
        {
            cargo.env_remove(k);
        }
    }
    let out = run(&mut cargo);
    assert!(
        out.status.success(),
        "cargo build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = run(&mut Command::new(format!("{root}/src/target/debug/app")));
    assert_eq!(String::from_utf8_lossy(&app.stdout), "total 49\n");

    let log = log.lock().unwrap();
    let mut names: Vec<String> = log
        .jobs
        .iter()
        .map(|j| j.argv[j.argv.iter().position(|a| a == "--crate-name").unwrap() + 1].clone())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        ["app", "build_script_build", "dep", "mac"],
        "offloaded: the libraries, the proc macro, the build script and the binary"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 5, "each job ran once");
    drop(log);
    let _ = run(Command::new(BIN).args(["quit", &socket]));
    assert!(wait_exit(&mut mux, Duration::from_secs(10)).is_some());
    host.join().unwrap();
}
