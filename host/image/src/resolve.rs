//! Dependency closure of the guest-image request over Debian `Packages` indices.
//!
//! The rules are dpkg's, reduced to what a root filesystem assembled without running
//! maintainer scripts needs: `Depends` and `Pre-Depends` only (no Recommends), the first
//! satisfiable alternative unless one is already selected, real packages before virtual
//! ones, versioned dependencies on virtual names satisfied only by versioned `Provides`,
//! and Multi-Arch: a dependency of an `amd64` package is satisfied by `amd64` or `all`
//! packages, or by a `Multi-Arch: foreign` package of the native architecture.
//! Essential packages are not pulled in implicitly: busybox provides the shell and the
//! utilities that dpkg would otherwise assume. Conflicts and Breaks are not checked: the
//! closure holds one version per package and architecture, all from one signed release.
//!
//! The traversal order is fixed (request order, then breadth-first in field order), and
//! every tie is broken by name and architecture, so the same indices and the same request
//! always give the same closure.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::debian::{compare_versions, MultiArch, Package, Relation};

/// Why a request could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// requested package `{name}` ({arch}) is not in the indices{detail}
    #[error("requested package `{name}` ({arch}) is not in the indices{detail}")]
    NotFound {
        /// Package name.
        name: String,
        /// Debian architecture.
        arch: String,
        /// What was wrong.
        detail: String,
    },
    /// `{package}` ({arch}) depends on `{clause}`, which no package in the indices satisfies
    #[error(
        "`{package}` ({arch}) depends on `{clause}`, which no package in the indices satisfies"
    )]
    Unsatisfiable {
        /// The package whose dependency failed.
        package: String,
        /// Debian architecture.
        arch: String,
        /// The dependency clause that could not be met.
        clause: String,
    },
}

/// A package asked for by name, for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// Package name.
    pub name: String,
    /// Debian architecture.
    pub arch: String,
}

/// Every package of the indices, searchable by name and by provided virtual name.
#[derive(Debug, Clone)]
pub struct Universe {
    native: String,
    packages: Vec<Package>,
    by_name: BTreeMap<String, Vec<usize>>,
    /// Virtual name -> (provider index, index into the provider's `provides`).
    providers: BTreeMap<String, Vec<(usize, usize)>>,
}

impl Universe {
    /// Index `packages` (from one or more `Packages` files) for `native` architecture.
    ///
    /// `Architecture: all` packages appear in every architecture's index; identical
    /// copies (same name, version and file) are kept once.
    pub fn new(native: &str, packages: impl IntoIterator<Item = Package>) -> Universe {
        let mut seen = BTreeSet::new();
        let mut universe = Universe {
            native: native.to_string(),
            packages: Vec::new(),
            by_name: BTreeMap::new(),
            providers: BTreeMap::new(),
        };
        for package in packages {
            let key = (
                package.name.clone(),
                package.architecture.clone(),
                package.version.clone(),
                package.sha256,
            );
            if !seen.insert(key) {
                continue;
            }
            let index = universe.packages.len();
            universe
                .by_name
                .entry(package.name.clone())
                .or_default()
                .push(index);
            for (k, provided) in package.provides.iter().enumerate() {
                universe
                    .providers
                    .entry(provided.name.clone())
                    .or_default()
                    .push((index, k));
            }
            universe.packages.push(package);
        }
        universe
    }

    /// How many packages the universe holds.
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    /// Whether the universe holds no package.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    /// The architecture a package's own dependencies are resolved for: `all` counts as
    /// native, as in dpkg.
    fn effective_arch<'a>(&'a self, arch: &'a str) -> &'a str {
        if arch == "all" {
            &self.native
        } else {
            arch
        }
    }

    /// Whether a package of `arch`/`multi_arch` may satisfy `relation` for a dependent of
    /// effective architecture `from`, and how much it is preferred (lower is better).
    fn arch_rank(
        &self,
        relation: &Relation,
        from: &str,
        arch: &str,
        multi_arch: MultiArch,
    ) -> Option<u8> {
        let native = self.native.as_str();
        match relation.arch_qualifier.as_deref() {
            Some("any") => {
                // `:any` accepts any architecture of an `allowed` (or `foreign`) package;
                // the native one runs, so prefer it.
                let shared = matches!(multi_arch, MultiArch::Allowed | MultiArch::Foreign);
                if !shared && arch != from && arch != "all" {
                    return None;
                }
                rank_of(arch, [native, "all", from], true)
            }
            Some("native") => rank_of(arch, [native, "all", native], true)
                .filter(|_| arch == native || arch == "all"),
            Some(qualifier) => (arch == qualifier).then_some(0),
            None if multi_arch == MultiArch::Foreign => {
                // A foreign package is a tool: its native build is the one that runs.
                rank_of(arch, [native, "all", from], true)
            }
            None => rank_of(arch, [from, "all", from], false),
        }
    }

