//! What the guest says about a build while it runs and after it ends: the build driver's
//! `cmbuild-progress:` / `cmbuild-error:` console lines (guest-image/PROTOCOL.md, "Console
//! lines") and the first error of a build log.
//!
//! All of it is untrusted guest text: lines are parsed strictly (anything that does not
//! match is ignored), every field is bounded and drawn from a safe alphabet, and log text is
//! sanitised ([`crate::terminal::sanitize`]) before it is returned.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use cmbuild_image::triple::Triple;

use crate::terminal;

/// Longest console line considered; a longer one is not the driver's and is dropped.
pub const MAX_LINE: usize = 4096;

/// Longest crate name or version accepted in a progress line.
const MAX_FIELD: usize = 128;

/// One line of the build driver's progress protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleLine {
    /// `cmbuild-progress: T n/N CRATE VERSION`: cargo began compiling a crate.
    Compiling {
        /// The triple being built.
        target: Triple,
        /// How many crates cargo began compiling so far for it, this one included.
        n: u32,
        /// The packages of the project's Cargo.lock (an upper bound for `n`).
        total: u32,
        /// The crate's name.
        krate: String,
        /// Its version, as cargo printed it (`v1.2.3`).
        version: String,
    },
    /// `cmbuild-error: T LINE`: the first error line of the triple's build.
    Error {
        /// The triple being built.
        target: Triple,
        /// The error line (sanitised).
        line: String,
    },
}

impl ConsoleLine {
    /// Parses one console line (without its line end); `None` for anything else.
    pub fn parse(line: &str) -> Option<ConsoleLine> {
        if line.len() > MAX_LINE {
            return None;
        }
        if let Some(rest) = line.strip_prefix("cmbuild-progress: ") {
            let mut words = rest.split(' ');
            let target = words.next()?.parse().ok()?;
            let (n, total) = words.next()?.split_once('/')?;
            let n = parse_count(n)?;
            let total = parse_count(total)?;
            let krate = words.next()?;
            let version = words.next()?;
            if words.next().is_some() || !is_crate_name(krate) || !is_version(version) {
                return None;
            }
            return Some(ConsoleLine::Compiling {
                target,
                n,
                total,
                krate: krate.to_owned(),
                version: version.to_owned(),
            });
        }
        if let Some(rest) = line.strip_prefix("cmbuild-error: ") {
            let (target, text) = rest.split_once(' ')?;
            let target = target.parse().ok()?;
            return Some(ConsoleLine::Error {
                target,
                line: terminal::sanitize(text.trim_end()),
            });
        }
        None
    }
}

/// A decimal count of at most 9 digits (no sign, no spaces).
fn parse_count(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A crate name as cargo prints it: ASCII letters, digits, `-` and `_`, bounded.
fn is_crate_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_FIELD
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A version as cargo prints it (`v1.2.3-rc.1+meta`), bounded.
fn is_version(text: &str) -> bool {
    text.len() > 1
        && text.len() <= MAX_FIELD
        && text.starts_with('v')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Splits sanitised console text arriving in chunks into whole lines. A line longer than
/// [`MAX_LINE`] is dropped (up to its end), so memory stays bounded whatever the guest sends.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: String,
    overlong: bool,
}

impl LineSplitter {
    /// The complete lines `text` finishes (without their `\n`).
    pub fn push(&mut self, text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('\n') {
            let (head, tail) = rest.split_at(i);
            if !self.overlong && self.pending.len() + head.len() <= MAX_LINE {
                self.pending.push_str(head);
                lines.push(std::mem::take(&mut self.pending));
            }
            self.pending.clear();
            self.overlong = false;
            rest = &tail[1..];
        }
        if self.pending.len() + rest.len() > MAX_LINE {
            self.pending.clear();
            self.overlong = true;
        } else if !self.overlong {
            self.pending.push_str(rest);
        }
        lines
    }
}

/// What a build log says, for the run's failure report: its first error line and its last
/// lines, sanitised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// The first line starting `error: ` or `error[E...]: `, if any.
    pub first_error: Option<String>,
    /// The last [`TAIL_LINES`] lines.
    pub tail: String,
}

/// Lines kept from the end of a log.
pub const TAIL_LINES: usize = 30;

/// Most bytes of a log scanned.
pub const MAX_LOG_SCAN: u64 = 64 << 20;

/// Whether a log line is one of rustc's or cargo's error lines.
pub fn is_error_line(line: &str) -> bool {
    if let Some(rest) = line.strip_prefix("error: ") {
        return !rest.is_empty();
    }
    if let Some(rest) = line.strip_prefix("error[E") {
        if let Some((code, _)) = rest.split_once("]: ") {
            return !code.is_empty() && code.len() <= 5 && code.bytes().all(|b| b.is_ascii_digit());
        }
    }
    false
}

