//! The initramfs archive read back by GNU cpio, the reference newc reader.

use std::process::Command;

use cmbuild_image::cpio::{write_cpio, CharDevice};
use cmbuild_image::rootfs::Tree;

#[test]
fn gnu_cpio_lists_and_extracts_what_was_written() {
    let mut tree = Tree::new();
    tree.add_file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
        .unwrap();
    tree.add_file("lib/modules/a.ko", 0o644, vec![0x5a; 4097])
        .unwrap();
    tree.add_symlink("bin/sh", "busybox").unwrap();
    tree.add_dir("dev", 0o755).unwrap();
    let console = CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("initrd.cpio");
    write_cpio(
        &tree,
        &[console],
        946_684_800,
        &mut std::fs::File::create(&archive).unwrap(),
    )
    .unwrap();

    let list = |verbose: bool| {
        let mut command = Command::new("cpio");
        command.args(["-t", "--quiet", "-F"]).arg(&archive);
        if verbose {
            command.arg("-v");
        }
        let output = command
            .output()
            .expect("cpio is installed (.ci/install-deps)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // Parents before children, sorted, the device last, no root entry.
    assert_eq!(
        list(false).lines().collect::<Vec<_>>(),
        [
            "bin",
            "bin/sh",
            "dev",
            "init",
            "lib",
            "lib/modules",
            "lib/modules/a.ko",
            "dev/console"
        ]
    );
    let text = list(true);
    assert!(text.contains("crw-------"), "no console device in:\n{text}");
    assert!(text.contains("bin/sh -> busybox"), "{text}");
    assert!(text.contains("Jan  1  2000"), "mtime not fixed:\n{text}");

    // Extraction as a non-root-aware reader still gives the same bytes and modes.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Everything but the device node (creating one needs privileges a test may lack).
    let extract = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&archive)
        .args(["init", "bin/sh", "lib/modules/a.ko"])
        .stdin(std::process::Stdio::null())
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("lib/modules/a.ko")).unwrap(),
        vec![0x5a; 4097]
    );
    assert_eq!(
        std::fs::read(out.join("init")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("init"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(out.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
}
