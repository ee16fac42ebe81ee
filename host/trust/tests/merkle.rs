//! The RFC 9162 tree against a naive recursive definition, and every proof for n = 1..=70.

use cmbuild_store::hex;
use cmbuild_trust::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion, Hash,
};
use sha2::{Digest, Sha256};

/// MTH straight from RFC 9162 §2.1.1, written independently of the crate (no shared helper).
fn naive_mth(data: &[Vec<u8>]) -> Hash {
    match data.len() {
        0 => Sha256::digest([]).into(),
        1 => {
            let mut h = Sha256::new();
            h.update([0x00]);
            h.update(&data[0]);
            h.finalize().into()
        }
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            let mut h = Sha256::new();
            h.update([0x01]);
            h.update(naive_mth(&data[..k]));
            h.update(naive_mth(&data[k..]));
            h.finalize().into()
        }
    }
}

fn data(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
}

fn leaves(d: &[Vec<u8>]) -> Vec<Hash> {
    d.iter().map(|x| leaf_hash(x)).collect()
}

#[test]
fn tree_hashes_match_the_naive_definition() {
    assert_eq!(root(&[]), naive_mth(&[]));
    for n in 1..=70 {
        let d = data(n);
        assert_eq!(root(&leaves(&d)), naive_mth(&d), "n = {n}");
    }
}

#[test]
fn known_vector_of_rfc_6962_test_data() {
    // The well-known root of the 8-leaf test tree used by Certificate Transparency
    // implementations (leaves: "", 0x00, 0x10, 0x2021, 0x3031, 0x40414243, 0x5051525354555657,
    // 0x606162636465666768696a6b6c6d6e6f).
    let d: Vec<Vec<u8>> = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|h| {
        let mut v = Vec::new();
        for i in (0..h.len()).step_by(2) {
            v.push(u8::from_str_radix(&h[i..i + 2], 16).unwrap());
        }
        v
    })
    .collect();
    assert_eq!(
        hex::encode(root(&leaves(&d))),
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    );
    assert_eq!(root(&leaves(&d)), naive_mth(&d));
}

#[test]
fn every_inclusion_proof_verifies_and_wrong_ones_do_not() {
    for n in 1..=70u64 {
        let d = data(n as usize);
        let l = leaves(&d);
        let r = naive_mth(&d);
        for i in 0..n {
            let proof = inclusion_proof(i, &l).unwrap();
            assert!(
                verify_inclusion(i, n, &l[i as usize], &proof, &r),
                "n={n} i={i}"
            );
            // Wrong index, wrong leaf, wrong size, altered path, truncated and padded paths.
            if n > 1 {
                let j = (i + 1) % n;
                assert!(
                    !verify_inclusion(j, n, &l[i as usize], &proof, &r),
                    "index n={n} i={i}"
                );
                assert!(
                    !verify_inclusion(i, n, &l[j as usize], &proof, &r),
                    "leaf n={n} i={i}"
                );
                let mut bad = proof.clone();
                bad[0][0] ^= 1;
                assert!(!verify_inclusion(i, n, &l[i as usize], &bad, &r));
                assert!(!verify_inclusion(
                    i,
                    n,
                    &l[i as usize],
                    &proof[..proof.len() - 1],
                    &r
                ));
            }
            // The proof of a tree of n leaves does not prove inclusion in the tree of n + 1.
            let bigger = naive_mth(&data(n as usize + 1));
            assert!(!verify_inclusion(i, n + 1, &l[i as usize], &proof, &bigger));
            let mut long = proof.clone();
            long.push([7; 32]);
            assert!(!verify_inclusion(i, n, &l[i as usize], &long, &r));
            assert!(!verify_inclusion(n, n, &l[i as usize], &proof, &r));
        }
        assert!(inclusion_proof(n, &l).is_err());
    }
}

#[test]
fn every_consistency_proof_verifies_and_wrong_ones_do_not() {
    for n in 1..=70u64 {
        let d = data(n as usize);
        let l = leaves(&d);
        let new_root = naive_mth(&d);
        for m in 0..=n {
            let old_root = naive_mth(&d[..m as usize]);
            let proof = consistency_proof(m, &l).unwrap();
            assert!(
                verify_consistency(m, n, &old_root, &new_root, &proof),
                "m={m} n={n}"
            );
            if m == 0 || m == n {
                assert!(proof.is_empty());
                continue;
            }
            // A rewritten prefix: the old root of a different history.
            let mut other = d[..m as usize].to_vec();
            other[0] = b"rewritten".to_vec();
            assert!(!verify_consistency(
                m,
                n,
                &naive_mth(&other),
                &new_root,
                &proof
            ));
            // A wrong new root, sizes, or path.
            assert!(!verify_consistency(m, n, &old_root, &old_root, &proof));
            let bigger = naive_mth(&data(n as usize + 1));
            assert!(!verify_consistency(m, n + 1, &old_root, &bigger, &proof));
            if m > 1 {
                assert!(!verify_consistency(m - 1, n, &old_root, &new_root, &proof));
            }
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k][31] ^= 0x80;
                assert!(
                    !verify_consistency(m, n, &old_root, &new_root, &bad),
                    "m={m} n={n} k={k}"
                );
            }
            assert!(!verify_consistency(m, n, &old_root, &new_root, &[]));
            assert!(!verify_consistency(
                m,
                n,
                &old_root,
                &new_root,
                &proof[..proof.len() - 1]
            ));
        }
        assert!(consistency_proof(n + 1, &l).is_err());
    }
}
