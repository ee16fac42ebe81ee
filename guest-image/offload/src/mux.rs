//! `cmbuild-offload mux PORT SOCKET`: owns the port, serves the wrappers on a Unix socket
//! (the protocol is in [`crate::proto`]), gives out tags, routes each response to its
//! wrapper by tag, keeps at most [`MAX_IN_FLIGHT`] requests on the port (the rest wait, in
//! order), and keeps the hash cache. Exits when a wrapper sends `Q` or when the port ends.

use crate::proto::{self, kind, FileHash, Message};
use crate::sha256::Sha256;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most requests on the port at once (the channel has 64 tags).
pub const MAX_IN_FLIGHT: usize = 63;
/// A file whose mtime or ctime is this close to now (or later) is hashed but not cached:
/// it could still change within the same timestamp tick without its stat changing.
pub const RACY_SECONDS: i64 = 1;
/// Tags run from 1 to this, then start again at 1 (skipping tags still in flight).
const LAST_TAG: u64 = 1 << 63;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread leaves data that is still consistent here (maps of plain values).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a response goes: the connection's outgoing queue and the wrapper's request id.
pub struct Route {
    pub queue: Sender<Outgoing>,
    pub id: u32,
}

/// What a connection's writer thread sends.
pub enum Outgoing {
    Message {
        kind: u8,
        id: u32,
        body: Vec<u8>,
    },
    /// Send `k` for `id`, then end the process.
    QuitAfter {
        id: u32,
    },
}

#[derive(Default)]
struct SlotState {
    in_flight: BTreeMap<u64, Route>,
    last_tag: u64,
    next_ticket: u64,
    serving: u64,
}

/// The tag allocator: tags in flight and their routes, at most `limit` at once, granted in
/// the order asked for.
pub struct Slots {
    state: Mutex<SlotState>,
    freed: Condvar,
    limit: usize,
}

impl Slots {
    pub fn new(limit: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotState::default()),
            freed: Condvar::new(),
            limit,
        }
    }

    /// Waits for a free slot (first come, first served) and returns a fresh tag routed to
    /// `route`.
    pub fn acquire(&self, route: Route) -> u64 {
        let mut s = lock(&self.state);
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        while s.serving != ticket || s.in_flight.len() >= self.limit {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.serving += 1;
        let mut tag = s.last_tag;
        loop {
            tag = if tag >= LAST_TAG { 1 } else { tag + 1 };
            if !s.in_flight.contains_key(&tag) {
                break;
            }
        }
        s.last_tag = tag;
        s.in_flight.insert(tag, route);
        drop(s);
        // The next ticket may be able to go too.
        self.freed.notify_all();
        tag
    }

    /// The route of `tag`, which is no longer in flight; `None` for a tag not in flight.
    pub fn complete(&self, tag: u64) -> Option<Route> {
        let route = lock(&self.state).in_flight.remove(&tag);
        if route.is_some() {
            self.freed.notify_all();
        }
        route
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight.len()
    }
}

/// The stat fields that identify a file's version for the cache.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }

    /// Whether the file changed so recently that a change within the same timestamp tick
    /// would not show in its stat.
    fn is_racy(&self, window: i64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let limit = now.saturating_sub(window);
        self.mtime.0 >= limit || self.ctime.0 >= limit
    }
}

/// The hash cache: by path, the digest of the version `Stamp` names. Each file is hashed
/// once; files the wrappers wrote come with the host's digest and are not read at all.
pub struct HashCache {
    entries: Mutex<BTreeMap<String, (Stamp, [u8; 32])>>,
    /// How many files were read and hashed (for the tests).
    hashed: AtomicU64,
    /// [`RACY_SECONDS`], or less in tests.
    racy_window: i64,
}

fn is_exec(m: &fs::Metadata) -> bool {
    m.permissions().mode() & 0o111 != 0
}

impl HashCache {
    /// An empty cache that does not cache files changed within `racy_window` seconds of now.
    pub fn new(racy_window: i64) -> HashCache {
        HashCache {
            entries: Mutex::new(BTreeMap::new()),
            hashed: AtomicU64::new(0),
            racy_window,
        }
    }

