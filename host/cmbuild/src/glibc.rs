//! Which glibc an artifact needs, and which common systems it will therefore not start on.
//!
//! A dynamically linked ELF lists, in its version-needs table (`.gnu.version_r`, reached
//! through the section headers, or through the dynamic segment's `DT_VERNEED` when the
//! section headers are gone), every symbol version it requires of each shared library. The
//! highest `GLIBC_x.y[.z]` among them is the oldest glibc the binary starts on
//! (`GLIBC_ABI_DT_RELR` counts as 2.36, the release that introduced it). A static binary
//! (no `PT_INTERP`) and a file that is not ELF (WebAssembly, for instance) need none.
//!
//! Artifacts are untrusted guest output: every offset and count read from the file is
//! checked against the file's bounds and capped, and no input makes this panic.
//!
//! [`SYSTEMS`] is the one table of common systems and their glibc.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most version-needs entries (files) and auxiliary entries (versions) walked.
const MAX_ENTRIES: usize = 65_536;
/// Longest version name read.
const MAX_NAME: usize = 256;

/// A glibc release, e.g. 2.34 or 2.2.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion(pub u32, pub u32, pub u32);

impl GlibcVersion {
    /// Parses `2.34` or `2.2.5`.
    pub fn parse(text: &str) -> Option<GlibcVersion> {
        let mut parts = text.split('.');
        let mut next = |required: bool| -> Option<u32> {
            match parts.next() {
                Some(p)
                    if !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    p.parse().ok()
                }
                None if !required => Some(0),
                _ => None,
            }
        };
        let version = GlibcVersion(next(true)?, next(true)?, next(false)?);
        parts.next().is_none().then_some(version)
    }

    /// The version a symbol-version name requires: `GLIBC_2.34` is 2.34,
    /// `GLIBC_ABI_DT_RELR` is 2.36; anything else (`GLIBC_PRIVATE`, other libraries'
    /// versions) says nothing about the glibc release.
    pub fn of_symbol_version(name: &str) -> Option<GlibcVersion> {
        match name {
            "GLIBC_ABI_DT_RELR" => Some(GlibcVersion(2, 36, 0)),
            _ => GlibcVersion::parse(name.strip_prefix("GLIBC_")?),
        }
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            patch => write!(f, "{}.{}.{patch}", self.0, self.1),
        }
    }
}

/// A common system and the glibc it ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct System {
    /// Its name, e.g. `Debian 12 bookworm`.
    pub name: &'static str,
    /// Its glibc.
    pub glibc: GlibcVersion,
}

/// Common systems users run release binaries on, with their glibc (the one table).
pub const SYSTEMS: &[System] = &[
    System {
        name: "RHEL 8",
        glibc: GlibcVersion(2, 28, 0),
    },
    System {
        name: "Debian 11 bullseye",
        glibc: GlibcVersion(2, 31, 0),
    },
    System {
        name: "Ubuntu 20.04",
        glibc: GlibcVersion(2, 31, 0),
    },
    System {
        name: "RHEL 9",
        glibc: GlibcVersion(2, 34, 0),
    },
    System {
        name: "Ubuntu 22.04",
        glibc: GlibcVersion(2, 35, 0),
    },
    System {
        name: "Debian 12 bookworm",
        glibc: GlibcVersion(2, 36, 0),
    },
    System {
        name: "Ubuntu 24.04",
        glibc: GlibcVersion(2, 39, 0),
    },
];

/// The systems of [`SYSTEMS`] whose glibc is older than `needed`.
pub fn systems_too_old(needed: GlibcVersion) -> Vec<&'static System> {
    SYSTEMS.iter().filter(|s| s.glibc < needed).collect()
}

/// How a file is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// An ELF with a program interpreter (the dynamic loader).
    Dynamic,
    /// An ELF without one (static, or static-pie).
    Static,
    /// Not an ELF file.
    NotElf,
}

impl Linkage {
    /// The name `manifest.json` records.
    pub fn as_str(self) -> &'static str {
        match self {
            Linkage::Dynamic => "dynamic",
            Linkage::Static => "static",
            Linkage::NotElf => "not-elf",
        }
    }
}

/// What a binary needs of the C library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// How it is linked.
    pub linkage: Linkage,
    /// The highest glibc symbol version it requires (`GLIBC_2.34`), and the release that
    /// implies; `None` when it requires none.
    pub glibc: Option<(String, GlibcVersion)>,
}

/// Why an ELF file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// An offset, size or count leads outside the file or past a cap.
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
}

type Result<T, E = ElfError> = std::result::Result<T, E>;

