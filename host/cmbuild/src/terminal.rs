//! Untrusted text on the way to a terminal: guest console output, guest build logs, and
//! anything a server, a published record or a project named.
//!
//! [`sanitize`] is the one function every such text goes through before it is printed: an
//! escape sequence could otherwise move the cursor, rewrite earlier lines (a forged
//! `Reproducibility check PASSED`), set the window title or worse. Newlines and tabs pass;
//! every other control character (C0, DEL, C1) is shown escaped as `\x1b`, `\u{9b}` and so
//! on, so nothing of it is lost.

use std::fmt::Write;

/// `text` with every control character other than newline and tab shown escaped.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
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
    }
}
