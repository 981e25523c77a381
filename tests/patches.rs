//! patches/ holds two upstream crates used through `[patch.crates-io]`. This proves that each
//! copy is the published crate plus its KURSRELAY.diff and nothing else (scripts/patches.sh),
//! that a change made beside the diff is caught, and that the documented update step
//! re-creates the copy from the published crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(root().join("scripts/patches.sh"))
        .args(args)
        .output()
        .expect("run scripts/patches.sh")
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

#[test]
fn each_patched_crate_is_the_published_one_plus_its_diff() {
    let out = script(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for crate_name in ["rtc ", "rtc-dtls "] {
        assert!(text.contains(crate_name), "{text}");
    }
}

#[test]
fn a_change_beside_the_diff_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &root().join("patches/rtc-dtls"),
        &dir.path().join("rtc-dtls"),
    );
    let file = dir.path().join("rtc-dtls/src/flight/flight0.rs");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(
            "state.srtp_protection_profile = profile;",
            "state.srtp_protection_profile = profile; // changed",
            1,
        ),
    )
    .unwrap();
    let out = script(&["check", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered copy passed the check");
    assert!(
        err.contains("flight0.rs") && err.contains("// changed"),
        "{err}"
    );

    // A file the published crate does not have is caught too.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &root().join("patches/rtc-dtls"),
        &dir.path().join("rtc-dtls"),
    );
    std::fs::write(dir.path().join("rtc-dtls/src/extra.rs"), "").unwrap();
    let out = script(&["check", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("extra.rs"));
}
