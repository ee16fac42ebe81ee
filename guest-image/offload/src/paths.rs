//! Lexical path checks of the job format: absolute, normalised (no `.`, `..`, empty
//! components, trailing `/`), and "under a directory". Nothing here touches the file system.
//!
//! Self-contained (no `crate::` paths) so that the tests can include it.

/// Whether `path` is absolute and normalised: starts with `/`, is not `/` itself, and has
/// no empty, `.` or `..` component and no NUL.
pub fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && !path.contains('\0')
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `path` made absolute against `base` (itself normal) and normalised lexically: `.` and
/// empty components dropped, `..` removes the previous component. `None` if `..` would
/// climb above `/`, if the result is `/`, or if there is a NUL.
pub fn normalize(base: &str, path: &str) -> Option<String> {
    if path.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    if !path.starts_with('/') {
        if !is_normal(base) {
            return None;
        }
        parts.extend(base[1..].split('/'));
    }
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(path.len() + base.len());
    for c in parts {
        out.push('/');
        out.push_str(c);
    }
    Some(out)
}

/// Whether `path` lies strictly below `dir` (both normal): `dir/...`.
pub fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Whether `path` is `dir` or lies below it.
pub fn is_at_or_below(path: &str, dir: &str) -> bool {
    path == dir || is_below(path, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths() {
        for p in ["/build", "/build/src/lib.rs", "/a/b.c/.hidden", "/a/...b"] {
            assert!(is_normal(p), "{p}");
        }
        for p in [
            "",
            "/",
            "build",
            "//build",
            "/build/",
            "/build//src",
            "/build/./src",
            "/build/..",
            "/build/../x",
            "/./x",
            "/a\0b",
        ] {
            assert!(!is_normal(p), "{p:?}");
        }
    }

    #[test]
    fn normalize_joins_and_cleans() {
        assert_eq!(
            normalize("/build/src", "src/lib.rs").as_deref(),
            Some("/build/src/src/lib.rs")
        );
        assert_eq!(
            normalize("/build/src", "./a//b/../c/").as_deref(),
            Some("/build/src/a/c")
        );
        assert_eq!(
            normalize("/build/src", "/build/vendor/x-1/../y-2/src/lib.rs").as_deref(),
            Some("/build/vendor/y-2/src/lib.rs")
        );
        assert_eq!(normalize("/build", "../.."), None);
        assert_eq!(normalize("/build", ".."), None, "the result would be /");
        assert_eq!(normalize("relative", "x"), None);
        assert_eq!(normalize("/build", "a\0"), None);
        assert_eq!(normalize("/x", "/").as_deref(), None);
    }

    #[test]
    fn below() {
        assert!(is_below("/build/src/a", "/build/src"));
        assert!(!is_below("/build/src", "/build/src"));
        assert!(!is_below("/build/srcx/a", "/build/src"));
        assert!(!is_below("/build/sr", "/build/src"));
        assert!(is_at_or_below("/build/src", "/build/src"));
        assert!(!is_at_or_below("/build/srcx", "/build/src"));
    }
}