/// Checked little- or big-endian reads from the file.
struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
    is_64: bool,
}

impl Reader<'_> {
    fn bytes(&self, offset: u64, len: usize) -> Result<&[u8]> {
        let start = usize::try_from(offset).map_err(|_| ElfError::Malformed("offset"))?;
        let end = start
            .checked_add(len)
            .ok_or(ElfError::Malformed("offset"))?;
        self.data
            .get(start..end)
            .ok_or(ElfError::Malformed("offset past the end of the file"))
    }

    fn uint(&self, offset: u64, len: usize) -> Result<u64> {
        let bytes = self.bytes(offset, len)?;
        let mut value = 0u64;
        for i in 0..len {
            let b = if self.big_endian {
                bytes[i]
            } else {
                bytes[len - 1 - i]
            };
            value = (value << 8) | u64::from(b);
        }
        Ok(value)
    }

    fn u16(&self, offset: u64) -> Result<u64> {
        self.uint(offset, 2)
    }

    fn u32(&self, offset: u64) -> Result<u64> {
        self.uint(offset, 4)
    }

    /// A word: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, offset: u64) -> Result<u64> {
        self.uint(offset, if self.is_64 { 8 } else { 4 })
    }

    /// The NUL-terminated name at `index` of the string table `[start, start + size)`.
    fn name(&self, start: u64, size: u64, index: u64) -> Result<String> {
        if index >= size {
            return Err(ElfError::Malformed("string index past its table"));
        }
        let offset = add(start, index)?;
        let avail = usize::try_from((size - index).min(MAX_NAME as u64)).unwrap_or(MAX_NAME);
        let avail = avail.min(self.data.len().saturating_sub(offset as usize));
        let bytes = self.bytes(offset, avail)?;
        let end = bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or(ElfError::Malformed("unterminated name"))?;
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b)
        .ok_or(ElfError::Malformed("offset overflow"))
}

fn mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b)
        .ok_or(ElfError::Malformed("offset overflow"))
}

const PT_LOAD: u64 = 1;
const PT_DYNAMIC: u64 = 2;
const PT_INTERP: u64 = 3;
const SHT_GNU_VERNEED: u64 = 0x6fff_fffe;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_VERNEED: u64 = 0x6fff_fffe;
const DT_VERNEEDNUM: u64 = 0x6fff_ffff;

/// A program header's fields cmbuild uses.
struct Segment {
    kind: u64,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Where the version-needs table and its string table lie in the file.
struct VersionNeeds {
    offset: u64,
    /// Bytes the table may span (the section, or the rest of the file).
    size: u64,
    count: u64,
    strtab: u64,
    strsz: u64,
}

/// Reads what a binary needs of the C library. Never panics; a file that is not ELF is
/// [`Linkage::NotElf`].
pub fn inspect(data: &[u8]) -> Result<Needs> {
    if data.len() < 16 || &data[..4] != b"\x7fELF" {
        return Ok(Needs {
            linkage: Linkage::NotElf,
            glibc: None,
        });
    }
    let is_64 = match data[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("class")),
    };
    let big_endian = match data[5] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("byte order")),
    };
    let r = Reader {
        data,
        big_endian,
        is_64,
    };
    let (phoff, shoff, sizes) = if is_64 {
        (r.word(0x20)?, r.word(0x28)?, 0x36)
    } else {
        (r.word(0x1c)?, r.word(0x20)?, 0x2a)
    };
    let phentsize = r.u16(sizes)?;
    let phnum = r.u16(sizes + 2)?;
    let shentsize = r.u16(sizes + 4)?;
    let shnum = r.u16(sizes + 6)?;
    let (min_ph, min_sh) = if is_64 { (56, 64) } else { (32, 40) };

    let mut segments = Vec::new();
    if phnum > 0 && phentsize < min_ph {
        return Err(ElfError::Malformed("program header size"));
    }
    for i in 0..phnum {
        let at = add(phoff, mul(i, phentsize)?)?;
        let segment = if is_64 {
            Segment {
                kind: r.u32(at)?,
                offset: r.word(at + 8)?,
                vaddr: r.word(at + 16)?,
                filesz: r.word(at + 32)?,
            }
        } else {
            Segment {
                kind: r.u32(at)?,
                offset: r.word(at + 4)?,
                vaddr: r.word(at + 8)?,
                filesz: r.word(at + 16)?,
            }
        };
        segments.push(segment);
    }
    let linkage = if segments.iter().any(|s| s.kind == PT_INTERP) {
        Linkage::Dynamic
    } else {
        Linkage::Static
    };

    let mut needs = None;
    if shnum > 0 {
        if shentsize < min_sh {
            return Err(ElfError::Malformed("section header size"));
        }
        let section = |i: u64| -> Result<(u64, u64, u64, u64, u64)> {
            let at = add(shoff, mul(i, shentsize)?)?;
            Ok(if is_64 {
                (
                    r.u32(at + 4)?,
                    r.word(at + 24)?,
                    r.word(at + 32)?,
                    r.u32(at + 40)?,
                    r.u32(at + 44)?,
                )
            } else {
                (
                    r.u32(at + 4)?,
                    r.word(at + 16)?,
                    r.word(at + 20)?,
                    r.u32(at + 24)?,
                    r.u32(at + 28)?,
                )
            })
        };
        for i in 0..shnum {
            let (kind, offset, size, link, info) = section(i)?;
            if kind == SHT_GNU_VERNEED {
                if link >= shnum {
                    return Err(ElfError::Malformed("version needs' string table"));
                }
                let (_, strtab, strsz, _, _) = section(link)?;
                needs = Some(VersionNeeds {
                    offset,
                    size,
                    count: info,
                    strtab,
                    strsz,
                });
                break;
            }
        }
    } else if let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) {
        needs = needs_from_dynamic(&r, &segments, dynamic)?;
    }

    let mut highest: Option<(String, GlibcVersion)> = None;
    if let Some(needs) = needs {
        for name in version_names(&r, &needs)? {
            if let Some(version) = GlibcVersion::of_symbol_version(&name) {
                if highest.as_ref().is_none_or(|(_, v)| version > *v) {
                    highest = Some((name, version));
                }
            }
        }
    }
    Ok(Needs {
        linkage,
        glibc: highest,
    })
}

