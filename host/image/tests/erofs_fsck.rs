//! The EROFS writer's output, checked by erofs-utils' own reader: `fsck.erofs --extract`
//! must accept the image and give back exactly the tree that went in.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cmbuild_image::erofs::{write_erofs, ErofsOptions};
use cmbuild_image::rootfs::Tree;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

fn sample_tree() -> Tree {
    let mut tree = Tree::new();
    tree.add_file(
        "usr/bin/tool",
        0o755,
        (0..20_000u32).map(|i| (i * 7) as u8).collect(),
    )
    .unwrap();
    tree.add_file("usr/bin/setuid", 0o4755, b"#!/bin/sh\n".to_vec())
        .unwrap();
    tree.add_file("etc/empty", 0o600, Vec::new()).unwrap();
    tree.add_file("etc/exact", 0o644, vec![9; 8192]).unwrap();
    tree.add_file("etc/bigtail", 0o644, vec![3; 4096 + 3000])
        .unwrap();
    tree.add_symlink("bin", "usr/bin").unwrap();
    tree.add_symlink("usr/lib/long", &"x/".repeat(900)).unwrap();
    tree.add_dir("tmp", 0o1777).unwrap();
    for i in 0..500 {
        tree.add_file(
            &format!("many/entry-with-a-longer-name-{i:04}"),
            0o644,
            vec![i as u8; i],
        )
        .unwrap();
    }
    tree
}

/// Read back a directory into (path -> description) for comparison.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let text = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&path).unwrap();
                // fsck.erofs chowns after chmod when extracting as root, and the kernel
                // clears set-id bits on chown: they cannot survive the round trip.
                let mode = mode & !0o6000;
                format!(
                    "file {mode:o} {} {:?}",
                    data.len(),
                    &data[..data.len().min(16)]
                )
            };
            out.insert(rel, text);
        }
    }
    out
}

#[test]
fn fsck_erofs_accepts_the_image_and_extracts_the_same_tree() {
    if !have("fsck.erofs") {
        panic!("fsck.erofs is missing: run .ci/install-deps (erofs-utils)");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("root.erofs");
    let tree = sample_tree();
    let options = ErofsOptions {
        uuid: [0x42; 16],
        volume_name: "cmbuild-test".into(),
        build_time: 1_700_000_000,
    };
    write_erofs(&tree, &options, &mut std::fs::File::create(&image).unwrap()).unwrap();

    let extracted = dir.path().join("out");
    let result = Command::new("fsck.erofs")
        .arg(format!("--extract={}", extracted.display()))
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "fsck.erofs refused the image: {}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );

    // The same tree, written by hand into a directory, is what must come back.
    let expected_root = dir.path().join("expected");
    for (path, node) in tree.nodes() {
        let target = expected_root.join(path);
        match &node.kind {
            cmbuild_image::rootfs::Kind::Dir => std::fs::create_dir_all(&target).unwrap(),
            cmbuild_image::rootfs::Kind::File(data) => std::fs::write(&target, &**data).unwrap(),
            cmbuild_image::rootfs::Kind::Symlink(to) => {
                std::os::unix::fs::symlink(to, &target).unwrap()
            }
        }
        if !matches!(node.kind, cmbuild_image::rootfs::Kind::Symlink(_)) {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(node.mode)).unwrap();
        }
    }
    let (got, want) = (describe(&extracted), describe(&expected_root));
    let differing: Vec<_> = want
        .keys()
        .chain(got.keys())
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k}: got {:?}, want {:?}", got.get(k), want.get(k)))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "extracted tree differs: {differing:#?}"
    );
    assert_eq!(got.len(), tree.nodes().len() - 1);

    // dump.erofs agrees on the superblock's view of the image.
    if have("dump.erofs") {
        let dump = Command::new("dump.erofs")
            .arg("-s")
            .arg(&image)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.status.success(), "dump.erofs failed: {text}");
        let blocks = std::fs::metadata(&image).unwrap().len() / 4096;
        let expected = format!("Filesystem blocks:                            {blocks}\n");
        assert!(
            text.contains(&expected),
            "dump.erofs disagrees on the size: {text}"
        );
        assert!(
            text.contains("Filesystem root nid:                          0\n"),
            "{text}"
        );
    }
}
