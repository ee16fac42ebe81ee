//! CARv1 archives (content-addressed archives), the format of `ipfs dag import`/`export`.
//!
//! Layout: a varint-length-prefixed dag-cbor header `{"roots": [CID...], "version": 1}`, then
//! sections, each a varint length followed by the binary CID and the block bytes. The header
//! is the only CBOR involved and it is tiny, so it is written and read by hand here rather
//! than through a CBOR library: the writer emits the canonical form (map keys sorted by
//! length, so `roots` before `version`; shortest integer heads), the reader accepts any
//! definite-length encoding of the same map.
//!
//! Only CIDs [`crate::cid`] can name (CIDv1, raw or dag-pb, sha2-256) are supported: those are
//! the only blocks a mirror blob's DAG holds. The reader rehashes every block, because a CAR
//! is as untrusted as whoever handed it over.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use crate::cid::{self, Block, Cid};

/// Largest header the reader accepts; a real one is 11 bytes plus 40 per root.
const MAX_HEADER: u64 = 16 * 1024 * 1024;
/// Largest section the reader accepts: IPFS blocks are at most 1 MiB, plus the CID.
const MAX_SECTION: u64 = 4 * 1024 * 1024;
/// CBOR tag of an IPLD link (a CID as bytes with a 0x00 multibase prefix).
const CID_TAG: u64 = 42;
/// Nesting allowed inside unknown header fields that the reader skips.
const MAX_DEPTH: usize = 16;

