//! Byte-level framing: the port's frames (`tag u64 LE, length u64 LE, bytes`, in both
//! directions) and the messages between the wrappers and the multiplexer on its Unix socket.
//!
//! # The wrapper ↔ multiplexer protocol
//!
//! A stream of messages in both directions, each `kind u8, id u32 LE, length u64 LE, body`.
//! The wrapper picks `id`s (any value; it may have several requests outstanding on one
//! connection) and the multiplexer answers each request with one message carrying the same
//! `id`, in any order. Requests (wrapper → multiplexer):
//!
//! | kind | body | answer |
//! |---|---|---|
//! | `J` submit | one request body for the port (at most [`MAX_REQUEST`] bytes) | `R`: the host's response body, or `E` |
//! | `H` hash | paths, each followed by a NUL byte (at most [`MAX_HASH_PATHS`]) | `h`: per path, in order, `0` + SHA-256 (32) + size u64 LE + exec u8 for a regular file, or `1` for anything else |
//! | `W` register | entries, each SHA-256 (32) + size u64 LE + path + NUL: files the wrapper wrote with the host's digest | `k` |
//! | `Q` quit | empty | `k`, then the multiplexer exits |
//!
//! `E` carries a UTF-8 message: the request could not be served (too large, the port is
//! gone). Any malformed message ends the connection.
//!
//! Self-contained (no `crate::` paths) so that the tests can include it.

use std::io::{self, Read, Write};

/// The channel's limit on a request's bytes (`offload::MAX_REQUEST` of the machine).
pub const MAX_REQUEST: usize = 1 << 20;
/// The channel's limit on a response's bytes (`offload::MAX_RESPONSE` of the machine).
pub const MAX_RESPONSE: usize = 1 << 30;
/// The most paths in one hash request.
pub const MAX_HASH_PATHS: usize = 1 << 16;
/// The longest path the socket protocol carries.
pub const MAX_PATH: usize = 4096;
/// The largest message body the multiplexer accepts from a wrapper (a hash or register
/// request; a submission is further held to [`MAX_REQUEST`]).
pub const MAX_CONTROL: usize = 16 << 20;
/// The largest message body a wrapper accepts from the multiplexer: a response plus slack.
pub const MAX_MESSAGE: usize = MAX_RESPONSE + (1 << 16);

pub mod kind {
    pub const SUBMIT: u8 = b'J';
    pub const HASH: u8 = b'H';
    pub const REGISTER: u8 = b'W';
    pub const QUIT: u8 = b'Q';
    pub const RESPONSE: u8 = b'R';
    pub const HASHES: u8 = b'h';
    pub const OK: u8 = b'k';
    pub const ERROR: u8 = b'E';
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads exactly `len` bytes (refusing more than `max` before reading any), growing the
/// buffer as the bytes come rather than trusting the length up front.
fn read_body(r: &mut impl Read, len: u64, max: usize) -> io::Result<Vec<u8>> {
    if len > max as u64 {
        return Err(invalid("message longer than the limit"));
    }
    let mut body = Vec::with_capacity((len as usize).min(1 << 20));
    r.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream ended inside a message",
        ));
    }
    Ok(body)
}

/// Fills `buf`, or returns `false` on a clean end of stream before its first byte.
fn read_header(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a header",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes one port frame.
pub fn write_frame(w: &mut impl Write, tag: u64, body: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(16 + body.len());
    frame.extend_from_slice(&tag.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u64).to_le_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one port frame with a body of at most `max` bytes; `None` at a clean end.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut header = [0u8; 16];
    if !read_header(r, &mut header)? {
        return Ok(None);
    }
    let tag = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    Ok(Some((tag, read_body(r, len, max)?)))
}

/// One socket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub id: u32,
    pub body: Vec<u8>,
}