    /// The digest, size and exec bit of the regular file at `path` (symbolic links
    /// followed); `None` if it is not one or cannot be read.
    pub fn lookup(&self, path: &str) -> Option<FileHash> {
        for _ in 0..3 {
            let meta = fs::metadata(path).ok()?;
            if !meta.is_file() {
                return None;
            }
            let stamp = Stamp::of(&meta);
            if let Some((s, sha)) = lock(&self.entries).get(path) {
                if *s == stamp {
                    return Some(FileHash {
                        sha256: *sha,
                        size: stamp.size,
                        exec: is_exec(&meta),
                    });
                }
            }
            let (sha, read, after) = hash_file(path).ok()?;
            self.hashed.fetch_add(1, Ordering::Relaxed);
            if Stamp::of(&after) != stamp || read != stamp.size {
                // It changed while being read: read it again.
                continue;
            }
            if !stamp.is_racy(self.racy_window) {
                lock(&self.entries).insert(path.to_string(), (stamp, sha));
            }
            return Some(FileHash {
                sha256: sha,
                size: read,
                exec: is_exec(&after),
            });
        }
        None
    }

    /// Records that `path` now holds bytes with digest `sha` and size `size` (a file a
    /// wrapper just wrote from a result); ignored unless it is a regular file of that size.
    pub fn register(&self, path: &str, sha: [u8; 32], size: u64) {
        if let Ok(meta) = fs::metadata(path) {
            if meta.is_file() && meta.len() == size {
                lock(&self.entries).insert(path.to_string(), (Stamp::of(&meta), sha));
            }
        }
    }

    #[cfg(test)]
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }
}

/// Hashes a file: its digest, the bytes read, and its stat after reading.
fn hash_file(path: &str) -> io::Result<([u8; 32], u64, fs::Metadata)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let after = file.metadata()?;
    Ok((hasher.finish(), total, after))
}

struct Mux {
    slots: Slots,
    port: Mutex<Box<dyn Write + Send>>,
    cache: HashCache,
    socket: PathBuf,
    /// Messages queued for the wrappers and not yet written (or dropped).
    unsent: AtomicUsize,
}

impl Mux {
    /// Queues a message for a connection's writer thread.
    fn send(&self, queue: &Sender<Outgoing>, kind: u8, id: u32, body: Vec<u8>) {
        self.unsent.fetch_add(1, Ordering::SeqCst);
        if queue.send(Outgoing::Message { kind, id, body }).is_err() {
            self.unsent.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The port ended: no response can come any more. Delivers what is queued (for at
    /// most 10 s), then exits.
    fn port_closed(&self) -> ! {
        for _ in 0..1000 {
            if self.unsent.load(Ordering::SeqCst) == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.exit(0)
    }

    /// Ends the process: the socket goes away, and every wrapper still connected sees its
    /// connection end and runs rustc itself.
    fn exit(&self, code: i32) -> ! {
        let _ = fs::remove_file(&self.socket);
        std::process::exit(code)
    }
}

/// Opens the port: a Unix socket path is connected to (the tests' stand-in for the host),
/// anything else (the virtio-console port, a character device) is opened read-write.
fn open_port(port: &str) -> io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
    let meta = fs::metadata(port)?;
    if meta.file_type().is_socket() {
        let stream = UnixStream::connect(port)?;
        let reader = stream.try_clone()?;
        Ok((Box::new(reader), Box::new(stream)))
    } else {
        let file = OpenOptions::new().read(true).write(true).open(port)?;
        let reader = file.try_clone()?;
        Ok((Box::new(reader), Box::new(file)))
    }
}

/// Runs the multiplexer until told to quit or the port ends.
pub fn run(port: &str, socket: &str) -> Result<(), String> {
    let (mut port_r, port_w) =
        open_port(port).map_err(|e| format!("cannot open the port {port}: {e}"))?;
    let listener = bind(Path::new(socket))?;
    let mux = Arc::new(Mux {
        slots: Slots::new(MAX_IN_FLIGHT),
        port: Mutex::new(port_w),
        cache: HashCache::new(RACY_SECONDS),
        socket: PathBuf::from(socket),
        unsent: AtomicUsize::new(0),
    });
    let reader_mux = Arc::clone(&mux);
    thread::spawn(move || {
        let mux = reader_mux;
        loop {
            match proto::read_frame(&mut port_r, proto::MAX_RESPONSE) {
                Ok(Some((tag, body))) => match mux.slots.complete(tag) {
                    Some(route) => mux.send(&route.queue, kind::RESPONSE, route.id, body),
                    None => eprintln!("cmbuild-offload mux: a response for tag {tag}, which is not in flight; dropped"),
                },
                Ok(None) => mux.port_closed(),
                Err(e) => {
                    eprintln!("cmbuild-offload mux: reading the port: {e}");
                    mux.exit(1)
                }
            }
        }
    });
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let mux = Arc::clone(&mux);
                thread::spawn(move || serve(mux, stream));
            }
            Err(e) => eprintln!("cmbuild-offload mux: accept: {e}"),
        }
    }
    Ok(())
}

