//! The wrapper's side of the multiplexer's socket protocol ([`crate::proto`]).

use crate::proto::{self, kind, FileHash, Message};
use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixStream;

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The size a hash or register request aims at (the multiplexer takes up to
/// [`proto::MAX_CONTROL`]).
const BATCH_BYTES: usize = 1 << 20;

/// A connection to the multiplexer.
pub struct Client {
    stream: UnixStream,
    next_id: u32,
}

impl Client {
    pub fn connect(socket: &str) -> io::Result<Client> {
        Ok(Client {
            stream: UnixStream::connect(socket)?,
            next_id: 1,
        })
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        proto::write_message(&mut self.stream, kind, id, body)?;
        Ok(id)
    }

    fn recv(&mut self) -> io::Result<Message> {
        proto::read_message(&mut self.stream, proto::MAX_MESSAGE)?
            .ok_or_else(|| protocol("the multiplexer closed the connection"))
    }

    /// One request, one answer.
    fn call(&mut self, kind: u8, body: &[u8]) -> io::Result<Message> {
        let id = self.send(kind, body)?;
        let answer = self.recv()?;
        if answer.id != id {
            return Err(protocol("an answer for another request"));
        }
        Ok(answer)
    }

    /// The digests of `paths` (`None`: not a regular file), asked in batches.
    pub fn hash(&mut self, paths: &[String]) -> io::Result<Vec<Option<FileHash>>> {
        let mut out = Vec::with_capacity(paths.len());
        for batch in batches(paths, |p| p.len() + 1) {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let answer = self.call(kind::HASH, &proto::encode_paths(&refs))?;
            if answer.kind != kind::HASHES {
                return Err(protocol("unexpected answer to a hash request"));
            }
            out.extend(proto::decode_hashes(&answer.body, batch.len())?);
        }
        Ok(out)
    }

    /// Tells the multiplexer the digests of files this wrapper wrote.
    pub fn register(&mut self, entries: &[(String, [u8; 32], u64)]) -> io::Result<()> {
        for batch in batches(entries, |e| e.0.len() + 41) {
            let answer = self.call(kind::REGISTER, &proto::encode_register(batch))?;
            if answer.kind != kind::OK {
                return Err(protocol("unexpected answer to a register request"));
            }
        }
        Ok(())
    }

    /// Submits one request for the port and returns the host's response body.
    pub fn submit(&mut self, body: &[u8]) -> io::Result<Vec<u8>> {
        let answer = self.call(kind::SUBMIT, body)?;
        response_body(answer)
    }

    /// Submits every request of `bodies` in order, with at most `window` outstanding, and
    /// returns the responses in the same order. Stops at the first error.
    pub fn submit_all(
        &mut self,
        bodies: impl IntoIterator<Item = io::Result<Vec<u8>>>,
        window: usize,
    ) -> io::Result<Vec<Vec<u8>>> {
        let mut pending: BTreeMap<u32, usize> = BTreeMap::new();
        let mut responses: Vec<Option<Vec<u8>>> = Vec::new();
        let mut bodies = bodies.into_iter();
        let mut exhausted = false;
        loop {
            while !exhausted && pending.len() < window.max(1) {
                match bodies.next() {
                    Some(body) => {
                        let id = self.send(kind::SUBMIT, &body?)?;
                        pending.insert(id, responses.len());
                        responses.push(None);
                    }
                    None => exhausted = true,
                }
            }
            if pending.is_empty() {
                break;
            }
            let answer = self.recv()?;
            let index = pending
                .remove(&answer.id)
                .ok_or_else(|| protocol("an answer for no outstanding request"))?;
            responses[index] = Some(response_body(answer)?);
        }
        Ok(responses.into_iter().flatten().collect())
    }
}

/// Splits `items` into batches of at most 4096 items and about [`BATCH_BYTES`] encoded.
fn batches<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        if i > start && (i - start == 4096 || bytes + size(item) > BATCH_BYTES) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size(item);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

fn response_body(answer: Message) -> io::Result<Vec<u8>> {
    match answer.kind {
        kind::RESPONSE => Ok(answer.body),
        kind::ERROR => Err(io::Error::other(format!(
            "the multiplexer could not send the request: {}",
            String::from_utf8_lossy(&answer.body)
        ))),
        _ => Err(protocol("unexpected answer to a submission")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_bound_count_and_bytes() {
        let small: Vec<String> = (0..10_000).map(|i| format!("/p/{i}")).collect();
        let b = batches(&small, |p| p.len() + 1);
        assert_eq!(
            b.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        let long: Vec<String> = (0..1000).map(|_| "x".repeat(4000)).collect();
        let b = batches(&long, |p| p.len() + 1);
        assert!(b.iter().all(|b| b.len() * 4001 <= BATCH_BYTES));
        assert_eq!(b.iter().map(|b| b.len()).sum::<usize>(), 1000);
        assert!(batches(&Vec::<String>::new(), |p| p.len()).is_empty());
        let huge = vec!["y".repeat(2 << 20)];
        assert_eq!(
            batches(&huge, |p| p.len()).len(),
            1,
            "one oversized item alone"
        );
    }
}