/// The version-needs table through the dynamic segment (for files without section headers).
fn needs_from_dynamic(
    r: &Reader,
    segments: &[Segment],
    dynamic: &Segment,
) -> Result<Option<VersionNeeds>> {
    let entry = if r.is_64 { 16 } else { 8 };
    let (mut verneed, mut count, mut strtab, mut strsz) = (None, 0, None, 0);
    let entries = (dynamic.filesz / entry).min(MAX_ENTRIES as u64);
    for i in 0..entries {
        let at = add(dynamic.offset, i * entry)?;
        let tag = r.word(at)?;
        let value = r.word(at + entry / 2)?;
        match tag {
            DT_NULL => break,
            DT_VERNEED => verneed = Some(value),
            DT_VERNEEDNUM => count = value,
            DT_STRTAB => strtab = Some(value),
            DT_STRSZ => strsz = value,
            _ => {}
        }
    }
    let (Some(verneed), Some(strtab)) = (verneed, strtab) else {
        return Ok(None);
    };
    // Addresses to file offsets, through the loaded segments.
    let to_offset = |addr: u64| -> Result<u64> {
        segments
            .iter()
            .filter(|s| s.kind == PT_LOAD)
            .find(|s| addr >= s.vaddr && addr - s.vaddr < s.filesz)
            .map(|s| s.offset + (addr - s.vaddr))
            .ok_or(ElfError::Malformed("address outside the loaded segments"))
    };
    let offset = to_offset(verneed)?;
    Ok(Some(VersionNeeds {
        offset,
        size: (r.data.len() as u64).saturating_sub(offset),
        count,
        strtab: to_offset(strtab)?,
        strsz,
    }))
}

/// Every version name the table requires.
fn version_names(r: &Reader, needs: &VersionNeeds) -> Result<Vec<String>> {
    let end = add(needs.offset, needs.size)?;
    let check = |at: u64| -> Result<u64> {
        if at < needs.offset || add(at, 16)? > end {
            return Err(ElfError::Malformed("version needs entry outside its table"));
        }
        Ok(at)
    };
    let mut names = Vec::new();
    let mut walked = 0usize;
    let mut need = needs.offset;
    for _ in 0..needs.count.min(MAX_ENTRIES as u64) {
        let at = check(need)?;
        let aux_count = r.u16(at + 2)?;
        let mut aux = add(at, r.u32(at + 8)?)?;
        for _ in 0..aux_count {
            walked += 1;
            if walked > MAX_ENTRIES {
                return Err(ElfError::Malformed("too many version entries"));
            }
            let aux_at = check(aux)?;
            let name = r.name(needs.strtab, needs.strsz, r.u32(aux_at + 8)?)?;
            names.push(name);
            let next = r.u32(aux_at + 12)?;
            if next == 0 {
                break;
            }
            aux = add(aux, next)?;
        }
        let next = r.u32(at + 12)?;
        if next == 0 {
            break;
        }
        need = add(need, next)?;
    }
    Ok(names)
}