/// Writes one socket message.
pub fn write_message(w: &mut impl Write, kind: u8, id: u32, body: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 13];
    header[0] = kind;
    header[1..5].copy_from_slice(&id.to_le_bytes());
    header[5..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    w.write_all(&header)?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one socket message with a body of at most `max` bytes; `None` at a clean end.
pub fn read_message(r: &mut impl Read, max: usize) -> io::Result<Option<Message>> {
    let mut header = [0u8; 13];
    if !read_header(r, &mut header)? {
        return Ok(None);
    }
    let id = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(header[5..].try_into().expect("8 bytes"));
    Ok(Some(Message {
        kind: header[0],
        id,
        body: read_body(r, len, max)?,
    }))
}

/// What the multiplexer knows of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    pub sha256: [u8; 32],
    pub size: u64,
    pub exec: bool,
}

/// The body of a hash request.
pub fn encode_paths(paths: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

/// Splits `body` into UTF-8 strings each followed by NUL, refusing more than `max` of them
/// or one longer than [`MAX_PATH`].
fn split_nul(body: &[u8], max: usize) -> io::Result<Vec<String>> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if body.last() != Some(&0) {
        return Err(invalid("path list does not end with NUL"));
    }
    let mut out = Vec::new();
    for part in body[..body.len() - 1].split(|&b| b == 0) {
        if out.len() == max {
            return Err(invalid("too many paths"));
        }
        if part.is_empty() || part.len() > MAX_PATH {
            return Err(invalid("empty or overlong path"));
        }
        let s = std::str::from_utf8(part).map_err(|_| invalid("path is not UTF-8"))?;
        out.push(s.to_string());
    }
    Ok(out)
}

/// Parses a hash request's body.
pub fn decode_paths(body: &[u8]) -> io::Result<Vec<String>> {
    split_nul(body, MAX_HASH_PATHS)
}

/// The body of a hash answer.
pub fn encode_hashes(hashes: &[Option<FileHash>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hashes.len() * 42);
    for h in hashes {
        match h {
            Some(h) => {
                out.push(0);
                out.extend_from_slice(&h.sha256);
                out.extend_from_slice(&h.size.to_le_bytes());
                out.push(u8::from(h.exec));
            }
            None => out.push(1),
        }
    }
    out
}

/// Parses a hash answer, which must hold exactly `count` entries.
pub fn decode_hashes(body: &[u8], count: usize) -> io::Result<Vec<Option<FileHash>>> {
    let mut out = Vec::with_capacity(count);
    let mut rest = body;
    while let Some((&status, tail)) = rest.split_first() {
        if out.len() == count {
            return Err(invalid("more hashes than paths"));
        }
        match status {
            0 if tail.len() >= 41 => {
                let sha256: [u8; 32] = tail[..32].try_into().expect("32 bytes");
                let size = u64::from_le_bytes(tail[32..40].try_into().expect("8 bytes"));
                let exec = match tail[40] {
                    0 => false,
                    1 => true,
                    _ => return Err(invalid("bad exec flag")),
                };
                out.push(Some(FileHash { sha256, size, exec }));
                rest = &tail[41..];
            }
            1 => {
                out.push(None);
                rest = tail;
            }
            _ => return Err(invalid("bad hash entry")),
        }
    }
    if out.len() != count {
        return Err(invalid("fewer hashes than paths"));
    }
    Ok(out)
}