    /// The newest package of a requested name, of exactly the requested architecture (or
    /// `all`): a request for `amd64` never silently falls back to the native build.
    fn best_requested(&self, wanted: &Requested) -> Option<usize> {
        let from = self.effective_arch(&wanted.arch);
        self.by_name
            .get(&wanted.name)?
            .iter()
            .copied()
            .filter_map(|i| {
                let arch = self.packages[i].architecture.as_str();
                let rank = if arch == from {
                    0
                } else if arch == "all" {
                    1
                } else {
                    return None;
                };
                Some((rank, i))
            })
            .min_by(|a, b| self.prefer(*a, *b))
            .map(|(_, i)| i)
    }

    /// The best real package named `relation.name` that satisfies it.
    fn best_real(&self, relation: &Relation, from: &str) -> Option<usize> {
        let candidates = self.by_name.get(&relation.name)?;
        candidates
            .iter()
            .copied()
            .filter(|&i| {
                let p = &self.packages[i];
                relation
                    .constraint
                    .as_ref()
                    .is_none_or(|c| c.accepts(&p.version))
            })
            .filter_map(|i| {
                let p = &self.packages[i];
                self.arch_rank(relation, from, &p.architecture, p.multi_arch)
                    .map(|rank| (rank, i))
            })
            .min_by(|a, b| self.prefer(*a, *b))
            .map(|(_, i)| i)
    }

    /// Providers of the virtual name `relation.name` that satisfy it, best first.
    fn ranked_providers(&self, relation: &Relation, from: &str) -> Vec<usize> {
        let Some(providers) = self.providers.get(&relation.name) else {
            return Vec::new();
        };
        let mut ranked: Vec<(u8, usize)> = providers
            .iter()
            .filter(|&&(i, k)| {
                let provided = &self.packages[i].provides[k];
                match (&relation.constraint, &provided.constraint) {
                    (None, _) => true,
                    // Only a versioned Provides can satisfy a versioned dependency.
                    (Some(wanted), Some(given)) => wanted.accepts(&given.version),
                    (Some(_), None) => false,
                }
            })
            .filter_map(|&(i, _)| {
                let p = &self.packages[i];
                self.arch_rank(relation, from, &p.architecture, p.multi_arch)
                    .map(|rank| (rank, i))
            })
            .collect();
        ranked.sort_by(|a, b| {
            let (pa, pb) = (&self.packages[a.1], &self.packages[b.1]);
            a.0.cmp(&b.0)
                .then_with(|| priority_rank(&pa.priority).cmp(&priority_rank(&pb.priority)))
                .then_with(|| pa.name.cmp(&pb.name))
                .then_with(|| compare_versions(&pb.version, &pa.version))
                .then_with(|| pa.architecture.cmp(&pb.architecture))
        });
        ranked.dedup_by_key(|r| r.1);
        ranked.into_iter().map(|(_, i)| i).collect()
    }

    /// Order two ranked real candidates: better arch rank, then newer version, then arch.
    fn prefer(&self, a: (u8, usize), b: (u8, usize)) -> Ordering {
        let (pa, pb) = (&self.packages[a.1], &self.packages[b.1]);
        a.0.cmp(&b.0)
            .then_with(|| compare_versions(&pb.version, &pa.version))
            .then_with(|| pa.architecture.cmp(&pb.architecture))
    }

    /// Whether the selected package `i` satisfies `relation` (directly or by Provides).
    fn satisfies(&self, i: usize, relation: &Relation, from: &str) -> bool {
        let p = &self.packages[i];
        if self
            .arch_rank(relation, from, &p.architecture, p.multi_arch)
            .is_none()
        {
            return false;
        }
        if p.name == relation.name
            && relation
                .constraint
                .as_ref()
                .is_none_or(|c| c.accepts(&p.version))
        {
            return true;
        }
        p.provides.iter().any(|provided| {
            provided.name == relation.name
                && match (&relation.constraint, &provided.constraint) {
                    (None, _) => true,
                    (Some(wanted), Some(given)) => wanted.accepts(&given.version),
                    (Some(_), None) => false,
                }
        })
    }
}

