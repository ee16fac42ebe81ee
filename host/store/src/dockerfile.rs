//! The base images a Dockerfile names, each of which must be pinned by digest.
//!
//! cmbuild builds Dockerfiles offline, so every image a build would pull must be in the
//! mirror already, found by its digest: [`base_images`] reads a Dockerfile and returns every
//! image its `FROM` lines name (and the `--from=` of `COPY`, `ADD` and `RUN --mount`), refusing
//! with the file, line number and line any that carries no `@sha256:` digest.
//!
//! What is understood: line continuations (with the `escape` parser directive), comments,
//! heredocs (`RUN <<EOF` … `EOF`, whose bodies are not instructions), `FROM [--platform=P]
//! IMAGE [AS NAME]`, references to earlier stages by name or number, `FROM scratch`, and
//! `ARG`s declared before the first `FROM` with a default value (`$NAME` and `${NAME}`; a
//! default may use the `ARG`s declared before it). An
//! `ARG` without a default, any other variable, or a `--platform` other than linux/riscv64
//! (or `$BUILDPLATFORM` / `$TARGETPLATFORM`, which are linux/riscv64 inside cmbuild's machine)
//! is refused: it could make the same Dockerfile pull a different image. So is a `# syntax=`
//! directive, which would pull a frontend image.

use std::collections::BTreeMap;
use std::fmt;

use crate::oci::{ImageRef, OciError};

/// The largest Dockerfile read.
pub const MAX_DOCKERFILE_SIZE: usize = 4 << 20;

/// Why a Dockerfile was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DockerfileError {
    /// {file}:{line}: {what}\n  {text}
    #[error("{file}:{line}: {what}\n  {text}")]
    Line {
        /// The Dockerfile, as named to the user.
        file: String,
        /// The line number (1-based) where the instruction starts.
        line: usize,
        /// The instruction, as written.
        text: String,
        /// What is wrong.
        what: String,
    },
    /// {file}: {what}
    #[error("{file}: {what}")]
    File {
        /// The Dockerfile, as named to the user.
        file: String,
        /// What is wrong.
        what: String,
    },
}

/// One image a Dockerfile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The line number (1-based) of the instruction naming it.
    pub line: usize,
    /// The image.
    pub image: ImageRef,
}

