//! A bounded reader of tar streams (`.crate` archives, the data member of a `.deb`).
//!
//! Archives come from the network and are not trusted, so every size a header claims is
//! checked against [`Limits`] before any buffer is sized by it: a regular file against
//! [`Limits::max_entry`] and what is left of [`Limits::max_total`] (all bytes read from the
//! decompressed stream), a GNU long name or long link against [`Limits::max_long_name`], a
//! PAX header against [`Limits::max_pax`]. Memory therefore stays below `max_total` plus
//! one header however the archive lies. Paths are returned as the raw bytes the archive
//! holds; callers validate them before they touch a path (see [`crate::crates`]).
//!
//! The format read is POSIX ustar and GNU tar as `tar` and `dpkg-deb` write them: the
//! ustar prefix, GNU `L`/`K` long names, and PAX `x` headers (`path`, `linkpath`, `size`);
//! PAX `g` global headers, sparse files and other exotic types are returned with their
//! type byte for the caller to refuse.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// Caps on what one archive may make the reader hold or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes read from the (decompressed) stream in all.
    pub max_total: u64,
    /// Largest regular file.
    pub max_entry: u64,
    /// Largest GNU long name or long link entry.
    pub max_long_name: u64,
    /// Largest PAX extended header.
    pub max_pax: u64,
}

impl Limits {
    /// Limits for `.crate` archives: cargo refuses to unpack more than 512 MiB too.
    pub const CRATE: Limits = Limits {
        max_total: 512 << 20,
        max_entry: 512 << 20,
        max_long_name: 4096,
        max_pax: 64 << 10,
    };
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// reading the archive failed
    #[error("reading the archive failed")]
    Io(#[from] io::Error),
    /// the archive ends in the middle of {0}
    #[error("the archive ends in the middle of {0}")]
    Truncated(&'static str),
    /// a header's checksum does not match its bytes
    #[error("a header's checksum does not match its bytes")]
    Checksum,
    /// a header's {0} field is not a number
    #[error("a header's {0} field is not a number")]
    Number(&'static str),
    /// a {what} of {size} bytes is larger than the {limit} bytes allowed
    #[error("a {what} of {size} bytes is larger than the {limit} bytes allowed")]
    TooLarge {
        /// What claimed the size (file, GNU long name, PAX header).
        what: &'static str,
        /// The size the header claims.
        size: u64,
        /// The cap it was checked against.
        limit: u64,
    },
    /// the archive is larger than the {0} bytes allowed
    #[error("the archive is larger than the {0} bytes allowed")]
    TotalTooLarge(u64),
    /// a PAX header is malformed
    #[error("a PAX header is malformed")]
    Pax,
}

/// One entry of the archive (extension headers already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The path as the archive spells it (GNU long name, PAX `path`, or ustar prefix and
    /// name), not validated.
    pub path: Vec<u8>,
    /// The link target of a symlink or hard link (same precedence), not validated.
    pub link: Vec<u8>,
    /// The type byte: `b'0'` or `0` regular file, `b'7'` contiguous file, `b'1'` hard link,
    /// `b'2'` symlink, `b'5'` directory, anything else is the caller's to refuse.
    pub kind: u8,
    /// The permission bits of the header's mode field.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// The bytes of a regular file (empty for every other kind).
    pub data: Vec<u8>,
}

impl TarEntry {
    /// Whether this is a regular (or contiguous) file.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, 0 | b'0' | b'7')
    }
}

/// Reads entries from a tar stream within [`Limits`].
pub struct TarReader<R> {
    inner: R,
    limits: Limits,
    consumed: u64,
    done: bool,
}

fn truncate(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

fn number(field: &[u8], name: &'static str) -> Result<u64, TarError> {
    if field[0] & 0x80 != 0 {
        // GNU base-256: the rest of the field, big-endian; only values that fit in u64.
        // (An 8-byte field holds 7 value bytes; a 12-byte one 11, of which 8 may be used.)
        let value = &field[1..];
        let (high, low) = value.split_at(value.len().saturating_sub(8));
        if field[0] != 0x80 || high.iter().any(|&b| b != 0) {
            return Err(TarError::Number(name));
        }
        return Ok(low.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    }
    let text = std::str::from_utf8(truncate(field)).map_err(|_| TarError::Number(name))?;
    let text = text.trim_matches(' ');
    if text.is_empty() {
        // Some writers leave fields they do not use empty.
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| TarError::Number(name))
}

/// The value of `key` in a PAX extended header, if present.
fn pax_value<'a>(mut data: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, TarError> {
    let mut found = None;
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or(TarError::Pax)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::Pax)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(TarError::Pax);
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TarError::Pax)?;
        if &record[..eq] == key {
            // The last record for a key wins.
            found = Some(&record[eq + 1..]);
        }
        data = &data[len..];
    }
    Ok(found)
}

