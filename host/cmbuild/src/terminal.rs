//! Untrusted text on the way to a terminal: guest console output, guest build logs, and
//! anything a server, a published record or a project named.
//!
//! [`sanitize`] is the one function every such text goes through before it is printed (a
//! stream of console bytes goes through [`Stream`], which applies it across chunk
//! boundaries): an escape sequence could otherwise move the cursor, rewrite earlier lines (a
//! forged `Reproducibility check PASSED`), set the window title or worse. Newlines and tabs
//! pass; every other control character (C0, DEL, C1) is shown escaped as `\x1b`, `\u{9b}`
//! and so on, so nothing of it is lost. A carriage return that ends a line (before a newline,
//! or at the end of the text) is the tty's line ending and is dropped; anywhere else it could
//! overwrite a line and is shown escaped (`\x0d`).

use std::fmt::Write;

/// `text` with every control character other than newline and tab shown escaped (a
/// carriage return that ends a line is dropped).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if matches!(chars.peek(), None | Some('\n')) => {}
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Bytes (UTF-8 or not) as sanitised text; invalid UTF-8 shows as U+FFFD.
pub fn sanitize_bytes(bytes: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(bytes))
}

/// Console bytes arriving in chunks, sanitised as a whole: a carriage return or a UTF-8
/// sequence at the end of a chunk is kept until what follows it arrives (so a `\r\n` split
/// between two chunks is still a line end, and a lone `\r` is still shown).
#[derive(Debug, Default)]
pub struct Stream {
    pending: Vec<u8>,
}

impl Stream {
    /// A stream with nothing pending.
    pub fn new() -> Stream {
        Stream::default()
    }

    /// The printable text of `bytes` (after what was pending), holding back an unfinished
    /// line end or character.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut keep = 0;
        if self.pending.last() == Some(&b'\r') {
            keep = 1;
        } else {
            // An unfinished UTF-8 sequence at the end: at most 3 bytes, starting with a lead.
            let tail = &self.pending[self.pending.len().saturating_sub(3)..];
            if let Some(i) = tail.iter().rposition(|b| b & 0xc0 == 0xc0) {
                let need = match tail[i] {
                    b if b >= 0xf0 => 4,
                    b if b >= 0xe0 => 3,
                    _ => 2,
                };
                if tail.len() - i < need {
                    keep = tail.len() - i;
                }
            }
        }
        let split = self.pending.len() - keep;
        let rest = self.pending.split_off(split);
        let text = sanitize_bytes(&self.pending);
        self.pending = rest;
        text
    }

    /// Whatever is still pending, sanitised (at the end of the stream).
    pub fn finish(&mut self) -> String {
        sanitize_bytes(&std::mem::take(&mut self.pending))
    }
}

/// An error and its chain of causes, `outer: inner: ...`, sanitised.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    sanitize(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_sent() {
        let hostile = "ok\n\x1b[2K\rReproducibility check PASSED\x07\tend\u{9b}31m\x7f";
        let shown = sanitize(hostile);
        assert_eq!(
            shown,
            "ok\n\\x1b[2K\\x0dReproducibility check PASSED\\x07\tend\\u{9b}31m\\x7f"
        );
        assert!(!shown
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert_eq!(sanitize_bytes(b"a\xffb\x1b"), "a\u{fffd}b\\x1b");
        assert_eq!(sanitize("plain text, ünïcode\n"), "plain text, ünïcode\n");
        // The guest tty ends lines with CR LF; a line cut between two reads ends in CR.
        assert_eq!(sanitize("one\r\ntwo\r"), "one\ntwo");
        assert_eq!(sanitize("a\rb\r\r\n"), "a\\x0db\\x0d\n");
    }

    #[test]
    fn a_stream_is_sanitised_across_chunk_boundaries() {
        let text = "line one\r\nlé\x1b[31mred\r\n\rover";
        let whole = sanitize(text);
        // Every split point gives the same output as the whole text.
        for cut in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            let mut stream = Stream::new();
            let out = stream.push(a) + &stream.push(b) + &stream.finish();
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert!(
            whole.contains("\\x0dover") && whole.contains("\\x1b[31m"),
            "{whole}"
        );
    }
}
