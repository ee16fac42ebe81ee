//! IPFS content IDs, computed exactly like `ipfs add --cid-version=1 --raw-leaves`.
//!
//! The file is cut into 262144-byte chunks; each chunk is a raw leaf (codec 0x55). A file of
//! at most one chunk (the empty file included) is named by its single leaf. Larger files get a
//! balanced tree of dag-pb UnixFS `File` nodes with at most 174 links each. Every node is
//! encoded links first (PBLink: hash, empty name, cumulative size), then the UnixFS data
//! (type File, filesize, one blocksize per child). All hashes are sha2-256; CIDs print in
//! base32 (multibase prefix `b`).
//!
//! [`DagBuilder`] is the streaming core: it accepts bytes in any slicing, keeps at most one
//! partial chunk plus one partial node per tree level (constant memory), and hands every
//! block it makes to a sink, which is how CAR export and IPFS upload get the blocks.

use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Size of a leaf chunk (`--chunker=size-262144`).
pub const CHUNK_SIZE: usize = 262_144;
/// Most links in one internal node of the balanced layout.
pub const MAX_LINKS: usize = 174;

const SHA2_256: u8 = 0x12;
const DIGEST_LEN: u8 = 32;
/// Reads are this large so that syscalls cost nothing next to hashing.
const READ_BUFFER: usize = 16 * CHUNK_SIZE;

/// Errors of parsing a CID string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidError {
    /// CID `{0}` is not base32 CIDv1 text (expected a `b` multibase prefix and lowercase base32)
    #[error(
        "CID `{0}` is not base32 CIDv1 text (expected a `b` multibase prefix and lowercase base32)"
    )]
    NotBase32(String),
    /// CID `{0}` is not a CIDv1 of a raw or dag-pb block hashed with sha2-256
    #[error("CID `{0}` is not a CIDv1 of a raw or dag-pb block hashed with sha2-256")]
    Unsupported(String),
}

/// The two block codecs a file's DAG uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// A leaf: the block is a slice of the file (multicodec 0x55).
    Raw,
    /// An internal UnixFS node (multicodec 0x70).
    DagPb,
}

impl Codec {
    fn code(self) -> u8 {
        match self {
            Codec::Raw => 0x55,
            Codec::DagPb => 0x70,
        }
    }
}

/// A CIDv1 with a sha2-256 multihash; `Display` gives the base32 string IPFS prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid {
    codec: Codec,
    digest: [u8; 32],
}

impl Cid {
    /// The CID of a block with this codec and sha2-256 digest.
    pub fn new(codec: Codec, digest: [u8; 32]) -> Cid {
        Cid { codec, digest }
    }

    /// The CID of `block` stored as a block of `codec`.
    pub fn hash_block(codec: Codec, block: &[u8]) -> Cid {
        Cid::new(codec, Sha256::digest(block).into())
    }

    /// The codec of the block it names.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The sha2-256 digest of the block (for a raw leaf: of the file itself).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Binary form: version 1, codec, multihash (36 bytes); what dag-pb links and CAR files hold.
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[0] = 0x01;
        out[1] = self.codec.code();
        out[2] = SHA2_256;
        out[3] = DIGEST_LEN;
        out[4..].copy_from_slice(&self.digest);
        out
    }

    /// Reads the binary form written by [`Cid::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Cid> {
        let [1, codec, SHA2_256, DIGEST_LEN, digest @ ..] = bytes else {
            return None;
        };
        let codec = match *codec {
            0x55 => Codec::Raw,
            0x70 => Codec::DagPb,
            _ => return None,
        };
        Some(Cid::new(codec, digest.try_into().ok()?))
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b")?;
        f.write_str(&encode_base32(&self.to_bytes()))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(s: &str) -> Result<Cid, CidError> {
        let bytes = s
            .strip_prefix('b')
            .and_then(decode_base32)
            .ok_or_else(|| CidError::NotBase32(s.to_owned()))?;
        Cid::from_bytes(&bytes).ok_or_else(|| CidError::Unsupported(s.to_owned()))
    }
}

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cid, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lowercase, no padding (multibase `b`).
fn encode_base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let value = BASE32_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding, or the text was not produced by an encoder.
    (acc & ((1 << bits) - 1) == 0).then_some(out)
}

/// One block of a file's DAG, as handed to a [`DagBuilder`] sink.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    /// Content ID.
    pub cid: Cid,
    /// The block's bytes: the chunk itself for a raw leaf, the dag-pb encoding for a node.
    pub bytes: &'a [u8],
}

/// A link held by a node under construction.
#[derive(Debug, Clone, Copy)]
struct Link {
    cid: Cid,
    /// Cumulative size: this block plus everything below it (PBLink `Tsize`).
    tsize: u64,
    /// File bytes under this link (UnixFS `blocksizes`).
    filesize: u64,
}