/// One instruction: where it starts and its text with continuations joined.
struct Instruction {
    line: usize,
    text: String,
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Every image the Dockerfile `text` (named `file` in messages) pulls, in order of appearance
/// (an image named twice is listed twice).
pub fn base_images(file: &str, text: &str) -> Result<Vec<BaseImage>, DockerfileError> {
    if text.len() > MAX_DOCKERFILE_SIZE {
        return Err(DockerfileError::File {
            file: file.to_owned(),
            what: format!("larger than {MAX_DOCKERFILE_SIZE} bytes"),
        });
    }
    let instructions = instructions(file, text)?;
    let mut args: Args = BTreeMap::new();
    let mut stages: Vec<Option<String>> = Vec::new();
    let mut images = Vec::new();
    for instruction in &instructions {
        let err = |what: String| DockerfileError::Line {
            file: file.to_owned(),
            line: instruction.line,
            text: instruction.text.chars().take(300).collect(),
            what,
        };
        let mut words = instruction.text.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let words: Vec<&str> = words.collect();
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if stages.is_empty() => {
                for word in words {
                    let (name, value) = match word.split_once('=') {
                        // A default may use the ARGs declared before it.
                        Some((name, value)) => (name, Some(substitute(unquote(value), &args))),
                        None => (word, None),
                    };
                    args.insert(name.to_owned(), value);
                }
            }
            "FROM" => {
                let mut platform = None;
                let mut rest = words.as_slice();
                while let Some(flag) = rest.first().and_then(|w| w.strip_prefix("--")) {
                    match flag.split_once('=') {
                        Some(("platform", value)) => platform = Some(value),
                        _ => return Err(err(format!("unknown FROM flag `--{flag}`"))),
                    }
                    rest = &rest[1..];
                }
                let (name, stage) = match rest {
                    [name] => (*name, None),
                    [name, as_, stage] if as_.eq_ignore_ascii_case("as") => {
                        (*name, Some(stage.to_ascii_lowercase()))
                    }
                    _ => return Err(err("expected `FROM [--platform=P] IMAGE [AS NAME]`".into())),
                };
                if let Some(platform) = platform {
                    check_platform(platform, &args).map_err(err)?;
                }
                let name = substitute(name, &args).map_err(err)?;
                if let Some(image) = image_of(&name, &stages, false).map_err(err)? {
                    images.push(BaseImage {
                        line: instruction.line,
                        image,
                    });
                }
                stages.push(stage);
            }
            "COPY" | "ADD" | "RUN" => {
                for word in &words {
                    let Some(flag) = word.strip_prefix("--") else {
                        break; // flags come first
                    };
                    let from = if let Some(from) = flag.strip_prefix("from=") {
                        Some(from)
                    } else if let Some(mount) = flag.strip_prefix("mount=") {
                        mount.split(',').find_map(|kv| kv.strip_prefix("from="))
                    } else {
                        None
                    };
                    let Some(from) = from else { continue };
                    let from = substitute(from, &args).map_err(err)?;
                    if let Some(image) = image_of(&from, &stages, true).map_err(err)? {
                        images.push(BaseImage {
                            line: instruction.line,
                            image,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        return Err(DockerfileError::File {
            file: file.to_owned(),
            what: "has no FROM instruction".to_owned(),
        });
    }
    Ok(images)
}

/// The `ARG`s declared before the first `FROM`: name -> default (resolved, or why not).
type Args = BTreeMap<String, Option<Result<String, String>>>;

/// What a `FROM` (or `--from=`) names: `None` for `scratch` and earlier stages.
fn image_of(
    name: &str,
    stages: &[Option<String>],
    numbered: bool,
) -> Result<Option<ImageRef>, String> {
    let lower = name.to_ascii_lowercase();
    if lower == "scratch" || stages.iter().flatten().any(|s| *s == lower) {
        return Ok(None);
    }
    if numbered && name.parse::<usize>().is_ok_and(|n| n < stages.len()) {
        return Ok(None);
    }
    match ImageRef::parse(name) {
        Ok(image) => Ok(Some(image)),
        Err(OciError::NoDigest(_)) => Err(format!(
            "`{name}` is not pinned by digest: write it as `{name}@sha256:<digest>` \
             (cmbuild builds offline from images vendored by digest; a tag can move)"
        )),
        Err(other) => Err(other.to_string()),
    }
}

/// Accepts `--platform` values that are linux/riscv64 inside cmbuild's machine.
fn check_platform(value: &str, args: &Args) -> Result<(), String> {
    let automatic = [
        "$BUILDPLATFORM",
        "${BUILDPLATFORM}",
        "$TARGETPLATFORM",
        "${TARGETPLATFORM}",
    ];
    if automatic.contains(&value) {
        return Ok(());
    }
    let platform = substitute(value, args)?;
    if platform == "linux/riscv64" {
        Ok(())
    } else {
        Err(format!(
            "--platform={platform}: cmbuild's machine is linux/riscv64, \
             foreign-architecture bases are refused"
        ))
    }
}

/// Replaces `$NAME` and `${NAME}` by the default of an `ARG` declared before the first `FROM`.
fn substitute(text: &str, args: &Args) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`{text}` uses a variable form cmbuild does not resolve (only `$NAME` and \
                 `${{NAME}}` of an ARG with a default, declared before the first FROM)"
            ));
        }
        match args.get(name) {
            Some(Some(Ok(value))) => out.push_str(value),
            Some(Some(Err(why))) => return Err(format!("the default of `{name}`: {why}")),
            Some(None) => {
                return Err(format!(
                    "`${name}` is an ARG without a default value: the image would depend on \
                     a --build-arg; give the ARG a default (an image pinned by digest)"
                ))
            }
            None => {
                return Err(format!(
                    "`${name}` is not an ARG declared before the first FROM: cannot tell \
                     which image this names"
                ))
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// Splits the Dockerfile into instructions: parser directives read, comments dropped,
/// continuations joined, heredoc bodies skipped.
fn instructions(file: &str, text: &str) -> Result<Vec<Instruction>, DockerfileError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: `# key=value` lines at the very top.
    while i < lines.len() {
        let Some(directive) = lines[i].trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = directive.split_once('=') else {
            break;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if key.contains(char::is_whitespace) {
            break;
        }
        match key.as_str() {
            "escape" if value == "`" || value == "\\" => {
                escape = value.chars().next().unwrap_or('\\')
            }
            "syntax" => {
                return Err(DockerfileError::Line {
                    file: file.to_owned(),
                    line: i + 1,
                    text: lines[i].to_owned(),
                    what: "the `syntax` directive pulls a frontend image; cmbuild builds with \
                           the built-in frontend offline: remove the directive"
                        .to_owned(),
                })
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let trimmed = lines[i].trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut text = String::new();
        loop {
            let line = lines[i].trim_end();
            i += 1;
            match line.strip_suffix(escape) {
                Some(head) => {
                    text.push_str(head);
                    text.push(' ');
                    // Comment and empty lines inside a continuation are dropped.
                    while i < lines.len()
                        && (lines[i].trim().is_empty() || lines[i].trim().starts_with('#'))
                    {
                        i += 1;
                    }
                    if i >= lines.len() {
                        break;
                    }
                }
                None => {
                    text.push_str(line);
                    break;
                }
            }
        }
        // Heredoc bodies follow the instruction; skip each up to its terminator.
        for (word, strip_tabs) in heredocs(&text) {
            loop {
                let Some(line) = lines.get(i) else {
                    return Err(DockerfileError::Line {
                        file: file.to_owned(),
                        line: start + 1,
                        text: text.chars().take(300).collect(),
                        what: format!("heredoc `{word}` is never terminated"),
                    });
                };
                i += 1;
                let line = if strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == word {
                    break;
                }
            }
        }
        out.push(Instruction {
            line: start + 1,
            text: text.trim().to_owned(),
        });
    }
    Ok(out)
}

/// The heredoc terminators an instruction opens (`<<EOF`, `<<-EOF`, `<<"EOF"`), in order,
/// with whether leading tabs are stripped.
fn heredocs(text: &str) -> Vec<(String, bool)> {
    let keyword = text.split_whitespace().next().unwrap_or("");
    if !["RUN", "COPY", "ADD"]
        .iter()
        .any(|k| keyword.eq_ignore_ascii_case(k))
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    // Like BuildKit, only a word that starts with `<<` opens a heredoc (`echo "a<<b"` does not).
    for word in text.split_whitespace() {
        let Some(mut after) = word.strip_prefix("<<") else {
            continue;
        };
        let strip_tabs = after.starts_with('-');
        if strip_tabs {
            after = &after[1..];
        }
        if let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') {
            after = &after[1..];
            let end = after.find(q).unwrap_or(after.len());
            if end > 0 {
                found.push((after[..end].to_owned(), strip_tabs));
            }
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end > 0 && !after.starts_with(|c: char| c.is_ascii_digit()) {
            found.push((after[..end].to_owned(), strip_tabs));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn names(text: &str) -> Vec<(usize, String)> {
        base_images("Dockerfile", text)
            .unwrap()
            .into_iter()
            .map(|b| (b.line, b.image.to_string()))
            .collect()
    }

    fn error(text: &str) -> String {
        base_images("ctx/Dockerfile", text).unwrap_err().to_string()
    }

    #[test]
    fn multi_stage_with_platforms_args_and_copies() {
        let text = format!(
            "# escape=\\\n\
             ARG BASE=127.0.0.1:5000/test/base@sha256:{D1}\n\
             ARG OS=linux\n\
             ARG PLAT=${{OS}}/riscv64\n\
             \n\
             # the builder\n\
             FROM --platform=$BUILDPLATFORM ${{BASE}} AS Builder\n\
             RUN echo hi \\\n\
             # a comment inside\n\
                 && echo FROM nothing\n\
             RUN <<EOF\n\
             FROM not-an-instruction\n\
             EOF\n\
             RUN echo \"a<<b\"\n\
             COPY --from=debian:trixie@sha256:{D2} /etc/os-release /x\n\
             FROM --platform=$PLAT builder as second\n\
             COPY --from=0 /a /b\n\
             COPY --from=BUILDER /a /b\n\
             RUN --mount=type=bind,from=second,target=/s true\n\
             from scratch\n\
             COPY --from=second /a /a\n"
        );
        assert_eq!(
            names(&text),
            vec![
                (7, format!("127.0.0.1:5000/test/base@sha256:{D1}")),
                (15, format!("docker.io/library/debian:trixie@sha256:{D2}")),
            ]
        );
    }

    #[test]
    fn unpinned_images_are_named_with_file_line_and_text() {
        let text = format!("FROM debian@sha256:{D1}\n\nFROM   rust:1.85 AS build\n");
        let err = error(&text);
        assert!(err.starts_with("ctx/Dockerfile:3: "), "{err}");
        assert!(err.contains("`rust:1.85` is not pinned by digest"), "{err}");
        assert!(err.contains("FROM   rust:1.85 AS build"), "{err}");
        let err = error(&format!(
            "FROM debian@sha256:{D1} AS a\nCOPY --from=alpine /x /y\n"
        ));
        assert!(
            err.starts_with("ctx/Dockerfile:2: ") && err.contains("alpine"),
            "{err}"
        );
        // A stage named later is not a stage yet.
        let err = error("FROM later\nFROM scratch AS later\n");
        assert!(err.starts_with("ctx/Dockerfile:1: "), "{err}");
    }

    #[test]
    fn unresolved_variables_and_foreign_platforms_are_refused() {
        let cases = [
            ("ARG BASE\nFROM $BASE\n", "ARG without a default"),
            (
                "FROM ${NOPE}\n",
                "not an ARG declared before the first FROM",
            ),
            (
                "ARG A=$B\nFROM $A\n",
                "the default of `A`: `$B` is not an ARG declared",
            ),
            (
                "ARG B=x\nFROM ${B:-debian}\n",
                "variable form cmbuild does not resolve",
            ),
            (
                "FROM scratch\nARG LATE=debian@sha256:1\nFROM $LATE\n",
                "not an ARG declared before the first FROM",
            ),
            (
                "FROM --platform=linux/amd64 scratch\n",
                "foreign-architecture bases are refused",
            ),
            ("FROM --pull=always scratch\n", "unknown FROM flag"),
            ("FROM a b c d\n", "expected `FROM"),
            ("# syntax=docker/dockerfile:1\nFROM scratch\n", "syntax"),
        ];
        for (text, wanted) in cases {
            let err = error(text);
            assert!(err.contains(wanted), "{text:?}: {err}");
            assert!(err.starts_with("ctx/Dockerfile:"), "{err}");
        }
        assert!(error("RUN true\n").contains("no FROM"));
        assert!(error("FROM scratch\nRUN <<EOF\nnever ends\n").contains("never terminated"));
    }

    #[test]
    fn backtick_escape_and_crlf() {
        let text = format!("# escape=`\r\nFROM `\r\n  debian@sha256:{D1}\r\n");
        assert_eq!(
            names(&text),
            vec![(2, format!("docker.io/library/debian@sha256:{D1}"))]
        );
    }
}