/// `Some(position of arch in preference)` if it is acceptable, else `None`.
fn rank_of(arch: &str, preference: [&str; 3], accept_any: bool) -> Option<u8> {
    match preference.iter().position(|p| *p == arch) {
        Some(position) => Some(position as u8),
        None if accept_any => Some(3),
        None => None,
    }
}

/// Debian priorities, most important first; used to pick among virtual providers.
fn priority_rank(priority: &str) -> u8 {
    match priority {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

/// Resolve the closure of `request` in `universe`.
///
/// A dependency clause mentioning a name in `excludes` counts as satisfied: these are
/// packages only maintainer scripts use (which never run on an assembled image), or that
/// a foreign architecture needs only to run (never to be linked against). An exclude is
/// `name` (for dependents of every architecture) or `name:arch` (only for dependents of
/// that architecture, `all` counting as native). The request documents each one. The
/// result is sorted by name, then architecture.
pub fn resolve(
    universe: &Universe,
    request: &[Requested],
    excludes: &BTreeSet<String>,
) -> Result<Vec<Package>, ResolveError> {
    let mut selected: BTreeSet<usize> = BTreeSet::new();
    // (name, arch) -> index: one version of each package per architecture.
    let mut slots: BTreeMap<(String, String), usize> = BTreeMap::new();
    // Selected packages by every name they answer to (their own and their Provides).
    let mut answers_to: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut queue = VecDeque::new();

    let mut select = |i: usize,
                      selected: &mut BTreeSet<usize>,
                      queue: &mut VecDeque<usize>,
                      answers_to: &mut BTreeMap<String, Vec<usize>>|
     -> bool {
        let p = &universe.packages[i];
        let slot = (p.name.clone(), p.architecture.clone());
        match slots.get(&slot) {
            Some(&existing) => existing == i,
            None => {
                slots.insert(slot, i);
                selected.insert(i);
                queue.push_back(i);
                answers_to.entry(p.name.clone()).or_default().push(i);
                for provided in &p.provides {
                    answers_to.entry(provided.name.clone()).or_default().push(i);
                }
                true
            }
        }
    };

    // Everything asked for is selected before any dependency is looked at, so that a
    // requested package wins over another alternative or provider of the same name.
    for wanted in request {
        let found = universe
            .best_requested(wanted)
            .ok_or_else(|| ResolveError::NotFound {
                name: wanted.name.clone(),
                arch: wanted.arch.clone(),
                detail: describe_near_misses(universe, &wanted.name),
            })?;
        select(found, &mut selected, &mut queue, &mut answers_to);
    }

    while let Some(i) = queue.pop_front() {
        let package = &universe.packages[i];
        let from = universe.effective_arch(&package.architecture);
        for clause in package.pre_depends.iter().chain(&package.depends) {
            let excluded = |r: &Relation| {
                excludes.contains(&r.name) || excludes.contains(&format!("{}:{from}", r.name))
            };
            if clause.iter().any(excluded) {
                continue;
            }
            let already = clause.iter().any(|relation| {
                answers_to.get(&relation.name).is_some_and(|chosen| {
                    chosen
                        .iter()
                        .any(|&c| universe.satisfies(c, relation, from))
                })
            });
            if already {
                continue;
            }
            let mut satisfied = false;
            'alternatives: for relation in clause {
                let candidates = universe
                    .best_real(relation, from)
                    .into_iter()
                    .chain(universe.ranked_providers(relation, from));
                for candidate in candidates {
                    if select(candidate, &mut selected, &mut queue, &mut answers_to) {
                        satisfied = true;
                        break 'alternatives;
                    }
                }
            }
            if !satisfied {
                return Err(ResolveError::Unsatisfiable {
                    package: package.name.clone(),
                    arch: package.architecture.clone(),
                    clause: clause
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" | "),
                });
            }
        }
    }

    let mut packages: Vec<Package> = selected
        .into_iter()
        .map(|i| universe.packages[i].clone())
        .collect();
    packages.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| a.architecture.cmp(&b.architecture))
    });
    Ok(packages)
}

