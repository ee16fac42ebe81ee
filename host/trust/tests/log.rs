//! The transparency log on disk: appends, signed heads, proofs, and the refusals.

use cmbuild_store::hex;
use cmbuild_trust::keys::SecretKey;
use cmbuild_trust::merkle;
use cmbuild_trust::tlog::{ConsistencyProof, InclusionProof, Log, LogError, TreeHead};

fn att(i: usize) -> Vec<u8> {
    format!("{{\"attestation\":{i}}}\n").into_bytes()
}

#[test]
fn append_prove_and_verify_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let key = SecretKey::from_seed(&[1; 32]);
    let mut log = Log::open_or_create(&dir, &key).unwrap();
    assert_eq!(log.size(), 0);
    assert!(log.head().unwrap().is_none());
    let mut heads = Vec::new();
    for i in 0..7 {
        heads.push(log.append(&key, &[att(i)]).unwrap());
    }
    let head = log.append(&key, &[att(7), att(8)]).unwrap();
    assert_eq!(head.tree_size, 9);
    // Reopened from disk, the log is the same.
    let log = Log::open(&dir).unwrap();
    assert_eq!(log.head().unwrap().unwrap(), head);
    assert_eq!(log.audit().unwrap(), vec![1, 2, 3, 4, 5, 6, 7, 9]);
    let pubkey = log.key();
    for i in 0..9 {
        // Through the file format, as shipped next to a release.
        let proof = log.prove_inclusion(&att(i), None).unwrap();
        let path = tmp.path().join(format!("incl{i}.json"));
        std::fs::write(&path, proof.to_file_bytes().unwrap()).unwrap();
        let proof = InclusionProof::read(&path).unwrap();
        proof.verify(&pubkey, Some(&att(i)), Some(&head)).unwrap();
        proof.verify(&pubkey, None, None).unwrap();
    }
    // Inclusion in an older head.
    let old = log.prove_inclusion(&att(2), Some(4)).unwrap();
    old.verify(&pubkey, Some(&att(2)), Some(&heads[3])).unwrap();
    for from in 1..=7u64 {
        let proof = log.prove_consistency(from, None).unwrap();
        let path = tmp.path().join(format!("cons{from}.json"));
        std::fs::write(&path, proof.to_file_bytes().unwrap()).unwrap();
        let proof = ConsistencyProof::read(&path).unwrap();
        proof.verify(&pubkey, None).unwrap();
        proof
            .verify(&pubkey, Some(&heads[from as usize - 1]))
            .unwrap();
    }
    assert!(matches!(
        log.prove_consistency(8, None),
        Err(LogError::NoHead(8))
    ));
}

#[test]
fn wrong_inclusion_proofs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed(&[1; 32]);
    let mut log = Log::open_or_create(tmp.path(), &key).unwrap();
    for i in 0..5 {
        log.append(&key, &[att(i)]).unwrap();
    }
    let pubkey = log.key();
    let good = log.prove_inclusion(&att(3), None).unwrap();
    good.verify(&pubkey, Some(&att(3)), None).unwrap();
    // Another attestation than the one proven.
    assert!(good.verify(&pubkey, Some(&att(2)), None).is_err());
    // A wrong index.
    let mut bad = good.clone();
    bad.leaf_index = 2;
    assert!(matches!(
        bad.verify(&pubkey, None, None),
        Err(LogError::Refused(_))
    ));
    // A wrong path hash.
    let mut bad = good.clone();
    bad.path[0] = "00".repeat(32);
    assert!(matches!(
        bad.verify(&pubkey, None, None),
        Err(LogError::Refused(_))
    ));
    // A claimed entry that was never logged, with a real path.
    let mut bad = good.clone();
    bad.entry = "11".repeat(32);
    assert!(bad.verify(&pubkey, None, None).is_err());
    // A head whose root was changed no longer carries a valid signature.
    let mut bad = good.clone();
    bad.tree_head.root_hash = "22".repeat(32);
    assert!(matches!(
        bad.verify(&pubkey, None, None),
        Err(LogError::BadSignature(5))
    ));
    // Another log's key.
    let other = SecretKey::from_seed(&[2; 32]).public();
    assert!(matches!(
        good.verify(&other, None, None),
        Err(LogError::WrongKey { .. })
    ));
    // An attestation that is not in the log has no proof.
    assert!(matches!(
        log.prove_inclusion(&att(99), None),
        Err(LogError::NotLogged(_))
    ));
    // Malformed path entries are refused, not panicked on.
    let mut bad = good;
    bad.path.push("zz".into());
    assert!(matches!(
        bad.verify(&pubkey, None, None),
        Err(LogError::Malformed { .. })
    ));
}