/// Errors of writing or reading a CARv1 archive.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// reading or writing the CAR failed
    #[error("reading or writing the CAR failed")]
    Io(#[from] io::Error),
    /// a CAR must name at least one root
    #[error("a CAR must name at least one root")]
    NoRoots,
    /// the CAR ends in the middle of {0}
    #[error("the CAR ends in the middle of {0}")]
    Truncated(&'static str),
    /// a varint in the CAR does not fit in 64 bits
    #[error("a varint in the CAR does not fit in 64 bits")]
    Varint,
    /// the CAR header is not a dag-cbor map {{roots, version}}: {0}
    #[error("the CAR header is not a dag-cbor map {{roots, version}}: {0}")]
    Header(String),
    /// CAR version {0} is not supported (only CARv1)
    #[error("CAR version {0} is not supported (only CARv1)")]
    Version(u64),
    /// the CAR holds a {what} of {len} bytes, more than the {limit} allowed
    #[error("the CAR holds a {what} of {len} bytes, more than the {limit} allowed")]
    TooLarge {
        /// What was being read (header, block, ...).
        what: &'static str,
        /// The length claimed.
        len: u64,
        /// The cap, in bytes.
        limit: u64,
    },
    /// a section of the CAR names a CID that is not a CIDv1 of a raw or dag-pb block hashed with sha2-256
    #[error("a section of the CAR names a CID that is not a CIDv1 of a raw or dag-pb block hashed with sha2-256")]
    UnsupportedCid,
    /// block {0} in the CAR does not hash to its CID
    #[error("block {0} in the CAR does not hash to its CID")]
    BlockMismatch(Cid),
    /// reading a file to archive it failed
    #[error("reading a file to archive it failed")]
    Source(#[source] io::Error),
}

/// Writes a CARv1: header first, then blocks; a block already written is skipped, so DAGs that
/// share blocks (two blobs with a common chunk) are stored once.
pub struct CarWriter<W: Write> {
    out: W,
    written: BTreeSet<Cid>,
    section: Vec<u8>,
}

impl<W: Write> CarWriter<W> {
    /// Starts a CAR naming `roots` (in the order given) and writes its header.
    pub fn new(mut out: W, roots: &[Cid]) -> Result<CarWriter<W>, CarError> {
        if roots.is_empty() {
            return Err(CarError::NoRoots);
        }
        let header = encode_header(roots);
        let mut prefix = Vec::with_capacity(10);
        put_varint(&mut prefix, header.len() as u64);
        out.write_all(&prefix)?;
        out.write_all(&header)?;
        Ok(CarWriter {
            out,
            written: BTreeSet::new(),
            section: Vec::new(),
        })
    }

    /// Appends one block; returns `false` (writing nothing) if that CID is already in the CAR.
    pub fn write_block(&mut self, cid: &Cid, bytes: &[u8]) -> Result<bool, CarError> {
        if !self.written.insert(*cid) {
            return Ok(false);
        }
        let cid_bytes = cid.to_bytes();
        self.section.clear();
        put_varint(&mut self.section, (cid_bytes.len() + bytes.len()) as u64);
        self.section.extend_from_slice(&cid_bytes);
        self.out.write_all(&self.section)?;
        self.out.write_all(bytes)?;
        Ok(true)
    }

    /// Appends every block of the UnixFS DAG of the file `reader` yields (as `ipfs add
    /// --cid-version=1 --raw-leaves` builds it, children before parents) and returns its root.
    pub fn write_file(&mut self, reader: impl Read) -> Result<Cid, CarError> {
        cid::for_each_block(reader, |block: Block<'_>| {
            self.write_block(&block.cid, block.bytes).map(drop)
        })
        .map_err(|err| match err {
            cid::ReadError::Io(err) => CarError::Source(err),
            cid::ReadError::Sink(err) => err,
        })
    }

    /// How many distinct blocks were written.
    pub fn block_count(&self) -> usize {
        self.written.len()
    }

    /// Flushes and hands back the output.
    pub fn finish(mut self) -> Result<W, CarError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a CARv1: the header at construction, then one verified block per call.
pub struct CarReader<R: Read> {
    input: R,
    roots: Vec<Cid>,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<CarReader<R>, CarError> {
        let len = read_varint(&mut input)?.ok_or(CarError::Truncated("the header"))?;
        if len > MAX_HEADER {
            return Err(CarError::TooLarge {
                what: "header",
                len,
                limit: MAX_HEADER,
            });
        }
        let header = read_exact_vec(&mut input, len, "the header")?;
        let roots = decode_header(&header)?;
        Ok(CarReader { input, roots })
    }

    /// The roots the header names, in its order.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next block, checked against its CID; `None` at the end of the archive.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let Some(len) = read_varint(&mut self.input)? else {
            return Ok(None);
        };
        if len > MAX_SECTION {
            return Err(CarError::TooLarge {
                what: "section",
                len,
                limit: MAX_SECTION,
            });
        }
        let mut section = read_exact_vec(&mut self.input, len, "a section")?;
        // Every supported CID is 36 bytes: version 1, a one-byte codec, sha2-256 multihash.
        let cid = section
            .get(..36)
            .and_then(Cid::from_bytes)
            .ok_or(CarError::UnsupportedCid)?;
        let block = section.split_off(36);
        if Cid::hash_block(cid.codec(), &block) != cid {
            return Err(CarError::BlockMismatch(cid));
        }
        Ok(Some((cid, block)))
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<(Cid, Vec<u8>), CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 41 * roots.len());
    put_cbor_head(&mut out, 5, 2);
    put_cbor_text(&mut out, "roots");
    put_cbor_head(&mut out, 4, roots.len() as u64);
    for root in roots {
        let bytes = root.to_bytes();
        put_cbor_head(&mut out, 6, CID_TAG);
        put_cbor_head(&mut out, 2, bytes.len() as u64 + 1);
        out.push(0x00);
        out.extend_from_slice(&bytes);
    }
    put_cbor_text(&mut out, "version");
    put_cbor_head(&mut out, 0, 1);
    out
}

fn decode_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    let mut cbor = Cbor { bytes, pos: 0 };
    let (major, entries) = cbor.head()?;
    if major != 5 {
        return Err(header_error("it is not a map"));
    }
    let mut roots = None;
    let mut version = None;
    for _ in 0..entries {
        let key = cbor.text()?;
        match key {
            "roots" => roots = Some(cbor.roots()?),
            "version" => match cbor.head()? {
                (0, v) => version = Some(v),
                _ => return Err(header_error("`version` is not an unsigned integer")),
            },
            // CARv1 allows other fields; they say nothing about the blocks.
            _ => cbor.skip(0)?,
        }
    }
    if cbor.pos != bytes.len() {
        return Err(header_error("bytes follow the map"));
    }
    match version {
        Some(1) => {}
        Some(v) => return Err(CarError::Version(v)),
        None => return Err(header_error("`version` is missing")),
    }
    let roots = roots.ok_or_else(|| header_error("`roots` is missing"))?;
    if roots.is_empty() {
        return Err(CarError::NoRoots);
    }
    Ok(roots)
}

fn header_error(detail: &str) -> CarError {
    CarError::Header(detail.to_owned())
}

