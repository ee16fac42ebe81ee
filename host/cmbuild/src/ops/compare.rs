//! `cmbuild compare A B`: the comparison of two build directories (see
//! [`crate::compare`]), with CIDs computed as `cmbuild cid` computes them.

use std::path::Path;

use crate::compare::{compare_builds, CompareError, Report};

/// The CID of a file as `cmbuild cid` prints it.
pub fn cid_of_file(path: &Path) -> std::io::Result<cmbuild_store::cid::Cid> {
    cmbuild_store::cid::cid_of_file(path)
}

/// Compares build directories `a` and `b`.
pub fn compare(a: &Path, b: &Path) -> Result<Report, CompareError> {
    compare_builds(a, b, &cid_of_file)
}