#[test]
fn a_log_rewritten_after_a_head_was_published_cannot_prove_consistency() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed(&[1; 32]);
    let honest_dir = tmp.path().join("honest");
    let mut honest = Log::open_or_create(&honest_dir, &key).unwrap();
    honest.append(&key, &[att(0), att(1), att(2)]).unwrap();
    let published: TreeHead = honest.head().unwrap().unwrap();
    // The operator (holding the key) rebuilds the log without entry 1, re-signs, grows it.
    let forged_dir = tmp.path().join("forged");
    let mut forged = Log::open_or_create(&forged_dir, &key).unwrap();
    forged.append(&key, &[att(0), att(66), att(2)]).unwrap();
    forged.append(&key, &[att(3), att(4)]).unwrap();
    let proof = forged.prove_consistency(3, None).unwrap();
    // The forged log is consistent with itself...
    proof.verify(&key.public(), None).unwrap();
    // ...but not with the head a verifier saw published.
    match proof.verify(&key.public(), Some(&published)) {
        Err(LogError::Refused(msg)) => assert!(msg.contains("rewritten"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // The honest log's growth is consistent with it.
    honest.append(&key, &[att(3), att(4)]).unwrap();
    honest
        .prove_consistency(3, None)
        .unwrap()
        .verify(&key.public(), Some(&published))
        .unwrap();
}

#[test]
fn rewriting_the_files_in_place_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed(&[1; 32]);
    let mut log = Log::open_or_create(tmp.path(), &key).unwrap();
    log.append(&key, &[att(0), att(1)]).unwrap();
    log.append(&key, &[att(2)]).unwrap();
    // Edit an entry: the current head no longer matches.
    let leaves = std::fs::read_to_string(tmp.path().join("leaves")).unwrap();
    let first = leaves.lines().next().unwrap().to_owned();
    std::fs::write(
        tmp.path().join("leaves"),
        leaves.replacen(&first, &"ab".repeat(32), 1),
    )
    .unwrap();
    assert!(matches!(
        Log::open(tmp.path()),
        Err(LogError::Rewritten { size: 3, .. })
    ));
    // Rewrite the entry and re-sign the current head: opening succeeds, but the audit
    // catches it with the older head of size 2, which is never rewritten.
    let rewritten = leaves.replacen(&first, &"ab".repeat(32), 1);
    std::fs::write(tmp.path().join("leaves"), &rewritten).unwrap();
    let entries: Vec<[u8; 32]> = rewritten
        .lines()
        .map(|l| hex::decode_array::<32>(l).unwrap())
        .collect();
    let leaf_hashes: Vec<_> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    let resigned = TreeHead::sign(&key, 3, &merkle::root(&leaf_hashes));
    std::fs::write(
        tmp.path().join("heads/3.json"),
        resigned.to_file_bytes().unwrap(),
    )
    .unwrap();
    let log = Log::open(tmp.path()).unwrap();
    assert!(matches!(
        log.audit(),
        Err(LogError::Rewritten { size: 2, .. })
    ));
    // Truncating the log below its head is detected too.
    std::fs::write(tmp.path().join("leaves"), format!("{first}\n")).unwrap();
    assert!(matches!(
        Log::open(tmp.path()),
        Err(LogError::Rewritten { .. })
    ));
}

#[test]
fn appends_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed(&[1; 32]);
    let mut log = Log::open_or_create(tmp.path(), &key).unwrap();
    log.append(&key, &[att(0)]).unwrap();
    assert!(matches!(
        log.append(&key, &[att(0)]),
        Err(LogError::AlreadyLogged { index: 0, .. })
    ));
    assert!(matches!(
        log.append(&key, &[att(1), att(1)]),
        Err(LogError::AlreadyLogged { index: 1, .. })
    ));
    // One appender at a time; the lock goes with the appender.
    assert!(matches!(
        Log::open_or_create(tmp.path(), &key),
        Err(LogError::Locked(_))
    ));
    drop(log);
    let mut log = Log::open_or_create(tmp.path(), &key).unwrap();
    let stranger = SecretKey::from_seed(&[2; 32]);
    assert!(matches!(
        log.append(&stranger, &[att(1)]),
        Err(LogError::WrongKey { .. })
    ));
    drop(log);
    assert!(matches!(
        Log::open_or_create(tmp.path(), &stranger),
        Err(LogError::WrongKey { .. })
    ));
    assert_eq!(Log::open(tmp.path()).unwrap().size(), 1);
    assert!(matches!(
        Log::open(&tmp.path().join("nothing")),
        Err(LogError::NoLog(_))
    ));
}