/// Scans a log (at most [`MAX_LOG_SCAN`] bytes, each line cut at [`MAX_LINE`] bytes).
pub fn summarize_log(reader: impl Read) -> io::Result<LogSummary> {
    let mut reader = BufReader::new(reader.take(MAX_LOG_SCAN));
    let mut summary = LogSummary::default();
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES + 1);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if buf.len() == MAX_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of an overlong line.
            let mut sink = Vec::new();
            (&mut reader)
                .take(MAX_LOG_SCAN)
                .read_until(b'\n', &mut sink)?;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if summary.first_error.is_none() && is_error_line(line) {
            summary.first_error = Some(terminal::sanitize(line));
        }
        tail.push_back(terminal::sanitize(line));
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
    }
    summary.tail = tail.into_iter().map(|l| l + "\n").collect();
    Ok(summary)
}

/// [`summarize_log`] of a file; an absent or unreadable file (or one that is not a regular
/// file) gives an empty summary.
pub fn summarize_log_file(path: &Path) -> LogSummary {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => std::fs::File::open(path)
            .and_then(summarize_log)
            .unwrap_or_default(),
        _ => LogSummary::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse_strictly() {
        let line = "cmbuild-progress: x86_64-unknown-linux-gnu 3/41 serde_json v1.0.140";
        assert_eq!(
            ConsoleLine::parse(line),
            Some(ConsoleLine::Compiling {
                target: "x86_64-unknown-linux-gnu".parse().unwrap(),
                n: 3,
                total: 41,
                krate: "serde_json".into(),
                version: "v1.0.140".into(),
            })
        );
        for bad in [
            "cmbuild-progress: x86_64-unknown-linux-gnu 3/41 serde_json v1.0.140 extra",
            "cmbuild-progress: ../etc 3/41 serde v1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu -3/41 serde v1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu 3/99999999999 serde v1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu 3/41 se\\x1b[2Jrde v1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu 3/41 serde 1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu 3 serde v1.0.0",
            "cmbuild-progress: x86_64-unknown-linux-gnu 3/41 serde",
            "xcmbuild-progress: x86_64-unknown-linux-gnu 3/41 serde v1.0.0",
            "   Compiling serde v1.0.0",
        ] {
            assert_eq!(ConsoleLine::parse(bad), None, "{bad}");
        }
        let long = format!(
            "cmbuild-progress: x86_64-unknown-linux-gnu 1/2 {} v1",
            "a".repeat(200)
        );
        assert_eq!(ConsoleLine::parse(&long), None);
    }

    #[test]
    fn error_lines_are_sanitised() {
        let line = "cmbuild-error: riscv64gc-unknown-linux-gnu error: package `x` requires rustc 1.88\u{1b}[2J";
        assert_eq!(
            ConsoleLine::parse(line),
            Some(ConsoleLine::Error {
                target: "riscv64gc-unknown-linux-gnu".parse().unwrap(),
                line: "error: package `x` requires rustc 1.88\\x1b[2J".into(),
            })
        );
        assert_eq!(ConsoleLine::parse("cmbuild-error: nope error: x"), None);
    }

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push("abc"), Vec::<String>::new());
        assert_eq!(s.push("def\nghi\n\nj"), vec!["abcdef", "ghi", ""]);
        assert_eq!(s.push(&"x".repeat(MAX_LINE + 1)), Vec::<String>::new());
        assert_eq!(s.push("still the long line\nok\n"), vec!["ok"]);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn the_first_error_of_a_log_is_found() {
        let log = "   Compiling a v0.1.0\n\
                   warning: unused\n\
                   error: package `b v1.0.0` cannot be built because it requires rustc 1.88 or newer\n\
                   error[E0425]: later\n\
                   error: could not compile\n";
        let summary = summarize_log(log.as_bytes()).unwrap();
        assert_eq!(
            summary.first_error.as_deref(),
            Some(
                "error: package `b v1.0.0` cannot be built because it requires rustc 1.88 or newer"
            )
        );
        assert!(summary.tail.ends_with("error: could not compile\n"));
        let summary = summarize_log("error[E0425]: cannot find value\n".as_bytes()).unwrap();
        assert_eq!(
            summary.first_error.as_deref(),
            Some("error[E0425]: cannot find value")
        );
        assert!(!is_error_line("error[Ex]: no"));
        assert!(!is_error_line("  error: indented"));
        assert!(!is_error_line("errors: 3"));
    }

    #[test]
    fn long_logs_keep_only_their_tail_and_first_error() {
        let mut log = String::from("error: first\n");
        for i in 0..10_000 {
            log += &format!("line {i}\n");
        }
        log += &"y".repeat(3 * MAX_LINE);
        log += "\nlast\n";
        let summary = summarize_log(log.as_bytes()).unwrap();
        assert_eq!(summary.first_error.as_deref(), Some("error: first"));
        assert_eq!(summary.tail.lines().count(), TAIL_LINES);
        assert!(summary.tail.ends_with("last\n"));
        assert!(summary.tail.lines().all(|l| l.len() <= MAX_LINE));
    }
}