/// Streaming builder of a file's DAG: feed bytes with [`DagBuilder::update`], get the root
/// from [`DagBuilder::finish`]. Every block (leaves and internal nodes, children before their
/// parent, the root last) goes to the sink as it is made; a sink error stops the build.
pub struct DagBuilder<F> {
    sink: F,
    /// A chunk that is not complete yet (capacity [`CHUNK_SIZE`] once used).
    pending: Vec<u8>,
    /// `levels[0]` holds leaf links of the lowest unfinished node, `levels[1]` links to
    /// depth-1 nodes, and so on; none ever holds more than [`MAX_LINKS`].
    levels: Vec<Vec<Link>>,
    leaves: u64,
    total: u64,
    /// Reused encoding buffer for internal nodes.
    node: Vec<u8>,
}

/// A [`DagBuilder`] that only computes the root CID.
pub type CidHasher = DagBuilder<fn(Block<'_>) -> Result<(), Infallible>>;

impl CidHasher {
    /// A builder that only computes the root CID.
    pub fn hasher() -> Self {
        fn discard(_: Block<'_>) -> Result<(), Infallible> {
            Ok(())
        }
        DagBuilder::with_sink(discard as fn(Block<'_>) -> Result<(), Infallible>)
    }
}

impl<F, E> DagBuilder<F>
where
    F: FnMut(Block<'_>) -> Result<(), E>,
{
    /// A builder handing every block to `sink`.
    pub fn with_sink(sink: F) -> Self {
        DagBuilder {
            sink,
            pending: Vec::new(),
            levels: Vec::new(),
            leaves: 0,
            total: 0,
            node: Vec::new(),
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether no byte was fed yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Feeds the next bytes of the file. Whole chunks are hashed straight from `data`.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), E> {
        self.total += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (CHUNK_SIZE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < CHUNK_SIZE {
                return Ok(());
            }
            let chunk = std::mem::take(&mut self.pending);
            let result = self.add_leaf(&chunk);
            self.pending = chunk;
            self.pending.clear();
            result?;
        }
        let mut chunks = data.chunks_exact(CHUNK_SIZE);
        for chunk in &mut chunks {
            self.add_leaf(chunk)?;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(CHUNK_SIZE);
            }
            self.pending.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Feeds everything `reader` yields, in large reads.
    pub fn update_from_reader(&mut self, mut reader: impl Read) -> Result<(), ReadError<E>> {
        let mut buffer = vec![0u8; READ_BUFFER];
        loop {
            // Fill the buffer completely when possible, so that chunks are hashed in place.
            let mut filled = 0;
            while filled < buffer.len() {
                match reader.read(&mut buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(ReadError::Io(err)),
                }
            }
            self.update(&buffer[..filled]).map_err(ReadError::Sink)?;
            if filled < buffer.len() {
                return Ok(());
            }
        }
    }

    /// Ends the file: emits the last leaf and the nodes still open, returns the root.
    pub fn finish(mut self) -> Result<Cid, E> {
        if !self.pending.is_empty() || self.leaves == 0 {
            let chunk = std::mem::take(&mut self.pending);
            self.add_leaf(&chunk)?;
        }
        // Close the partial nodes bottom-up; the first level that ends up holding the only
        // link left is the root (a single leaf, or a node that filled up exactly).
        let mut level = 0;
        loop {
            let is_top = self.levels[level + 1..].iter().all(Vec::is_empty);
            let count = self.levels[level].len();
            if is_top && count == 1 {
                return Ok(self.levels[level][0].cid);
            }
            if count > 0 {
                self.close_node(level)?;
            }
            level += 1;
        }
    }

    fn add_leaf(&mut self, chunk: &[u8]) -> Result<(), E> {
        self.add_hashed_leaf(Cid::hash_block(Codec::Raw, chunk), chunk)
    }

    /// [`DagBuilder::add_leaf`] of a chunk whose CID the caller computed.
    fn add_hashed_leaf(&mut self, cid: Cid, chunk: &[u8]) -> Result<(), E> {
        (self.sink)(Block { cid, bytes: chunk })?;
        self.leaves += 1;
        let len = chunk.len() as u64;
        self.push_link(
            0,
            Link {
                cid,
                tsize: len,
                filesize: len,
            },
        )
    }

    fn push_link(&mut self, level: usize, link: Link) -> Result<(), E> {
        if self.levels.len() <= level + 1 {
            // One spare level above, so that `finish` can always look one level up.
            self.levels.resize_with(level + 2, Vec::new);
        }
        self.levels[level].push(link);
        if self.levels[level].len() == MAX_LINKS {
            self.close_node(level)?;
        }
        Ok(())
    }

    /// Encodes the node made of `levels[level]`, emits it and links it one level up.
    fn close_node(&mut self, level: usize) -> Result<(), E> {
        let links = std::mem::take(&mut self.levels[level]);
        encode_file_node(&links, &mut self.node);
        let cid = Cid::hash_block(Codec::DagPb, &self.node);
        (self.sink)(Block {
            cid,
            bytes: &self.node,
        })?;
        let link = Link {
            cid,
            tsize: self.node.len() as u64 + links.iter().map(|l| l.tsize).sum::<u64>(),
            filesize: links.iter().map(|l| l.filesize).sum(),
        };
        // Give the allocation back so that a level never reallocates.
        let mut links = links;
        links.clear();
        self.levels[level] = links;
        self.push_link(level + 1, link)
    }
}

/// Failure of [`DagBuilder::update_from_reader`]: the reader or the sink.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// reading the file failed
    #[error("reading the file failed")]
    Io(#[source] io::Error),
    /// the block sink failed
    #[error("the block sink failed")]
    Sink(#[source] E),
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// dag-pb node with one PBLink per child, then PBNode.Data holding a UnixFS File message.
fn encode_file_node(links: &[Link], out: &mut Vec<u8>) {
    out.clear();
    for link in links {
        let cid = link.cid.to_bytes();
        // PBLink { Hash = 1: cid, Name = 2: "", Tsize = 3: varint }
        let body = 2 + cid.len() + 2 + 1 + varint_len(link.tsize);
        out.push(0x12);
        put_varint(out, body as u64);
        out.push(0x0a);
        put_varint(out, cid.len() as u64);
        out.extend_from_slice(&cid);
        out.extend_from_slice(&[0x12, 0x00]);
        out.push(0x18);
        put_varint(out, link.tsize);
    }
    // UnixFS Data { Type = 1: File (2), filesize = 3, blocksizes = 4 (repeated, unpacked) }
    let filesize: u64 = links.iter().map(|l| l.filesize).sum();
    let unixfs_len = 2
        + 1
        + varint_len(filesize)
        + links
            .iter()
            .map(|l| 1 + varint_len(l.filesize))
            .sum::<usize>();
    out.push(0x0a);
    put_varint(out, unixfs_len as u64);
    out.extend_from_slice(&[0x08, 0x02]);
    out.push(0x18);
    put_varint(out, filesize);
    for link in links {
        out.push(0x20);
        put_varint(out, link.filesize);
    }
}

/// The CID of a byte string held in memory.
pub fn cid_of_bytes(data: &[u8]) -> Cid {
    let mut builder = DagBuilder::hasher();
    let Ok(()) = builder.update(data);
    let Ok(cid) = builder.finish();
    cid
}

/// [`cid_of_bytes`] with the chunks hashed on up to `threads` threads (the same CID: only the
/// leaves' hashing is split; the DAG is built in order from their CIDs).
pub fn cid_of_bytes_parallel(data: &[u8], threads: usize) -> Cid {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK_SIZE).collect();
    if threads <= 1 || chunks.len() < 2 * threads {
        return cid_of_bytes(data);
    }
    let mut cids = vec![Cid::new(Codec::Raw, [0; 32]); chunks.len()];
    let per_thread = chunks.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (cids, chunks) in cids.chunks_mut(per_thread).zip(chunks.chunks(per_thread)) {
            scope.spawn(move || {
                for (cid, chunk) in cids.iter_mut().zip(chunks) {
                    *cid = Cid::hash_block(Codec::Raw, chunk);
                }
            });
        }
    });
    let mut builder = DagBuilder::hasher();
    builder.total = data.len() as u64;
    for (cid, chunk) in cids.into_iter().zip(chunks) {
        let Ok(()) = builder.add_hashed_leaf(cid, chunk);
    }
    let Ok(cid) = builder.finish();
    cid
}

/// The CID of everything `reader` yields, and its length.
pub fn cid_of_reader(reader: impl Read) -> io::Result<(Cid, u64)> {
    let mut builder = DagBuilder::hasher();
    builder
        .update_from_reader(reader)
        .map_err(|err| match err {
            ReadError::Io(err) => err,
            ReadError::Sink(never) => match never {},
        })?;
    let len = builder.len();
    let Ok(cid) = builder.finish();
    Ok((cid, len))
}

/// The CID of a file on disk.
pub fn cid_of_file(path: &Path) -> io::Result<Cid> {
    Ok(cid_of_reader(File::open(path)?)?.0)
}

/// Walks the DAG of everything `reader` yields, handing each block to `sink` (children
/// before parents, the root last), and returns the root CID.
pub fn for_each_block<E>(
    reader: impl Read,
    sink: impl FnMut(Block<'_>) -> Result<(), E>,
) -> Result<Cid, ReadError<E>> {
    let mut builder = DagBuilder::with_sink(sink);
    builder.update_from_reader(reader)?;
    builder.finish().map_err(ReadError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The docs/design.md test pattern: byte i is `(i*7+3) & 0xff`.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(7) + 3) as u8).collect()
    }

    #[test]
    fn public_vectors_match() {
        assert_eq!(
            cid_of_bytes(b"hello cmbuild\n").to_string(),
            "bafkreif6ekkwbc3cq345vbpe5nekixuqqkiayv6qewdrwussmu63x3q4hm"
        );
        assert_eq!(
            cid_of_bytes(b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            cid_of_bytes(&pattern(262_144)).to_string(),
            "bafkreih4mbpgbbmrcjifkrtxbk4fbp57ajbuqqkawqwr62xjkvv3vj3yjy"
        );
        assert_eq!(
            cid_of_bytes(&pattern(262_145)).to_string(),
            "bafybeidwin3m5xskbuqroa6hesb2krs2xmmdekolinwokjj2hmdmst5ozu"
        );
    }

    #[test]
    fn hashing_chunks_on_threads_gives_the_same_cid() {
        // Across one full node of 174 leaves and into the next level.
        let data = pattern(MAX_LINKS * CHUNK_SIZE + 3 * CHUNK_SIZE + 5);
        for len in [
            0,
            1,
            CHUNK_SIZE,
            4 * CHUNK_SIZE,
            5 * CHUNK_SIZE + 17,
            MAX_LINKS * CHUNK_SIZE,
            data.len(),
        ] {
            let whole = cid_of_bytes(&data[..len]);
            for threads in [1, 2, 3, 8] {
                assert_eq!(
                    cid_of_bytes_parallel(&data[..len], threads),
                    whole,
                    "{len} bytes on {threads} threads"
                );
            }
        }
    }

    #[test]
    fn slicing_of_input_does_not_change_the_cid() {
        let data = pattern(3 * CHUNK_SIZE + 12345);
        let whole = cid_of_bytes(&data);
        for step in [1usize, 7, 4096, CHUNK_SIZE - 1, CHUNK_SIZE + 1] {
            let mut builder = DagBuilder::hasher();
            for piece in data.chunks(step.max(1)) {
                let Ok(()) = builder.update(piece);
            }
            let Ok(cid) = builder.finish();
            assert_eq!(cid, whole, "step {step}");
        }
        let (from_reader, len) = cid_of_reader(&data[..]).unwrap();
        assert_eq!((from_reader, len), (whole, data.len() as u64));
    }

    #[test]
    fn cid_text_round_trips_and_rejects_garbage() {
        let cid = cid_of_bytes(&pattern(262_145));
        assert_eq!(cid.to_string().parse::<Cid>(), Ok(cid));
        assert_eq!(cid.codec(), Codec::DagPb);
        assert!(matches!(
            "Qmfoo".parse::<Cid>(),
            Err(CidError::NotBase32(_))
        ));
        // Valid base32, but a CIDv1 with a different hash function (0x13 = sha2-512).
        let mut bytes = cid.to_bytes();
        bytes[2] = 0x13;
        let text = format!("b{}", encode_base32(&bytes));
        assert!(matches!(text.parse::<Cid>(), Err(CidError::Unsupported(_))));
        // serde uses the same text and the same validation.
        let json = serde_json::to_string(&cid).unwrap();
        assert_eq!(json, format!("\"{cid}\""));
        assert_eq!(serde_json::from_str::<Cid>(&json).unwrap(), cid);
        for junk in ["\"Qmfoo\"", "\"bafy\"", "17", &format!("\"{text}\"")] {
            assert!(serde_json::from_str::<Cid>(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn blocks_are_emitted_children_first_and_hash_to_their_cid() {
        let data = pattern(2 * CHUNK_SIZE + 5);
        let mut seen = Vec::new();
        let root = for_each_block(&data[..], |block| {
            assert_eq!(Cid::hash_block(block.cid.codec(), block.bytes), block.cid);
            seen.push((block.cid, block.bytes.len()));
            Ok::<(), Infallible>(())
        })
        .unwrap();
        let codecs: Vec<Codec> = seen.iter().map(|(cid, _)| cid.codec()).collect();
        assert_eq!(
            codecs,
            [Codec::Raw, Codec::Raw, Codec::Raw, Codec::DagPb],
            "three leaves, then the root"
        );
        assert_eq!(seen.last().unwrap().0, root);
        assert_eq!(seen[2].1, 5);
    }

    #[test]
    fn varint_len_matches_encoding() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