/// A cursor over the definite-length CBOR subset a CAR header uses.
struct Cbor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cbor<'a> {
    fn byte(&mut self) -> Result<u8, CarError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| header_error("it ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], CarError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| header_error("it ends early"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// Major type and argument of the next item.
    fn head(&mut self) -> Result<(u8, u64), CarError> {
        let initial = self.byte()?;
        let major = initial >> 5;
        let arg = match initial & 0x1f {
            n @ 0..=23 => u64::from(n),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().unwrap_or_default(),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()),
            _ => {
                return Err(header_error(
                    "it uses indefinite lengths or reserved values",
                ))
            }
        };
        Ok((major, arg))
    }

    fn text(&mut self) -> Result<&'a str, CarError> {
        match self.head()? {
            (3, len) => {
                std::str::from_utf8(self.take(len)?).map_err(|_| header_error("a key is not UTF-8"))
            }
            _ => Err(header_error("a key is not a text string")),
        }
    }

    fn roots(&mut self) -> Result<Vec<Cid>, CarError> {
        let (major, count) = self.head()?;
        if major != 4 {
            return Err(header_error("`roots` is not an array"));
        }
        let mut roots = Vec::new();
        for _ in 0..count {
            if self.head()? != (6, CID_TAG) {
                return Err(header_error("a root is not a CID (tag 42)"));
            }
            let bytes = match self.head()? {
                (2, len) => self.take(len)?,
                _ => return Err(header_error("a root is not a byte string")),
            };
            let cid = match bytes {
                [0x00, cid @ ..] => Cid::from_bytes(cid).ok_or(CarError::UnsupportedCid)?,
                _ => return Err(header_error("a root lacks the 0x00 multibase prefix")),
            };
            roots.push(cid);
        }
        Ok(roots)
    }

    /// Skips one item of any type.
    fn skip(&mut self, depth: usize) -> Result<(), CarError> {
        if depth > MAX_DEPTH {
            return Err(header_error("it nests too deeply"));
        }
        let (major, arg) = self.head()?;
        match major {
            0 | 1 | 7 => {}
            2 | 3 => {
                self.take(arg)?;
            }
            4 => {
                for _ in 0..arg {
                    self.skip(depth + 1)?;
                }
            }
            5 => {
                for _ in 0..arg.saturating_mul(2) {
                    self.skip(depth + 1)?;
                }
            }
            _ => self.skip(depth + 1)?,
        }
        Ok(())
    }
}

