//! The Debian half of `cmbuild vendor`: every package of the guest-image lock this cmbuild
//! was built with becomes a [`Wanted`] file for the vendor fetch loop (which verifies its
//! sha256), and afterwards each must sit in the mirror under exactly its locked CID.

use anyhow::{ensure, Context};
use cmbuild_image::lock::{self, Lock};
use cmbuild_store::mirror::{Key, Mirror};

use super::image_lock::human_size;
use super::vendor::Wanted;

/// The compiled-in guest-image lock and its packages as files to fetch.
pub fn wanted_guest_packages() -> anyhow::Result<(Lock, Vec<Wanted>)> {
    let lock = lock::shipped_lock().context("reading the compiled-in guest-image lock")?;
    let wanted = wanted_from_lock(&lock);
    eprintln!(
        "cmbuild vendor: guest image: {} Debian {} packages ({})",
        lock.packages.len(),
        lock.release_version,
        human_size(lock.total_size())
    );
    Ok((lock, wanted))
}

fn wanted_from_lock(lock: &Lock) -> Vec<Wanted> {
    lock.packages
        .iter()
        .map(|p| Wanted {
            key: Key::deb(&p.name, &p.version, &p.architecture),
            url: lock.url_of(p),
            sha256: p.sha256,
            size: Some(p.size),
        })
        .collect()
}

/// After fetching: every locked package is in the mirror, intact, under its locked CID
/// (the fetch loop checked the sha256; this checks the CID the image build will ask for).
pub fn check_guest_packages(mirror: &Mirror, lock: &Lock) -> anyhow::Result<()> {
    let index = mirror.load_index()?;
    for p in &lock.packages {
        let key = Key::deb(&p.name, &p.version, &p.architecture);
        let entry = index
            .get(&key)
            .with_context(|| format!("{key} is missing from the mirror index after vendoring"))?;
        ensure!(
            entry.cid == p.cid && entry.sha256 == p.sha256 && entry.size == p.size,
            "{} is in the mirror as {} (sha256 {}, {} bytes), but the guest-image lock pins {} \
             (sha256 {}, {} bytes)",
            p.filename,
            entry.cid,
            entry.sha256,
            entry.size,
            p.cid,
            p.sha256,
            p.size
        );
        ensure!(
            mirror.has_valid(&entry.cid)?,
            "{} ({}) is not intact in the mirror",
            p.filename,
            entry.cid
        );
    }
    eprintln!(
        "cmbuild vendor: guest image: all {} Debian packages in the mirror under their locked CIDs",
        lock.packages.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmbuild_store::mirror::Entry;

    #[test]
    fn every_locked_package_is_wanted_with_its_pins() {
        let lock = lock::shipped_lock().unwrap();
        let wanted = wanted_from_lock(&lock);
        assert_eq!(wanted.len(), lock.packages.len());
        for (w, p) in wanted.iter().zip(&lock.packages) {
            assert_eq!(w.sha256, p.sha256);
            assert_eq!(w.size, Some(p.size));
            assert_eq!(
                w.url,
                format!("http://deb.debian.org/debian/{}", p.filename)
            );
            assert_eq!(
                w.key.to_string(),
                format!("deb/{}/{}/{}", p.name, p.version, p.architecture)
            );
        }
    }

    #[test]
    fn a_package_stored_under_another_cid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let bytes = b"fake deb tzdata 2025b-4 all\n";
        let stored = mirror.put_bytes(bytes).unwrap();
        let mut lock = lock::shipped_lock().unwrap();
        lock.packages.truncate(1);
        let p = &mut lock.packages[0];
        p.sha256 = stored.sha256;
        p.size = stored.size;
        p.cid = stored.cid;
        let key = Key::deb(&p.name, &p.version, &p.architecture);
        mirror
            .record([(key.clone(), Entry::new(&stored, None))])
            .unwrap();
        check_guest_packages(&mirror, &lock).unwrap();
        // The lock pins another CID for the same bytes: refused, naming both.
        let other = cmbuild_store::cid::cid_of_bytes(b"other");
        lock.packages[0].cid = other;
        let err = check_guest_packages(&mirror, &lock)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&other.to_string()) && err.contains(&stored.cid.to_string()),
            "{err}"
        );
        // A blob that rotted after the fetch is refused too.
        lock.packages[0].cid = stored.cid;
        std::fs::write(mirror.blob_path(&stored.cid), b"rotten").unwrap();
        assert!(check_guest_packages(&mirror, &lock).is_err());
    }
}
