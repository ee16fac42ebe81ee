//! Which job the host runs first when a scout finds jobs ahead of their build machine: the
//! one with the longest chain of work after it (`docs/parallel-builds.md`, "The scout").
//!
//! The chain is estimated before the build from what the host already holds: the
//! project's `Cargo.lock` says which package depends on which (a superset of what cargo
//! compiles: features and targets prune it), and the size of each package's Rust sources
//! (in the vendor archive, or the source archive for the project's own packages)
//! estimates its compile. A package's rank is its own estimate plus the largest rank of
//! the packages that depend on it (its "bottom level"); list scheduling by it is the
//! classic critical-path heuristic. It only orders the host's work: nothing a machine sees
//! depends on it.

use std::collections::{BTreeMap, BTreeSet};

use std::path::Path;

use cmbuild_store::lockfile::{parse_lockfile, Source};

use super::job::Job;

/// A package: name and version.
type Key = (String, String);

/// The ranks of a build's packages.
#[derive(Debug, Default)]
pub struct Ranks {
    ranks: BTreeMap<Key, u64>,
}

/// Bytes of `.rs` files per top directory of an archive's paths (`name-version/...`).
pub fn rust_bytes(entries: &[cmbuild_image::deb::Entry]) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for entry in entries {
        if let cmbuild_image::deb::Node::File(bytes) = &entry.node {
            if entry.path.ends_with(".rs") {
                let top = entry.path.split('/').next().unwrap_or("");
                *sizes.entry(top.to_owned()).or_insert(0) += bytes.len() as u64;
            }
        }
    }
    sizes
}

impl Ranks {
    /// Ranks from a `Cargo.lock` and the [`rust_bytes`] of the vendor and source
    /// archives. A lock that does not parse gives no ranks (every job then ranks the same).
    pub fn new(
        lock: &[u8],
        vendored: &BTreeMap<String, u64>,
        source: &BTreeMap<String, u64>,
    ) -> Ranks {
        let Some(lock) = std::str::from_utf8(lock)
            .ok()
            .and_then(|text| parse_lockfile(text, Path::new("Cargo.lock")).ok())
        else {
            return Ranks::default();
        };
        let own: u64 = source.values().sum();
        let packages: Vec<Key> = lock
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect();
        let cost: Vec<u64> = lock
            .packages
            .iter()
            .map(|p| match &p.source {
                Source::Local => own,
                _ => vendored
                    .get(format!("{}-{}", p.name, p.version).as_str())
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        // `name`, `name version` or `name version (source)`: the package it names.
        let named = |dependency: &str| -> Option<usize> {
            let mut words = dependency.split(' ');
            let name = words.next()?;
            let version = words.next();
            let mut found = packages
                .iter()
                .enumerate()
                .filter(|(_, (n, v))| n == name && version.is_none_or(|w| w == v));
            let first = found.next()?.0;
            found.next().is_none().then_some(first)
        };
        let mut dependents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); packages.len()];
        for (i, p) in lock.packages.iter().enumerate() {
            for d in p.dependencies.iter().filter_map(|d| named(d)) {
                dependents[d].insert(i);
            }
        }
        // Bottom levels, dependents first (a cycle, which a lock cannot have, counts 0).
        let mut rank: Vec<Option<u64>> = vec![None; packages.len()];
        let mut visiting = vec![false; packages.len()];
        fn level(
            i: usize,
            dependents: &[BTreeSet<usize>],
            cost: &[u64],
            rank: &mut Vec<Option<u64>>,
            visiting: &mut Vec<bool>,
        ) -> u64 {
            if let Some(r) = rank[i] {
                return r;
            }
            if std::mem::replace(&mut visiting[i], true) {
                return 0;
            }
            let after = dependents[i]
                .iter()
                .map(|&d| level(d, dependents, cost, rank, visiting))
                .max()
                .unwrap_or(0);
            let r = cost[i].saturating_add(after);
            rank[i] = Some(r);
            r
        }
        for i in 0..packages.len() {
            level(i, &dependents, &cost, &mut rank, &mut visiting);
        }
        Ranks {
            ranks: packages
                .into_iter()
                .zip(rank)
                .map(|(k, r)| (k, r.unwrap_or(0)))
                .collect(),
        }
    }

    /// A job's slot key, smaller first: the highest rank first (its package, by
    /// `CARGO_PKG_NAME` and `CARGO_PKG_VERSION`; unknown ranks last).
    pub fn key(&self, job: &Job) -> u64 {
        let (Some(name), Some(version)) = (
            job.env.get("CARGO_PKG_NAME"),
            job.env.get("CARGO_PKG_VERSION"),
        ) else {
            return u64::MAX;
        };
        let rank = self
            .ranks
            .get(&(name.clone(), version.clone()))
            .copied()
            .unwrap_or(0);
        u64::MAX - rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_image::deb::{Entry, Node};

    fn file(path: &str, size: usize) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            node: Node::File(std::sync::Arc::new(vec![b'x'; size])),
        }
    }

    fn job(name: &str, version: &str) -> Job {
        Job {
            argv: vec!["rustc".into()],
            cwd: super::super::job::GuestPath::new("/build/src").unwrap(),
            env: [
                ("CARGO_PKG_NAME".to_owned(), name.to_owned()),
                ("CARGO_PKG_VERSION".to_owned(), version.to_owned()),
            ]
            .into(),
            inputs: vec![],
            outputs: vec![super::super::job::GuestPath::new("/build/src/target").unwrap()],
        }
    }

    #[test]
    fn the_job_with_the_longest_chain_after_it_goes_first() {
        // app → big → small-leaf; app → medium; small-leaf is tiny but lies under `big`.
        let lock = br#"
version = 4
[[package]]
name = "app"
version = "0.1.0"
dependencies = ["big", "medium"]

[[package]]
name = "big"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
dependencies = ["leaf 0.1.0"]

[[package]]
name = "leaf"
version = "0.1.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

[[package]]
name = "medium"
version = "2.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#;
        let vendor = [
            file("big-1.0.0/src/lib.rs", 8000),
            file("big-1.0.0/README.md", 90_000),
            file("leaf-0.1.0/src/lib.rs", 10),
            file("medium-2.0.0/src/lib.rs", 5000),
        ];
        let source = [file("src/main.rs", 100)];
        let (vendor, source) = (rust_bytes(&vendor), rust_bytes(&source));
        let ranks = Ranks::new(lock, &vendor, &source);
        let order = |names: &[(&'static str, &'static str)]| -> Vec<&'static str> {
            let mut names = names.to_vec();
            names.sort_by_key(|(n, v)| ranks.key(&job(n, v)));
            names.iter().map(|(n, _)| *n).collect()
        };
        assert_eq!(
            order(&[("medium", "2.0.0"), ("leaf", "0.1.0"), ("app", "0.1.0")]),
            ["leaf", "medium", "app"],
            "the tiny leaf under the big crate first"
        );
        assert_eq!(ranks.key(&job("leaf", "0.1.0")), u64::MAX - 8110);
        assert_eq!(ranks.key(&job("unknown", "1.0.0")), u64::MAX);
        assert_eq!(Ranks::new(b"not toml [", &vendor, &source).ranks.len(), 0);
    }
}
