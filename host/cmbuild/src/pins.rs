//! `digests.lock.env`: the pinned content IDs of every machine input.
//!
//! A shell-sourceable file of `KEY=value` lines, sorted by key; `#` starts a comment line.
//! cmbuild compiles in its own copy, and a project may carry one to pin another image or
//! toolchain.

use std::collections::BTreeMap;

/// The pins cmbuild was built with.
pub const BUILTIN: &str = include_str!("../../../digests.lock.env");

/// Pins of the guest image that every run needs.
pub const KERNEL: &str = "GUEST_KERNEL_CID";
pub const FIRMWARE: &str = "GUEST_FIRMWARE_CID";
pub const INITRD: &str = "GUEST_INITRD_CID";
pub const ROOTFS: &str = "GUEST_ROOTFS_CID";

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
}

/// Parses `digests.lock.env` text.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, PinsError> {
    let mut pins = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, v)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && !v.is_empty()
                    && !v.contains(char::is_whitespace)
            })
            .ok_or_else(|| PinsError::Syntax(i + 1, line.to_owned()))?;
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        if pins.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(PinsError::Duplicate(i + 1, key.to_owned()));
        }
    }
    Ok(pins)
}

/// The pin `key`, or an error saying how to get it.
pub fn require<'a>(pins: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, PinsError> {
    pins.get(key)
        .map(String::as_str)
        .ok_or_else(|| PinsError::Missing(key.to_owned()))
}

/// The toolchain pin of a target triple: `RUST_TOOLCHAIN__X86_64_UNKNOWN_LINUX_GNU`.
pub fn toolchain_key(triple: &str) -> String {
    let upper: String = triple
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("RUST_TOOLCHAIN__{upper}")
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
        assert_eq!(
            toolchain_key("riscv64gc-unknown-linux-gnu"),
            "RUST_TOOLCHAIN__RISCV64GC_UNKNOWN_LINUX_GNU"
        );
    }

    #[test]
    fn builtin_pins_parse() {
        parse(BUILTIN).unwrap();
    }
}
