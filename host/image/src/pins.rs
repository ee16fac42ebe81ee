//! `digests.lock.env`: the pinned content IDs of every machine input — its one format and
//! its keys.
//!
//! A shell-sourceable file of `KEY=value` lines, sorted by key, under a one-line `#` header;
//! `#` starts a comment line and blank lines are ignored. Keys are upper-case ASCII letters,
//! digits and `_`; a value is one word (surrounding `'` or `"` are stripped on reading).
//! `cmbuild image build` writes the file ([`render`]); cmbuild compiles in its own copy, and
//! a project may carry one to pin another image or toolchain ([`parse`] reads both).

use std::collections::BTreeMap;

use cmbuild_store::cid::Cid;

use crate::triple::Triple;

/// Pin of the guest kernel (`vmlinux`).
pub const KERNEL: &str = "GUEST_KERNEL_CID";
/// Pin of the guest firmware (OpenSBI `fw_jump.bin`).
pub const FIRMWARE: &str = "GUEST_FIRMWARE_CID";
/// Pin of the guest initramfs (`initramfs.cpio`).
pub const INITRD: &str = "GUEST_INITRD_CID";
/// Pin of the guest root image (`rootfs.erofs`).
pub const ROOTFS: &str = "GUEST_ROOTFS_CID";

/// The guest-image pins and the file `cmbuild image build` writes for each, sorted by key.
pub const IMAGE_FILES: &[(&str, &str)] = &[
    (FIRMWARE, "fw_jump.bin"),
    (INITRD, "initramfs.cpio"),
    (KERNEL, "vmlinux"),
    (ROOTFS, "rootfs.erofs"),
];

/// The comment heading `digests.lock.env`.
pub const HEADER: &str =
    "# Pinned content IDs of every machine input (cmbuild image build writes this file).\n";

/// The prefix of the per-triple toolchain names (statements still name a target's
/// toolchain `RUST_TOOLCHAIN__<TRIPLE>`).
const TOOLCHAIN_PREFIX: &str = "RUST_TOOLCHAIN__";

/// The prefix of every toolchain layer's pin.
const LAYER_PREFIX: &str = "GUEST_TOOLCHAIN_";

/// Parsed pins: key -> value, sorted by key.
pub type Pins = BTreeMap<String, String>;

/// Why a pins file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinsError {
    /// A line is not `KEY=value`.
    #[error("line {0}: expected KEY=value, found {1:?}")]
    Syntax(usize, String),
    /// A key appears twice.
    #[error("line {0}: {1} is pinned twice")]
    Duplicate(usize, String),
    /// A pin the run needs is absent.
    #[error(
        "{0} is not pinned in digests.lock.env; run `cmbuild image build` to pin the guest image"
    )]
    Missing(String),
    /// A pin that names a content ID holds something else.
    #[error("{key} is pinned as {value:?}, which is not a CID: {source}")]
    NotACid {
        /// The pin.
        key: String,
        /// Its value.
        value: String,
        /// Why it is not a CID.
        source: cmbuild_store::cid::CidError,
    },
}

/// Parses `digests.lock.env` text.
pub fn parse(text: &str) -> Result<Pins, PinsError> {
    let mut pins = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, v)| is_key(k) && !v.is_empty() && !v.contains(char::is_whitespace))
            .ok_or_else(|| PinsError::Syntax(i + 1, line.to_owned()))?;
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        if pins.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(PinsError::Duplicate(i + 1, key.to_owned()));
        }
    }
    Ok(pins)
}

fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Renders the pins file: [`HEADER`], then `KEY=value` lines sorted by key (the map's
/// order), each ending in a newline.
pub fn render(pins: &Pins) -> String {
    let lines: String = pins.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    format!("{HEADER}{lines}")
}

/// The pin `key`, or an error saying how to get it.
pub fn require<'a>(pins: &'a Pins, key: &str) -> Result<&'a str, PinsError> {
    pins.get(key)
        .map(String::as_str)
        .ok_or_else(|| PinsError::Missing(key.to_owned()))
}