/// Binds the socket under a temporary name and renames it into place, so that the path
/// exists only once the socket listens (a driver may wait for it to appear).
fn bind(socket: &Path) -> Result<UnixListener, String> {
    if UnixStream::connect(socket).is_ok() {
        return Err(format!("{} is in use", socket.display()));
    }
    let _ = fs::remove_file(socket);
    let mut tmp = socket.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("cannot listen on {}: {e}", tmp.display()))?;
    fs::rename(&tmp, socket).map_err(|e| format!("cannot rename to {}: {e}", socket.display()))?;
    Ok(listener)
}

/// Serves one wrapper connection: reads its requests in order; a writer thread sends the
/// answers, so that routing a response never waits for a slow wrapper.
fn serve(mux: Arc<Mux>, stream: UnixStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let (queue, outgoing) = mpsc::channel::<Outgoing>();
    let writer_thread = {
        let mux = Arc::clone(&mux);
        thread::spawn(move || {
            let mut gone = false;
            for out in outgoing {
                match out {
                    Outgoing::Message { kind, id, body } => {
                        // Once the wrapper is gone, drain silently.
                        if !gone {
                            gone = proto::write_message(&mut writer, kind, id, &body).is_err();
                        }
                        mux.unsent.fetch_sub(1, Ordering::SeqCst);
                    }
                    Outgoing::QuitAfter { id } => {
                        let _ = proto::write_message(&mut writer, kind::OK, id, b"");
                        mux.exit(0);
                    }
                }
            }
        })
    };
    let mut reader = stream;
    loop {
        let message = match proto::read_message(&mut reader, proto::MAX_CONTROL) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                eprintln!("cmbuild-offload mux: a wrapper sent a bad message: {e}");
                break;
            }
        };
        if !handle(&mux, &queue, message) {
            break;
        }
    }
    drop(queue);
    let _ = reader.shutdown(std::net::Shutdown::Read);
    // The writer thread ends once every response routed to this connection is sent.
    let _ = writer_thread.join();
}

/// Handles one request; `false` ends the connection.
fn handle(mux: &Mux, queue: &Sender<Outgoing>, message: Message) -> bool {
    let Message { kind: k, id, body } = message;
    let reply = |kind: u8, body: Vec<u8>| mux.send(queue, kind, id, body);
    match k {
        kind::SUBMIT => {
            if body.len() > proto::MAX_REQUEST {
                reply(
                    kind::ERROR,
                    b"request larger than the channel's limit".to_vec(),
                );
                return true;
            }
            let tag = mux.slots.acquire(Route {
                queue: queue.clone(),
                id,
            });
            let written = proto::write_frame(&mut *lock(&mux.port), tag, &body);
            if let Err(e) = written {
                eprintln!("cmbuild-offload mux: writing the port: {e}");
                mux.slots.complete(tag);
                reply(kind::ERROR, b"the port failed".to_vec());
                mux.exit(1);
            }
        }
        kind::HASH => {
            let Ok(paths) = proto::decode_paths(&body) else {
                return false;
            };
            let hashes: Vec<Option<FileHash>> = paths.iter().map(|p| mux.cache.lookup(p)).collect();
            reply(kind::HASHES, proto::encode_hashes(&hashes));
        }
        kind::REGISTER => {
            let Ok(entries) = proto::decode_register(&body) else {
                return false;
            };
            for (path, sha, size) in entries {
                mux.cache.register(&path, sha, size);
            }
            reply(kind::OK, Vec::new());
        }
        kind::QUIT => {
            let _ = queue.send(Outgoing::QuitAfter { id });
            return false;
        }
        _ => return false,
    }
    true
}

