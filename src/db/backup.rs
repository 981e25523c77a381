//! `kursrelay db backup FILE`: a consistent copy of the live database with SQLite's online
//! backup API (`sqlite3_backup_*`), safe while the server writes: the copy is taken inside one
//! read transaction, and in WAL mode the server's writers are not blocked meanwhile. The copy
//! is written next to FILE and renamed into place, so FILE is never half-written.
//!
//! This is the crate's only `unsafe`: sqlx does not expose the backup API, so the two
//! connections are opened with libsqlite3-sys directly (the library sqlx links).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;

use libsqlite3_sys as ffi;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no database at {0} (db.path)")]
    NoSource(PathBuf),
    #[error("{0} already exists; choose a new file name (a backup never overwrites)")]
    Exists(PathBuf),
    #[error("the folder of {0} does not exist")]
    NoFolder(PathBuf),
    #[error("{0} is not a usable file name")]
    BadName(PathBuf),
    #[error("cannot open {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("the backup failed: {0}")]
    Step(String),
    #[error("cannot move the finished backup to {path}: {source}")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An open sqlite3 handle, closed on drop.
struct Handle(*mut ffi::sqlite3);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from sqlite3_open_v2 and is closed exactly once (sqlite3_close
        // accepts a null handle and one whose open failed); every backup object on it has been
        // finished by then.
        unsafe {
            ffi::sqlite3_close(self.0);
        }
    }
}

impl Handle {
    fn open(path: &Path, flags: i32) -> Result<Handle, BackupError> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| BackupError::BadName(path.to_owned()))?;
        let mut db = ptr::null_mut();
        // SAFETY: c_path is a valid C string and db a valid out-pointer.
        let rc = unsafe { ffi::sqlite3_open_v2(c_path.as_ptr(), &mut db, flags, ptr::null()) };
        let handle = Handle(db);
        if rc != ffi::SQLITE_OK {
            return Err(BackupError::Open {
                path: path.to_owned(),
                message: handle.message(rc),
            });
        }
        // Wait (up to 5 s) instead of failing while the server holds a lock briefly.
        // SAFETY: db is an open handle.
        unsafe {
            ffi::sqlite3_busy_timeout(db, 5_000);
        }
        Ok(handle)
    }

    fn message(&self, rc: i32) -> String {
        // SAFETY: sqlite3_errmsg returns a string owned by the handle (or a static one for a
        // null handle); it is copied before the handle can change.
        unsafe {
            let msg = if self.0.is_null() {
                ffi::sqlite3_errstr(rc)
            } else {
                ffi::sqlite3_errmsg(self.0)
            };
            if msg.is_null() {
                format!("SQLite error {rc}")
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            }
        }
    }
}

/// Copies the database at `source` to the new file `dest`.
pub fn backup(source: &Path, dest: &Path) -> Result<(), BackupError> {
    if !source.is_file() {
        return Err(BackupError::NoSource(source.to_owned()));
    }
    if dest.exists() {
        return Err(BackupError::Exists(dest.to_owned()));
    }
    let folder = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(BackupError::BadName(dest.to_owned())),
    };
    if !folder.is_dir() {
        return Err(BackupError::NoFolder(dest.to_owned()));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| BackupError::BadName(dest.to_owned()))?;
    let mut partial_name = name.to_os_string();
    partial_name.push(".partial");
    let partial = folder.join(partial_name);
    let _ = std::fs::remove_file(&partial);
    let result = copy(source, &partial);
    if let Err(err) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    std::fs::rename(&partial, dest).map_err(|source| BackupError::Rename {
        path: dest.to_owned(),
        source,
    })
}

fn copy(source: &Path, dest: &Path) -> Result<(), BackupError> {
    // Read-write, not read-only: a reader of a WAL database may need to recover the WAL index.
    let src = Handle::open(source, ffi::SQLITE_OPEN_READWRITE)?;
    let dst = Handle::open(dest, ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE)?;
    let main = c"main";
    // SAFETY: both handles are open; the backup object is finished before they are dropped.
    let step = unsafe {
        let b = ffi::sqlite3_backup_init(dst.0, main.as_ptr(), src.0, main.as_ptr());
        if b.is_null() {
            return Err(BackupError::Step(dst.message(ffi::SQLITE_ERROR)));
        }
        // -1: every page in one step, so the copy comes from one read transaction (one
        // consistent moment), not from pages read at different times.
        let mut rc = ffi::sqlite3_backup_step(b, -1);
        let mut tries = 0;
        while (rc == ffi::SQLITE_BUSY || rc == ffi::SQLITE_LOCKED) && tries < 50 {
            tries += 1;
            ffi::sqlite3_sleep(100);
            rc = ffi::sqlite3_backup_step(b, -1);
        }
        let finish = ffi::sqlite3_backup_finish(b);
        if rc != ffi::SQLITE_DONE {
            rc
        } else {
            finish
        }
    };
    if step != ffi::SQLITE_OK && step != ffi::SQLITE_DONE {
        return Err(BackupError::Step(dst.message(step)));
    }
    // The copy is a plain rollback-journal database: one file, nothing beside it.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_destinations_and_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        std::fs::write(dir.path().join("taken.db"), b"x").unwrap();
        let cases: [(PathBuf, PathBuf, &str); 3] = [
            (
                dir.path().join("none.db"),
                dir.path().join("b.db"),
                "there is no database",
            ),
            (db.clone(), dir.path().join("taken.db"), "already exists"),
            (
                db.clone(),
                dir.path().join("no/such/dir/b.db"),
                "does not exist",
            ),
        ];
        std::fs::write(&db, b"").unwrap();
        for (src, dst, want) in cases {
            let err = backup(&src, &dst).unwrap_err().to_string();
            assert!(err.contains(want), "{src:?} -> {dst:?}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("junk.db");
        std::fs::write(&src, vec![7u8; 8192]).unwrap();
        let dst = dir.path().join("copy.db");
        let err = backup(&src, &dst).unwrap_err().to_string();
        assert!(
            err.contains("backup failed") || err.contains("cannot open"),
            "{err}"
        );
        assert!(!dst.exists());
        assert!(!dir.path().join("copy.db.partial").exists());
    }
}