fn put_cbor_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    match arg {
        0..=23 => out.push(major | arg as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn put_cbor_text(out: &mut Vec<u8>, text: &str) {
    put_cbor_head(out, 3, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An unsigned LEB128 varint; `None` on a clean end of input before its first byte.
fn read_varint(input: &mut impl Read) -> Result<Option<u64>, CarError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8];
        if let Err(err) = input.read_exact(&mut byte) {
            return match err.kind() {
                io::ErrorKind::UnexpectedEof if i == 0 => Ok(None),
                io::ErrorKind::UnexpectedEof => Err(CarError::Truncated("a length")),
                _ => Err(CarError::Io(err)),
            };
        }
        let bits = u64::from(byte[0] & 0x7f);
        if i == 9 && bits > 1 {
            return Err(CarError::Varint);
        }
        value |= bits << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(CarError::Varint)
}

fn read_exact_vec(
    input: &mut impl Read,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, CarError> {
    let mut buf = Vec::new();
    input.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(CarError::Truncated(what));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{cid_of_bytes, Codec};

    /// docs/design.md's test pattern: it repeats every 256 bytes, so all full chunks are equal.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(7) + 3) as u8).collect()
    }

    /// Bytes that do not repeat at any chunk boundary, so every chunk is its own leaf.
    fn varied(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn hello() -> Cid {
        cid_of_bytes(b"hello cmbuild\n")
    }

    #[test]
    fn header_is_canonical_dag_cbor() {
        let mut car = Vec::new();
        CarWriter::new(&mut car, &[hello()])
            .unwrap()
            .finish()
            .unwrap();
        // 0x3a = 58 header bytes: map(2) "roots" [tag42 bytes(37) 00 cid] "version" 1
        let mut expected = vec![0x3a, 0xa2, 0x65];
        expected.extend_from_slice(b"roots");
        expected.extend_from_slice(&[0x81, 0xd8, 0x2a, 0x58, 0x25, 0x00]);
        expected.extend_from_slice(&hello().to_bytes());
        expected.push(0x67);
        expected.extend_from_slice(b"version");
        expected.push(0x01);
        assert_eq!(car, expected);
    }

    #[test]
    fn write_then_read_round_trips_a_multi_block_file() {
        let data = varied(3 * cid::CHUNK_SIZE + 17);
        let root = cid_of_bytes(&data);
        let mut writer = CarWriter::new(Vec::new(), &[root]).unwrap();
        assert_eq!(writer.write_file(&data[..]).unwrap(), root);
        // Four leaves and one dag-pb root.
        assert_eq!(writer.block_count(), 5);
        let car = writer.finish().unwrap();

        let mut reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.roots(), &[root]);
        let blocks: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(blocks.len(), 5);
        let leaves: Vec<u8> = blocks
            .iter()
            .filter(|(cid, _)| cid.codec() == Codec::Raw)
            .flat_map(|(_, bytes)| bytes.iter().copied())
            .collect();
        assert_eq!(leaves, data);
        assert_eq!(blocks.last().unwrap().0, root);
    }

    #[test]
    fn shared_blocks_are_written_once() {
        let chunk = pattern(cid::CHUNK_SIZE);
        // Two identical chunks: the leaf appears twice in the DAG but once in the CAR.
        let data = [chunk.clone(), chunk].concat();
        let mut writer = CarWriter::new(Vec::new(), &[cid_of_bytes(&data)]).unwrap();
        writer.write_file(&data[..]).unwrap();
        assert_eq!(writer.block_count(), 2);
        assert!(!writer
            .write_block(&cid_of_bytes(&data[..cid::CHUNK_SIZE]), b"ignored")
            .unwrap());
    }

    #[test]
    fn reader_accepts_non_canonical_headers_with_extra_fields() {
        // version first, a 2-byte length head for "roots", and an unknown field.
        let mut header = vec![0xa3, 0x67];
        header.extend_from_slice(b"version");
        header.push(0x01);
        header.extend_from_slice(&[0x65]);
        header.extend_from_slice(b"extra");
        header.extend_from_slice(&[0x82, 0x01, 0x61, b'x']);
        header.extend_from_slice(&[0x79, 0x00, 0x05]);
        header.extend_from_slice(b"roots");
        header.extend_from_slice(&[0x81, 0xd8, 0x2a, 0x58, 0x25, 0x00]);
        header.extend_from_slice(&hello().to_bytes());
        let mut car = vec![header.len() as u8];
        car.extend_from_slice(&header);
        let reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.roots(), &[hello()]);
    }

    #[test]
    fn reader_refuses_a_tampered_block() {
        let mut writer = CarWriter::new(Vec::new(), &[hello()]).unwrap();
        writer.write_block(&hello(), b"hello cmbuild\n").unwrap();
        let mut car = writer.finish().unwrap();
        let last = car.len() - 1;
        car[last] ^= 1;
        let mut reader = CarReader::new(&car[..]).unwrap();
        assert!(matches!(reader.next_block(), Err(CarError::BlockMismatch(c)) if c == hello()));
    }

    #[test]
    fn reader_reports_truncation() {
        let mut writer = CarWriter::new(Vec::new(), &[hello()]).unwrap();
        writer.write_block(&hello(), b"hello cmbuild\n").unwrap();
        let car = writer.finish().unwrap();
        let mut reader = CarReader::new(&car[..car.len() - 3]).unwrap();
        assert!(matches!(
            reader.next_block(),
            Err(CarError::Truncated("a section"))
        ));
        assert!(matches!(
            CarReader::new(&car[..20]),
            Err(CarError::Truncated("the header"))
        ));
    }

    #[test]
    fn reader_refuses_other_versions_and_empty_roots() {
        let mut header = vec![0xa2, 0x65];
        header.extend_from_slice(b"roots");
        header.push(0x80);
        header.push(0x67);
        header.extend_from_slice(b"version");
        header.push(0x01);
        let mut car = vec![header.len() as u8];
        car.extend_from_slice(&header);
        assert!(matches!(CarReader::new(&car[..]), Err(CarError::NoRoots)));
        *car.last_mut().unwrap() = 0x02;
        assert!(matches!(
            CarReader::new(&car[..]),
            Err(CarError::Version(2))
        ));
        assert!(matches!(
            CarWriter::new(Vec::new(), &[]),
            Err(CarError::NoRoots)
        ));
    }

    #[test]
    fn varints_round_trip_and_overflow_is_refused() {
        for value in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(read_varint(&mut &buf[..]).unwrap(), Some(value));
        }
        let too_long = [0xffu8; 10];
        assert!(matches!(
            read_varint(&mut &too_long[..]),
            Err(CarError::Varint)
        ));
        assert_eq!(read_varint(&mut &[][..]).unwrap(), None);
    }
}