fn strip_one_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

impl<R: Read> TarReader<R> {
    /// A reader of the tar stream `inner` (already decompressed) within `limits`.
    pub fn new(inner: R, limits: Limits) -> TarReader<R> {
        TarReader {
            inner,
            limits,
            consumed: 0,
            done: false,
        }
    }

    /// Bytes read from the stream so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of stream before any.
    fn read_block(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Truncated(what)),
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        self.count(buf.len() as u64)?;
        Ok(true)
    }

    fn count(&mut self, n: u64) -> Result<(), TarError> {
        self.consumed += n;
        if self.consumed > self.limits.max_total {
            return Err(TarError::TotalTooLarge(self.limits.max_total));
        }
        Ok(())
    }

    /// Checks `size` against `limit` and what is left of the total, before anything is
    /// allocated for it.
    fn check(&self, what: &'static str, size: u64, limit: u64) -> Result<(), TarError> {
        let left = self.limits.max_total.saturating_sub(self.consumed);
        if size > limit || size > left {
            return Err(TarError::TooLarge {
                what,
                size,
                limit: limit.min(left),
            });
        }
        Ok(())
    }

    /// Reads `size` bytes of entry data (then the padding to the next block).
    fn read_data(&mut self, size: u64, what: &'static str) -> Result<Vec<u8>, TarError> {
        // `size` was checked against the caps, so it fits in memory and in usize.
        let len = usize::try_from(size).map_err(|_| TarError::Number("size"))?;
        let mut data = vec![0u8; len];
        if len > 0 && !self.read_block(&mut data, what)? {
            return Err(TarError::Truncated(what));
        }
        self.skip_padding(size, what)?;
        Ok(data)
    }

    /// Skips `size` bytes of data nobody wants (and the padding), in small steps.
    fn skip_data(&mut self, size: u64, what: &'static str) -> Result<(), TarError> {
        self.check(what, size, u64::MAX)?;
        let mut left = size;
        let mut buf = [0u8; 8192];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if !self.read_block(&mut buf[..n], what)? {
                return Err(TarError::Truncated(what));
            }
            left -= n as u64;
        }
        self.skip_padding(size, what)
    }

    fn skip_padding(&mut self, size: u64, what: &'static str) -> Result<(), TarError> {
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        let mut buf = [0u8; BLOCK];
        if pad > 0 && !self.read_block(&mut buf[..pad], what)? {
            return Err(TarError::Truncated(what));
        }
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let mut header = [0u8; BLOCK];
            if !self.read_block(&mut header, "a header")? || header.iter().all(|&b| b == 0) {
                // A zero block (or the end of the stream) ends the archive.
                self.done = true;
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(TarError::Truncated("an extended header's entry"));
                }
                return Ok(None);
            }
            let sum: u64 = header[..148]
                .iter()
                .chain(&header[156..])
                .map(|&b| u64::from(b))
                .sum::<u64>()
                + 8 * 32;
            if number(&header[148..156], "checksum")? != sum {
                return Err(TarError::Checksum);
            }
            let kind = header[156];
            let mut size = number(&header[124..136], "size")?;
            match kind {
                b'L' | b'K' => {
                    self.check("GNU long name", size, self.limits.max_long_name)?;
                    let data = strip_one_nul(self.read_data(size, "a GNU long name")?);
                    if kind == b'L' {
                        long_name = Some(data);
                    } else {
                        long_link = Some(data);
                    }
                    continue;
                }
                b'x' => {
                    self.check("PAX header", size, self.limits.max_pax)?;
                    let data = self.read_data(size, "a PAX header")?;
                    pax_value(&data, b"")?;
                    pax = Some(data);
                    continue;
                }
                // A global PAX header is returned as an entry of its own (as the `tar`
                // crate does), for the caller to refuse; only its size is capped here.
                b'g' => self.check("PAX header", size, self.limits.max_pax)?,
                _ => {}
            }
            let pax_field = |key: &[u8]| -> Result<Option<Vec<u8>>, TarError> {
                match &pax {
                    Some(data) => Ok(pax_value(data, key)?.map(<[u8]>::to_vec)),
                    None => Ok(None),
                }
            };
            if let Some(text) = pax_field(b"size")? {
                size = std::str::from_utf8(&text)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(TarError::Pax)?;
            }
            let ustar = &header[257..263] == b"ustar\0" && &header[263..265] == b"00";
            let path = match long_name.take() {
                Some(name) => name,
                None => match pax_field(b"path")? {
                    Some(path) => path,
                    None => {
                        let name = truncate(&header[0..100]);
                        let prefix = truncate(&header[345..500]);
                        if ustar && !prefix.is_empty() {
                            [prefix, b"/", name].concat()
                        } else {
                            name.to_vec()
                        }
                    }
                },
            };
            let link = match long_link.take() {
                Some(link) => link,
                None => match pax_field(b"linkpath")? {
                    Some(link) => link,
                    None => truncate(&header[157..257]).to_vec(),
                },
            };
            let mode = (number(&header[100..108], "mode")? & 0o7777) as u32;
            let mtime = number(&header[136..148], "mtime")?;
            let mut entry = TarEntry {
                path,
                link,
                kind,
                mode,
                mtime,
                data: Vec::new(),
            };
            if entry.is_file() {
                self.check("file", size, self.limits.max_entry)?;
                entry.data = self.read_data(size, "a file")?;
            } else {
                self.skip_data(size, "an entry's data")?;
            }
            return Ok(Some(entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size_field: &[u8; 12]) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(size_field);
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn octal(size: u64) -> [u8; 12] {
        format!("{size:011o}\0").as_bytes().try_into().unwrap()
    }

    fn read_all(bytes: &[u8], limits: Limits) -> Result<Vec<TarEntry>, TarError> {
        let mut reader = TarReader::new(bytes, limits);
        let mut out = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            out.push(entry);
        }
        Ok(out)
    }

    /// What the `tar` crate writes, read back the same way the `tar` crate reads it.
    #[test]
    fn agrees_with_the_tar_crate_on_long_names_links_and_pax() {
        let mut builder = tar::Builder::new(Vec::new());
        let long = format!("dir/{}", "n".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        h.set_mtime(12345);
        builder.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        builder
            .append_link(&mut h, "link", "t".repeat(200))
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o600);
        builder.append_data(&mut h, "short", &b"x"[..]).unwrap();
        let pax = [("path", &b"pax/name"[..])];
        builder.append_pax_extensions(pax).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o640);
        builder.append_data(&mut h, "ignored", &b"yz"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();

        let ours = read_all(&bytes, Limits::CRATE).unwrap();
        let mut theirs = Vec::new();
        for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            theirs.push((
                entry.path_bytes().into_owned(),
                entry.link_name_bytes().map(|l| l.into_owned()),
                entry.header().mode().unwrap(),
                data,
            ));
        }
        assert_eq!(ours.len(), theirs.len());
        for (a, (path, link, mode, data)) in ours.iter().zip(&theirs) {
            assert_eq!(&a.path, path);
            if let Some(link) = link {
                assert_eq!(&a.link, link);
            }
            assert_eq!(a.mode, mode & 0o7777);
            assert_eq!(&a.data, data);
        }
        assert_eq!(ours[0].path, long.as_bytes());
        assert_eq!(ours[0].mtime, 12345);
        assert_eq!(ours[3].path, b"pax/name");
    }

    #[test]
    fn base_256_numbers_in_short_fields_are_read_not_panicked_on() {
        // Found by the property test: a base-256 mode or checksum field (8 bytes).
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 2], "mode").unwrap(), 0x102);
        assert!(number(&[0xff; 8], "mode").is_err());
        let mut size = [0u8; 12];
        size[0] = 0x80;
        size[3] = 1; // beyond 64 bits
        assert!(number(&size, "size").is_err());
    }

    #[test]
    fn a_huge_claimed_size_fails_before_any_allocation() {
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[4] = 0x40; // 2^62
        for size_field in [base256, octal(1 << 30)] {
            let bytes = [header("big", b'0', &size_field), [0; 512]].concat();
            let err = read_all(&bytes, Limits::CRATE).unwrap_err();
            assert!(
                matches!(err, TarError::TooLarge { what: "file", .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn gnu_long_names_and_pax_headers_are_capped() {
        let name = vec![b'a'; 5000];
        let mut bytes = header("././@LongLink", b'L', &octal(name.len() as u64)).to_vec();
        bytes.extend_from_slice(&name);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        bytes.extend_from_slice(&header("x", b'0', &octal(0)));
        let err = read_all(&bytes, Limits::CRATE).unwrap_err();
        assert!(
            matches!(
                err,
                TarError::TooLarge {
                    what: "GNU long name",
                    size: 5000,
                    limit: 4096
                }
            ),
            "{err}"
        );
        // A claimed 512 MiB long name in a tiny archive is refused from the header alone.
        let bytes = header("././@LongLink", b'L', &octal(512 << 20)).to_vec();
        assert!(matches!(
            read_all(&bytes, Limits::CRATE),
            Err(TarError::TooLarge { .. })
        ));
        let bytes = header("pax", b'x', &octal(1 << 20)).to_vec();
        assert!(matches!(
            read_all(&bytes, Limits::CRATE),
            Err(TarError::TooLarge {
                what: "PAX header",
                ..
            })
        ));
    }

    #[test]
    fn the_total_is_capped_and_truncation_is_an_error() {
        let limits = Limits {
            max_total: 4096,
            ..Limits::CRATE
        };
        let mut bytes = Vec::new();
        for i in 0..8 {
            bytes.extend_from_slice(&header(&format!("f{i}"), b'0', &octal(10)));
            bytes.extend_from_slice(&[7; 512]);
        }
        assert!(matches!(
            read_all(&bytes, limits),
            Err(TarError::TotalTooLarge(4096) | TarError::TooLarge { .. })
        ));
        let whole = [header("f", b'0', &octal(600)).as_slice(), &[1; 600]].concat();
        assert!(matches!(
            read_all(&whole[..700], Limits::CRATE),
            Err(TarError::Truncated(_))
        ));
        let mut bad = header("f", b'0', &octal(0));
        bad[0] ^= 1;
        assert!(matches!(
            read_all(&bad, Limits::CRATE),
            Err(TarError::Checksum)
        ));
    }
}

/// The reader against the `tar` crate on every `.crate` in cargo's download cache (run with
/// `cargo test -p cmbuild-store -- --ignored same_entries`).
#[cfg(test)]
mod differential {
    use super::*;

    /// Path, link, type byte, permission bits, data.
    type Seen = (Vec<u8>, Vec<u8>, u8, u32, Vec<u8>);

    pub(crate) fn entries_by_tar_crate(bytes: impl Read) -> Vec<Seen> {
        let mut out = Vec::new();
        for entry in tar::Archive::new(bytes).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            let kind = entry.header().entry_type().as_byte();
            if matches!(kind, 0 | b'0' | b'7') {
                entry.read_to_end(&mut data).unwrap();
            }
            out.push((
                entry.path_bytes().into_owned(),
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
                kind,
                entry.header().mode().unwrap_or(0) & 0o7777,
                data,
            ));
        }
        out
    }

    #[test]
    #[ignore = "reads ~/.cargo/registry/cache"]
    fn same_entries_as_the_tar_crate_on_cached_crates() {
        let home = std::env::var("HOME").unwrap();
        let mut checked = 0;
        for dir in std::fs::read_dir(format!("{home}/.cargo/registry/cache")).unwrap() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let theirs = entries_by_tar_crate(flate2::read::GzDecoder::new(&bytes[..]));
                let mut reader =
                    TarReader::new(flate2::read::GzDecoder::new(&bytes[..]), Limits::CRATE);
                let mut ours = Vec::new();
                while let Some(e) = reader.next_entry().unwrap() {
                    ours.push((e.path, e.link, e.kind, e.mode, e.data));
                }
                assert_eq!(ours, theirs, "{}", path.display());
                checked += 1;
            }
        }
        assert!(checked > 0);
        eprintln!("{checked} crates read identically");
    }
}