/// The pin `key` as a content ID (every guest-image and toolchain pin is one).
pub fn require_cid(pins: &Pins, key: &str) -> Result<Cid, PinsError> {
    let value = require(pins, key)?;
    value.parse().map_err(|source| PinsError::NotACid {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// The toolchain pin of a target triple: `RUST_TOOLCHAIN__X86_64_UNKNOWN_LINUX_GNU` (the
/// triple upper-cased, every character other than a letter or digit turned into `_`).
pub fn toolchain_key(triple: Triple) -> String {
    toolchain_key_of(triple.as_str())
}

/// [`toolchain_key`] of a triple named by text (a published record's, which may name a
/// triple this cmbuild does not support).
pub fn toolchain_key_of(triple: &str) -> String {
    format!("{TOOLCHAIN_PREFIX}{}", key_word(triple))
}

/// `text` as a part of a pin's name: ASCII letters and digits upper-cased, anything else `_`.
fn key_word(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The pin of a toolchain layer: `GUEST_TOOLCHAIN_1_96_0_CID` for toolchain `1.96.0`
/// (the image file `toolchain-1.96.0.erofs`).
pub fn layer_key(id: &str) -> String {
    format!("{LAYER_PREFIX}{}_CID", key_word(id))
}

/// Whether `key` is a toolchain layer's pin.
pub fn is_layer_key(key: &str) -> bool {
    key.starts_with(LAYER_PREFIX) && key.ends_with("_CID")
}

/// Whether `key` is a per-triple toolchain pin of cmbuild before toolchain layers
/// (`RUST_TOOLCHAIN__<TRIPLE>`, now the layer's pin): `cmbuild image build` drops them.
pub fn is_triple_toolchain_key(key: &str) -> bool {
    key.starts_with(TOOLCHAIN_PREFIX)
}

/// The file `cmbuild image build` writes for a guest-image pin, if `key` is one.
pub fn image_file(key: &str) -> Option<&'static str> {
    IMAGE_FILES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, file)| *file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sorted_pins_and_refuses_junk() {
        let pins = parse("# pins\nB=2\nA='1'\n\n").unwrap();
        assert_eq!(pins.keys().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(pins["A"], "1");
        assert_eq!(
            parse("A=1\nA=2\n"),
            Err(PinsError::Duplicate(2, "A".into()))
        );
        assert!(matches!(parse("lower=1"), Err(PinsError::Syntax(1, _))));
        assert!(matches!(parse("A = 1"), Err(PinsError::Syntax(1, _))));
        assert!(matches!(require(&pins, "C"), Err(PinsError::Missing(_))));
    }

    #[test]
    fn files_round_trip_sorted() {
        let parsed = parse("# pins\nZ=1\n\nA='x'\n").unwrap();
        assert_eq!(render(&parsed), format!("{HEADER}A=x\nZ=1\n"));
        assert_eq!(parse(&render(&parsed)).unwrap(), parsed);
    }

    #[test]
    fn the_committed_pins_file_is_in_the_one_format() {
        let text = include_str!("../../../digests.lock.env");
        let pins = parse(text).unwrap();
        // Rendering what was read gives the committed bytes back: one format, both ways.
        assert_eq!(render(&pins), text);
        for (key, _) in IMAGE_FILES {
            assert!(pins.contains_key(*key), "{key}");
        }
        // Every pinned toolchain has its layer pinned, and nothing else is pinned as one.
        let locks = crate::layers::shipped().unwrap();
        for id in locks.toolchains.keys() {
            assert!(pins.contains_key(&layer_key(id)), "{id}");
        }
        let layer_pins = pins.keys().filter(|k| is_layer_key(k)).count();
        assert_eq!(layer_pins, locks.toolchains.len());
        assert!(!pins.keys().any(|k| is_triple_toolchain_key(k)));
    }

    #[test]
    fn toolchain_keys_and_image_files() {
        let riscv: Triple = "riscv64gc-unknown-linux-gnu".parse().unwrap();
        assert_eq!(
            toolchain_key(riscv),
            "RUST_TOOLCHAIN__RISCV64GC_UNKNOWN_LINUX_GNU"
        );
        assert_eq!(image_file(ROOTFS), Some("rootfs.erofs"));
        assert_eq!(layer_key("1.96.0"), "GUEST_TOOLCHAIN_1_96_0_CID");
        assert!(is_layer_key(&layer_key("1.97.1")) && !is_layer_key(ROOTFS));
        assert_eq!(image_file("SOURCE_CID"), None);
        let mut keys: Vec<&str> = IMAGE_FILES.iter().map(|(k, _)| *k).collect();
        keys.sort();
        assert_eq!(
            keys,
            IMAGE_FILES.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
    }
}