/// What `manifest.json` records of an artifact's needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abi {
    /// `dynamic`, `static`, `not-elf`, or `unreadable` (a malformed ELF).
    pub linkage: String,
    /// The highest glibc symbol version required, e.g. `GLIBC_2.34`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glibc_symbol: Option<String>,
    /// The oldest glibc release the artifact starts on, e.g. `2.34`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glibc_min: Option<String>,
}

impl Abi {
    /// Reads an artifact's needs (a malformed ELF is recorded as `unreadable`).
    pub fn of(bytes: &[u8]) -> Abi {
        match inspect(bytes) {
            Ok(needs) => Abi {
                linkage: needs.linkage.as_str().into(),
                glibc_symbol: needs.glibc.as_ref().map(|(s, _)| s.clone()),
                glibc_min: needs.glibc.map(|(_, v)| v.to_string()),
            },
            Err(_) => Abi {
                linkage: "unreadable".into(),
                glibc_symbol: None,
                glibc_min: None,
            },
        }
    }

    /// One line for the run summary: what glibc it needs and which systems of [`SYSTEMS`]
    /// it will not start on.
    pub fn summary(&self) -> String {
        let Some(min) = self.glibc_min.as_deref().and_then(GlibcVersion::parse) else {
            return match self.linkage.as_str() {
                "static" => "static: needs no glibc".into(),
                "dynamic" => "dynamic, requires no glibc symbol version".into(),
                "not-elf" => "not an ELF program (e.g. WebAssembly): needs no glibc".into(),
                other => other.into(),
            };
        };
        let symbol = self.glibc_symbol.as_deref().unwrap_or("?");
        let old = systems_too_old(min);
        if old.is_empty() {
            format!("needs glibc {min} ({symbol}): starts on every listed system")
        } else {
            let names: Vec<String> = old
                .iter()
                .map(|s| format!("{} ({})", s.name, s.glibc))
                .collect();
            format!(
                "needs glibc {min} ({symbol}): will not start on {}",
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Compiles a C program with `gcc` (a host or cross compiler); `None` if it is missing.
    fn compile(gcc: &str, dir: &Path, name: &str, source: &str, flags: &[&str]) -> Option<Vec<u8>> {
        if !have(gcc) {
            eprintln!("skipping: {gcc} is not installed");
            return None;
        }
        let src = dir.join(format!("{name}.c"));
        std::fs::write(&src, source).unwrap();
        let out = dir.join(name);
        let status = Command::new(gcc)
            .arg("-O1")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .args(flags)
            .status()
            .unwrap();
        assert!(status.success(), "{gcc} {name}");
        Some(std::fs::read(&out).unwrap())
    }

    /// The highest GLIBC_ version `readelf -V` lists in the file's version needs.
    fn readelf_highest(readelf: &str, path: &Path) -> Option<GlibcVersion> {
        let out = Command::new(readelf).arg("-V").arg(path).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let needs = text.split("Version needs section").nth(1)?;
        needs
            .split_whitespace()
            .filter_map(GlibcVersion::of_symbol_version)
            .max()
    }

    const PROGRAMS: &[(&str, &str)] = &[
        ("plain", "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n"),
        (
            // getrandom (2.25), reallocarray (2.26), pidfd_open/close_range (2.34+ in libc).
            "newer",
            "#define _GNU_SOURCE\n#include <stdlib.h>\n#include <sys/random.h>\n#include <unistd.h>\n\
             int main(void) { char b[4]; getrandom(b, 4, 0); void *p = reallocarray(0, 2, 8);\n\
             free(p); return close_range(100, 101, 0); }\n",
        ),
        ("math", "#include <math.h>\n#include <stdio.h>\nint main(int c, char **v) { printf(\"%f\", exp(c) + log(c)); return 0; }\n"),
    ];

    #[test]
    fn answers_match_readelf_on_real_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut checked = 0;
        for (gcc, readelf) in [
            ("gcc", "readelf"),
            ("riscv64-linux-gnu-gcc", "riscv64-linux-gnu-readelf"),
        ] {
            for (name, source) in PROGRAMS {
                let file = format!("{gcc}-{name}");
                let flags: &[&str] = if *name == "math" { &["-lm"] } else { &[] };
                let Some(bytes) = compile(gcc, dir.path(), &file, source, flags) else {
                    continue;
                };
                let needs = inspect(&bytes).unwrap();
                assert_eq!(needs.linkage, Linkage::Dynamic, "{file}");
                let tool = if have(readelf) { readelf } else { "readelf" };
                let expected = readelf_highest(tool, &dir.path().join(&file));
                assert!(expected.is_some(), "{file}: readelf saw no GLIBC_ version");
                assert_eq!(needs.glibc.as_ref().map(|(_, v)| *v), expected, "{file}");
                let (symbol, version) = needs.glibc.unwrap();
                assert_eq!(GlibcVersion::of_symbol_version(&symbol), Some(version));
                if *name == "newer" {
                    assert!(version >= GlibcVersion(2, 34, 0), "{file}: {symbol}");
                }
                // Without section headers, through the dynamic segment: the same answer.
                let mut stripped = bytes.clone();
                let (at, len) = if stripped[4] == 2 {
                    (0x3c, 2)
                } else {
                    (0x30, 2)
                };
                stripped[at..at + len].fill(0);
                assert_eq!(
                    inspect(&stripped).unwrap().glibc.map(|(_, v)| v),
                    Some(version)
                );
                checked += 1;
                // Static: no requirement.
                if *name == "plain" {
                    let file = format!("{gcc}-static");
                    if let Some(bytes) = compile(gcc, dir.path(), &file, source, &["-static"]) {
                        let needs = inspect(&bytes).unwrap();
                        assert_eq!(needs.linkage, Linkage::Static, "{file}");
                        assert_eq!(needs.glibc, None, "{file}");
                        assert_eq!(Abi::of(&bytes).summary(), "static: needs no glibc");
                    }
                }
            }
        }
        assert!(checked >= 3, "the host's gcc is needed");
    }

    #[test]
    fn non_elf_and_hostile_bytes_never_panic() {
        assert_eq!(
            inspect(b"\0asm\x01\0\0\0").unwrap().linkage,
            Linkage::NotElf
        );
        assert_eq!(inspect(b"").unwrap().linkage, Linkage::NotElf);
        assert_eq!(Abi::of(b"\0asm\x01\0\0\0").linkage, "not-elf");
        assert!(Abi::of(b"\0asm\x01\0\0\0")
            .summary()
            .contains("needs no glibc"));
        let dir = tempfile::tempdir().unwrap();
        let Some(bytes) = compile("gcc", dir.path(), "p", PROGRAMS[1].1, &[]) else {
            return;
        };
        // Every truncation of the headers and tables, and a pseudo-random stream of byte
        // flips: an answer or an error, never a panic.
        for len in (0..bytes.len().min(20_000)).step_by(7) {
            let _ = inspect(&bytes[..len]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut mutated = bytes.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mostly the first pages (headers, dynamic, version tables).
                let at = (state % (bytes.len().min(16_384) as u64)) as usize;
                mutated[at] = (state >> 32) as u8;
            }
            let _ = inspect(&mutated);
            let _ = Abi::of(&mutated).summary();
        }
    }

    #[test]
    fn the_summary_names_the_systems_too_old() {
        let abi = Abi {
            linkage: "dynamic".into(),
            glibc_symbol: Some("GLIBC_2.39".into()),
            glibc_min: Some("2.39".into()),
        };
        assert_eq!(
            abi.summary(),
            "needs glibc 2.39 (GLIBC_2.39): will not start on RHEL 8 (2.28), \
             Debian 11 bullseye (2.31), Ubuntu 20.04 (2.31), RHEL 9 (2.34), Ubuntu 22.04 (2.35), \
             Debian 12 bookworm (2.36)"
        );
        let old = Abi {
            glibc_symbol: Some("GLIBC_2.17".into()),
            glibc_min: Some("2.17".into()),
            ..abi
        };
        assert_eq!(
            old.summary(),
            "needs glibc 2.17 (GLIBC_2.17): starts on every listed system"
        );
        assert_eq!(
            systems_too_old(GlibcVersion(2, 34, 0))
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>(),
            ["RHEL 8", "Debian 11 bullseye", "Ubuntu 20.04"]
        );
        assert_eq!(GlibcVersion::parse("2.2.5"), Some(GlibcVersion(2, 2, 5)));
        assert_eq!(GlibcVersion(2, 2, 5).to_string(), "2.2.5");
        assert_eq!(GlibcVersion::parse("2"), None);
        assert_eq!(GlibcVersion::parse("2.x"), None);
        assert_eq!(GlibcVersion::of_symbol_version("GLIBC_PRIVATE"), None);
        assert_eq!(
            GlibcVersion::of_symbol_version("GLIBC_ABI_DT_RELR"),
            Some(GlibcVersion(2, 36, 0))
        );
    }
}