/// Say which architectures a missing request exists for, to make a typo'd arch obvious.
fn describe_near_misses(universe: &Universe, name: &str) -> String {
    match universe.by_name.get(name) {
        None => String::new(),
        Some(found) => {
            let arches: BTreeSet<&str> = found
                .iter()
                .map(|&i| universe.packages[i].architecture.as_str())
                .collect();
            format!(
                " (only for {})",
                arches.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::parse_packages;

    const RISCV64: &str = include_str!("../testdata/Packages-riscv64");
    const AMD64: &str = include_str!("../testdata/Packages-amd64");

    fn universe() -> Universe {
        let mut packages = parse_packages(RISCV64).unwrap();
        packages.extend(parse_packages(AMD64).unwrap());
        Universe::new("riscv64", packages)
    }

    fn request(items: &[(&str, &str)]) -> Vec<Requested> {
        items
            .iter()
            .map(|(name, arch)| Requested {
                name: name.to_string(),
                arch: arch.to_string(),
            })
            .collect()
    }

    fn names(packages: &[Package]) -> Vec<String> {
        packages
            .iter()
            .map(|p| format!("{}:{}={}", p.name, p.architecture, p.version))
            .collect()
    }

    #[test]
    fn arch_all_duplicates_are_kept_once() {
        let u = universe();
        let all_in_both = u.by_name["tzdata"].len();
        assert_eq!(all_in_both, 1, "tzdata (all) is listed by both indices");
    }

    #[test]
    fn first_satisfiable_alternative_wins() {
        // `mailer` depends on "missing-mta | exim4 | postfix": the first does not exist,
        // so exim4 (the first that does) is chosen and postfix is not pulled in.
        let got = resolve(
            &universe(),
            &request(&[("mailer", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        let got = names(&got);
        assert!(got.contains(&"exim4:riscv64=4.98-1".to_string()), "{got:?}");
        assert!(!got.iter().any(|n| n.starts_with("postfix:")), "{got:?}");
    }

    #[test]
    fn an_already_selected_alternative_is_reused() {
        // postfix requested explicitly: mailer's clause is then satisfied by it.
        let got = resolve(
            &universe(),
            &request(&[("mailer", "riscv64"), ("postfix", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        let got = names(&got);
        assert!(!got.iter().any(|n| n.starts_with("exim4:")), "{got:?}");
    }

    #[test]
    fn virtual_packages_resolve_through_provides_with_versions() {
        // rustc depends on `libc-dev` (virtual, provided by libc6-dev) and on
        // `awk-impl (>= 2)`: only the provider with a versioned Provides >= 2 qualifies.
        let got = resolve(
            &universe(),
            &request(&[("rustc", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        let got = names(&got);
        assert!(
            got.contains(&"libc6-dev:riscv64=2.41-12".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"gawk:riscv64=1:5.2.1-2".to_string()),
            "{got:?}"
        );
        assert!(!got.iter().any(|n| n.starts_with("mawk:")), "{got:?}");
    }

    #[test]
    fn version_constraints_skip_unsuitable_versions() {
        // Two versions of libfoo exist; `oldapp` needs `libfoo (<< 2)`.
        let got = resolve(
            &universe(),
            &request(&[("oldapp", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        assert!(names(&got).contains(&"libfoo:riscv64=1.5-1".to_string()));
        let got = resolve(
            &universe(),
            &request(&[("newapp", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        assert!(names(&got).contains(&"libfoo:riscv64=2.1-1".to_string()));
        // newapp's unversioned `awk` has two providers: the higher Priority (mawk) wins.
        assert!(names(&got).iter().any(|n| n.starts_with("mawk:")));
        assert!(!names(&got).iter().any(|n| n.starts_with("gawk:")));
        let err = resolve(
            &universe(),
            &request(&[("impossible", "riscv64")]),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ResolveError::Unsatisfiable { clause, .. } if clause == "libfoo (>> 3)"),
            "{err}"
        );
    }

    #[test]
    fn foreign_arch_packages_take_multiarch_foreign_tools_from_native() {
        let got = resolve(
            &universe(),
            &request(&[("libc6-dev", "riscv64"), ("libc6-dev", "amd64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        let got = names(&got);
        // Multi-Arch: same libraries come per architecture...
        assert!(got.contains(&"libc6:amd64=2.41-12".to_string()), "{got:?}");
        assert!(
            got.contains(&"libc6:riscv64=2.41-12".to_string()),
            "{got:?}"
        );
        // ...while the Multi-Arch: foreign tool is the native one, once.
        assert!(
            got.contains(&"rpcsvc-proto:riscv64=1.4.3-1".to_string()),
            "{got:?}"
        );
        assert!(
            !got.contains(&"rpcsvc-proto:amd64=1.4.3-1".to_string()),
            "{got:?}"
        );
        // An arch-all dependency is shared.
        assert_eq!(got.iter().filter(|n| n.starts_with("tzdata:")).count(), 1);
    }

    #[test]
    fn a_foreign_dependency_on_a_plain_package_stays_in_its_arch() {
        // libc6:amd64 depends on libgcc-s1 (no Multi-Arch foreign): amd64's, not riscv64's.
        let got = resolve(
            &universe(),
            &request(&[("libc6", "amd64")]),
            &BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(
            names(&got),
            [
                "debconf:all=1.5.91",
                "libc6:amd64=2.41-12",
                "libgcc-s1:amd64=14.2.0-19",
                "tzdata:all=2025b-4"
            ]
        );
    }

    #[test]
    fn excluded_names_count_as_satisfied_and_essential_is_not_implicit() {
        let excludes: BTreeSet<String> = ["debconf".to_string()].into();
        let got = resolve(&universe(), &request(&[("tzdata", "riscv64")]), &excludes).unwrap();
        // tzdata depends on "debconf (>= 0.5) | debconf-2.0"; excluded, so nothing else,
        // and the Essential package `dash` in the index is not added either.
        assert_eq!(names(&got), ["tzdata:all=2025b-4"]);
        let err = resolve(
            &universe(),
            &request(&[("tzdata", "riscv64")]),
            &BTreeSet::new(),
        );
        assert!(names(&err.unwrap()).contains(&"debconf:all=1.5.91".to_string()));
    }

    #[test]
    fn an_arch_qualified_exclude_only_applies_to_that_arch() {
        // libc6 depends on libgcc-s1 in both architectures; exclude it for amd64 only.
        let excludes: BTreeSet<String> =
            ["libgcc-s1:amd64".to_string(), "tzdata".to_string()].into();
        let got = resolve(
            &universe(),
            &request(&[("libc6", "amd64"), ("libc6", "riscv64")]),
            &excludes,
        )
        .unwrap();
        assert_eq!(
            names(&got),
            [
                "libc6:amd64=2.41-12",
                "libc6:riscv64=2.41-12",
                "libgcc-s1:riscv64=14.2.0-19"
            ]
        );
    }

    #[test]
    fn any_qualified_dependencies_need_multiarch_allowed_across_arches() {
        let stanza = |name: &str, arch: &str, extra: &str| {
            format!(
                "Package: {name}\nVersion: 1\nArchitecture: {arch}\n{extra}Filename: pool/{name}_{arch}.deb\n\
                 Size: 1\nSHA256: {}\n\n",
                "0".repeat(64)
            )
        };
        let text = [
            stanza("tool", "amd64", "Depends: perl:any, helper:any\n"),
            stanza("perl", "riscv64", "Multi-Arch: allowed\n"),
            stanza("perl", "amd64", "Multi-Arch: allowed\n"),
            stanza("helper", "riscv64", ""),
        ]
        .concat();
        let universe = Universe::new("riscv64", parse_packages(&text).unwrap());
        // perl:any takes the native perl; helper:any cannot cross architectures.
        let err = resolve(&universe, &request(&[("tool", "amd64")]), &BTreeSet::new()).unwrap_err();
        assert!(
            matches!(&err, ResolveError::Unsatisfiable { clause, .. } if clause == "helper:any"),
            "{err}"
        );
        let excludes: BTreeSet<String> = ["helper".to_string()].into();
        let got = resolve(&universe, &request(&[("tool", "amd64")]), &excludes).unwrap();
        assert_eq!(names(&got), ["perl:riscv64=1", "tool:amd64=1"]);
    }

    #[test]
    fn a_missing_request_says_which_arches_exist() {
        let err = resolve(
            &universe(),
            &request(&[("exim4", "amd64")]),
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "requested package `exim4` (amd64) is not in the indices (only for riscv64)"
        );
    }

    #[test]
    fn resolution_is_independent_of_index_order() {
        let request = request(&[
            ("rustc", "riscv64"),
            ("libc6-dev", "amd64"),
            ("mailer", "riscv64"),
        ]);
        let forward = resolve(&universe(), &request, &BTreeSet::new()).unwrap();
        let mut reversed = parse_packages(AMD64).unwrap();
        reversed.extend(parse_packages(RISCV64).unwrap());
        reversed.reverse();
        let backward = resolve(
            &Universe::new("riscv64", reversed),
            &request,
            &BTreeSet::new(),
        )
        .unwrap();
        assert_eq!(forward, backward);
    }
}