/// `cmbuild-offload quit SOCKET`: tells the multiplexer to exit.
pub fn quit(socket: &str) -> Result<(), String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot reach {socket}: {e}"))?;
    proto::write_message(&mut stream, kind::QUIT, 0, b"").map_err(|e| e.to_string())?;
    match proto::read_message(&mut stream, 1024) {
        Ok(Some(m)) if m.kind == kind::OK => Ok(()),
        other => Err(format!("unexpected answer to quit: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> (Route, mpsc::Receiver<Outgoing>) {
        let (queue, rx) = mpsc::channel();
        (Route { queue, id: 0 }, rx)
    }

    #[test]
    fn tags_are_fresh_and_skip_those_in_flight() {
        let slots = Slots::new(3);
        let a = slots.acquire(route().0);
        let b = slots.acquire(route().0);
        assert_eq!((a, b), (1, 2));
        assert!(slots.complete(a).is_some());
        assert!(slots.complete(a).is_none(), "a tag completes once");
        assert_eq!(slots.acquire(route().0), 3);
        // Wrap-around skips 2, still in flight.
        lock(&slots.state).last_tag = LAST_TAG;
        assert_eq!(slots.acquire(route().0), 1);
        slots.complete(1);
        lock(&slots.state).last_tag = LAST_TAG;
        assert!(slots.complete(3).is_some());
        assert_eq!(slots.acquire(route().0), 1);
        assert_eq!(slots.in_flight(), 2);
    }

    #[test]
    fn at_most_the_limit_in_flight_then_in_order() {
        let slots = Arc::new(Slots::new(2));
        let first = slots.acquire(route().0);
        let _second = slots.acquire(route().0);
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..3 {
            let waiter = Arc::clone(&slots);
            let done_tx = done_tx.clone();
            thread::spawn(move || {
                let tag = waiter.acquire(route().0);
                done_tx.send((i, tag)).unwrap();
            });
            // Let each waiter take its ticket in turn.
            while lock(&slots.state).next_ticket != 3 + i {
                thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a third request went out with two in flight"
        );
        slots.complete(first);
        let (i, tag) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((i, tag), (0, 3), "the first waiter goes first");
        assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err());
        slots.complete(tag);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap().0, 1);
    }

    #[test]
    fn cache_hashes_once_and_notices_changes() {
        let dir =
            std::env::temp_dir().join(format!("cmbuild-offload-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        fs::write(&path, b"abc").unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let p = path.to_str().unwrap();
        // ctime is recent (set_modified changed it), so the entry is not cached.
        let strict = HashCache::new(RACY_SECONDS);
        for n in 1..=2 {
            assert_eq!(
                strict.lookup(p).unwrap().sha256,
                crate::sha256::digest(b"abc")
            );
            assert_eq!(strict.hashed(), n);
        }
        // Without the racy window: hashed once.
        let cache = HashCache::new(-1000);
        let h = cache.lookup(p).unwrap();
        assert_eq!(h.sha256, crate::sha256::digest(b"abc"));
        assert_eq!((h.size, h.exec), (3, false));
        assert_eq!(cache.hashed(), 1);
        cache.lookup(p).unwrap();
        assert_eq!(cache.hashed(), 1);
        // A registered digest is used without reading (even a wrong one: the wrapper is
        // trusted to register what it verified and wrote).
        cache.register(p, [7; 32], 3);
        assert_eq!(cache.lookup(p).unwrap().sha256, [7; 32]);
        assert_eq!(cache.hashed(), 1);
        // A different size is not registered.
        cache.register(p, [8; 32], 4);
        assert_eq!(cache.lookup(p).unwrap().sha256, [7; 32]);
        // A change (new inode by rename) is noticed.
        let tmp = dir.join("g");
        fs::write(&tmp, b"abd").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &path).unwrap();
        let h = cache.lookup(p).unwrap();
        assert_eq!(h.sha256, crate::sha256::digest(b"abd"));
        assert!(h.exec);
        assert_eq!(cache.hashed(), 2);
        // Directories and missing files are not regular files.
        assert!(cache.lookup(dir.to_str().unwrap()).is_none());
        assert!(cache.lookup(dir.join("none").to_str().unwrap()).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