/// The body of a register request: `(path, sha256, size)` per file.
pub fn encode_register(entries: &[(String, [u8; 32], u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, sha, size) in entries {
        out.extend_from_slice(sha);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a register request's body.
pub fn decode_register(body: &[u8]) -> io::Result<Vec<(String, [u8; 32], u64)>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if out.len() == MAX_HASH_PATHS {
            return Err(invalid("too many entries"));
        }
        if rest.len() < 41 {
            return Err(invalid("short register entry"));
        }
        let sha: [u8; 32] = rest[..32].try_into().expect("32 bytes");
        let size = u64::from_le_bytes(rest[32..40].try_into().expect("8 bytes"));
        let tail = &rest[40..];
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            return Err(invalid("register entry without NUL"));
        };
        let path = split_nul(&tail[..=end], 1)?;
        let [path] = <[String; 1]>::try_from(path).map_err(|_| invalid("empty path"))?;
        out.push((path, sha, size));
        rest = &tail[end + 1..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 7, b"hello").unwrap();
        write_frame(&mut buf, u64::MAX, b"").unwrap();
        assert_eq!(
            &buf[..16],
            &[7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r, 10).unwrap(),
            Some((7, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r, 10).unwrap(), Some((u64::MAX, vec![])));
        assert_eq!(read_frame(&mut r, 10).unwrap(), None);
    }

    #[test]
    fn frames_refuse_overlong_and_truncated() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 1, &[0u8; 11]).unwrap();
        assert!(read_frame(&mut &buf[..], 10).is_err(), "over the limit");
        assert!(read_frame(&mut &buf[..20], 100).is_err(), "truncated body");
        assert!(read_frame(&mut &buf[..9], 100).is_err(), "truncated header");
        // A hostile length does not allocate up front.
        let mut hostile = 1u64.to_le_bytes().to_vec();
        hostile.extend_from_slice(&(u64::MAX).to_le_bytes());
        assert!(read_frame(&mut &hostile[..], MAX_RESPONSE).is_err());
        let mut big = 1u64.to_le_bytes().to_vec();
        big.extend_from_slice(&((MAX_RESPONSE as u64) - 1).to_le_bytes());
        big.extend_from_slice(b"xyz");
        assert!(read_frame(&mut &big[..], MAX_RESPONSE).is_err());
    }

    #[test]
    fn messages_round_trip() {
        let mut buf = Vec::new();
        write_message(&mut buf, kind::SUBMIT, 42, b"body").unwrap();
        write_message(&mut buf, kind::QUIT, 0, b"").unwrap();
        let mut r = &buf[..];
        let m = read_message(&mut r, 100).unwrap().unwrap();
        assert_eq!(
            (m.kind, m.id, &m.body[..]),
            (kind::SUBMIT, 42, &b"body"[..])
        );
        let m = read_message(&mut r, 100).unwrap().unwrap();
        assert_eq!((m.kind, m.id, m.body.len()), (kind::QUIT, 0, 0));
        assert_eq!(read_message(&mut r, 100).unwrap(), None);
        assert!(read_message(&mut &buf[..5], 100).is_err());
    }

    #[test]
    fn hash_bodies_round_trip_and_are_checked() {
        let body = encode_paths(&["/a", "/b/c"]);
        assert_eq!(decode_paths(&body).unwrap(), ["/a", "/b/c"]);
        assert!(decode_paths(b"/a").is_err(), "no NUL");
        assert!(decode_paths(b"/a\0\0").is_err(), "empty path");
        assert!(decode_paths(b"\xff\0").is_err(), "not UTF-8");
        assert_eq!(decode_paths(b"").unwrap(), Vec::<String>::new());
        let h = FileHash {
            sha256: [3; 32],
            size: 99,
            exec: true,
        };
        let body = encode_hashes(&[Some(h), None]);
        assert_eq!(decode_hashes(&body, 2).unwrap(), [Some(h), None]);
        assert!(decode_hashes(&body, 1).is_err());
        assert!(decode_hashes(&body, 3).is_err());
        assert!(decode_hashes(&body[..20], 2).is_err());
        assert!(decode_hashes(&[2], 1).is_err());
        let entries = vec![("/x/y".to_string(), [9u8; 32], 5u64)];
        let body = encode_register(&entries);
        assert_eq!(decode_register(&body).unwrap(), entries);
        assert!(decode_register(&body[..body.len() - 1]).is_err());
        assert!(decode_register(&body[..30]).is_err());
    }
}
