//! The outside programs the tests drive — Chromium, coturn, nginx, openssl — found on the
//! machine or, on a Debian machine where the tests run as root, installed with apt-get the
//! first time a test needs them. Several test threads (and test binaries) may ask at once: a
//! lock file serialises the installs, and each waiter looks again once it holds the lock.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serialises installs between processes (cargo may run test binaries side by side).
const LOCK_FILE: &str = "/tmp/kursrelay-test-apt.lock";

/// And between the threads of one test binary.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// The first of `candidates` that exists, installing Debian `package` if none does.
pub fn require(what: &str, candidates: &[&str], package: &str) -> PathBuf {
    if let Some(p) = find(candidates) {
        return p;
    }
    let _inner = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let lock = File::create(LOCK_FILE).expect("create the apt lock file");
    lock.lock().expect("take the apt lock file");
    if let Some(p) = find(candidates) {
        return p; // another process installed it while we waited
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        root && Path::new("/usr/bin/apt-get").exists(),
        "{what} is missing and cannot be installed here (needs root on Debian): \
         install the Debian package `{package}` (apt-get install -y {package})"
    );
    eprintln!("tests: installing {package} for {what} (apt-get)…");
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("run apt-get");
        assert!(status.success(), "apt-get {args:?} failed: {status}");
    };
    apt(&["update", "-qq"]);
    apt(&["install", "-y", "-qq", package]);
    find(candidates).unwrap_or_else(|| panic!("{package} installed but {what} still not found"))
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Headless Chromium: `KURSRELAY_CHROMIUM`, else Debian's package.
pub fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("KURSRELAY_CHROMIUM") {
        return PathBuf::from(p);
    }
    require(
        "Chromium (browser tests)",
        &[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ],
        "chromium",
    )
}

/// coturn's server binary.
pub fn turnserver() -> PathBuf {
    require("coturn (TURN tests)", &["/usr/bin/turnserver"], "coturn")
}

/// nginx (the reverse-proxy test).
pub fn nginx() -> PathBuf {
    require(
        "nginx (reverse-proxy test)",
        &["/usr/sbin/nginx"],
        "nginx-light",
    )
}

/// The folder of PostgreSQL's server programs (`initdb`, `postgres`, `pg_dump`): Debian's
/// `postgresql` package puts them in /usr/lib/postgresql/<major>/bin, off the PATH.
pub fn postgres_bin_dir() -> PathBuf {
    let candidates: Vec<String> = (13..=20)
        .rev()
        .map(|v| format!("/usr/lib/postgresql/{v}/bin/initdb"))
        .collect();
    let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let initdb = require(
        "PostgreSQL (KURSRELAY_TEST_DB=postgres)",
        &refs,
        "postgresql",
    );
    initdb
        .parent()
        .expect("initdb lives in a bin folder")
        .to_owned()
}
