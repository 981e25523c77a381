//! A real PostgreSQL for the tests: one throw-away cluster per test binary (`initdb` into a
//! folder under /tmp, run as the `postgres` user since the tests run as root, on a loopback
//! port), and a fresh database per test. `KURSRELAY_TEST_DB=postgres` makes the storage tests
//! (api, attendance, crash, cli, cluster) use it instead of an SQLite file; the cluster
//! tests use it always.
//!
//! The server dies with the test binary: it is started from a thread that lives as long as
//! the process, with `PR_SET_PDEATHSIG` (fast shutdown, SIGINT). Folders of clusters whose
//! test binary has gone are removed by the next start.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

const ROOT: &str = "/tmp/kursrelay-test-pg";

/// True when the storage tests should run on PostgreSQL (`KURSRELAY_TEST_DB=postgres`).
pub fn enabled() -> bool {
    std::env::var("KURSRELAY_TEST_DB").is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

/// The running cluster of this test binary.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// The postmaster's process id.
    pub pid: u32,
}

impl Cluster {
    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| start(&std::process::id().to_string()))
}

/// A cluster of one test's own, besides the shared one: for a test that stops its server
/// (`Cluster::freeze`), which must not stop the other tests' store. `tag` names its folder.
pub fn own_cluster(tag: &str) -> Cluster {
    start(&format!("{}-{tag}", std::process::id()))
}

/// A new, empty database on the shared cluster; its URL.
pub async fn fresh_database() -> String {
    cluster().fresh_database().await
}

impl Cluster {
    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) every process of this cluster: the postmaster
    /// and all its children (the connections' backends among them). Stopped, the store is
    /// there but answers nothing, as behind a cut network: connections neither fail nor answer.
    pub fn freeze(&self, stopped: bool) {
        let signal = if stopped {
            libc::SIGSTOP
        } else {
            libc::SIGCONT
        };
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .unwrap_or_default();
        let mut pids: Vec<i32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        // The postmaster first when stopping (no new children after), last when resuming.
        if stopped {
            pids.insert(0, self.pid as i32);
        } else {
            pids.push(self.pid as i32);
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from /proc; no memory is touched.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Stops this cluster's server (fast shutdown), for a cluster of a test's own, and returns
    /// once it is gone: a signal alone leaves the server answering for a moment (a write made
    /// right after it was once committed, CI).
    pub fn stop(&self) {
        self.freeze(false);
        // SAFETY: kill(2) on the postmaster's pid; no memory is touched.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(self.pid) {
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts this cluster's server again after `stop`, on the same port and data.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // `stop` waited until the old server was gone, so the data folder is free.
        let (uid, gid) = uid_gid("postgres");
        let data = self.dir.join("data");
        self.pid = spawn_server(&self.bin, &data, &self.dir, self.port, uid, gid);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test PostgreSQL did not start again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new, empty database on this cluster; its URL.
    pub async fn fresh_database(&self) -> String {
        let cluster = self;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        // Just after start the server may still say "starting up" for a moment.
        let mut patience = super::wait::Patience::new("", Duration::from_secs(20));
        let mut admin = loop {
            match sqlx::PgConnection::connect(&cluster.url("postgres")).await {
                Ok(c) => break c,
                Err(e) if !patience.try_pause().await => {
                    panic!("connect to the test PostgreSQL: {e}")
                }
                Err(_) => {}
            }
        };
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        admin.close().await.ok();
        cluster.url(&name)
    }
}

/// The `[db]` section of a test server's config: SQLite in `dir`, or (with
/// `KURSRELAY_TEST_DB=postgres`) a fresh PostgreSQL database.
pub async fn db_section(dir: &Path) -> String {
    let path = dir.join("kursrelay.db");
    if enabled() {
        format!(
            "[db]\npath = \"{}\"\nurl = \"{}\"\n",
            path.display(),
            fresh_database().await
        )
    } else {
        format!("[db]\npath = \"{}\"\n", path.display())
    }
}

/// The database a `db_section` names, opened as the server opens it.
pub async fn open_section(section: &str) -> kursrelay::db::Db {
    let config = kursrelay::config::Config::from_overlay(Some((section, "test db")))
        .expect("test db config");
    kursrelay::db::Db::connect(&config.db.location().expect("db location"))
        .await
        .expect("open the test database")
}

fn uid_gid(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {user} (Debian's postgresql package makes it)"))
    };
    (id("-u"), id("-g"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn start(name: &str) -> Cluster {
    let bin = super::tools::postgres_bin_dir();
    let (uid, gid) = uid_gid("postgres");
    std::fs::create_dir_all(ROOT).expect("create the test PostgreSQL root");
    // Clusters left by test binaries that are gone.
    for entry in std::fs::read_dir(ROOT).expect("read the root").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = PathBuf::from(ROOT).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the cluster folder");
    chown(ROOT, Some(0), Some(0)).ok();
    chown(&dir, Some(uid), Some(gid)).expect("give the cluster folder to postgres");
    let data = dir.join("data");
    let out = Command::new(bin.join("initdb"))
        .args(["-D", data.to_str().expect("utf-8 path")])
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(&dir)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for attempt in 0..5 {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("port").port()
        };
        let pid = spawn_server(&bin, &data, &dir, port, uid, gid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && dir.join(format!(".s.PGSQL.{port}")).exists()
            {
                return Cluster {
                    port,
                    dir,
                    bin,
                    pid,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "test PostgreSQL did not start on port {port} (attempt {attempt}): {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
    }
    panic!("the test PostgreSQL would not start");
}

/// Starts `postgres` on `data` and `port` from a thread that lives as long as the process;
/// its process id.
fn spawn_server(bin: &Path, data: &Path, dir: &Path, port: u16, uid: u32, gid: u32) -> u32 {
    let (bin2, data2, dir2) = (bin.to_owned(), data.to_owned(), dir.to_owned());
    // The server is the child of a thread that never ends, so PR_SET_PDEATHSIG fires only
    // when the whole test binary is gone (it is tied to the spawning thread).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin2.join("postgres"));
        cmd.args(["-D", data2.to_str().expect("utf-8 path")])
            .args(["-k", dir2.to_str().expect("utf-8 path")])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            // Throw-away data: no fsync. Enough connections for many servers per test.
            .args([
                "-F",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ])
            .current_dir(&dir2)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir2.join("postgres.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .uid(uid)
            .gid(gid);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        // Keep the thread (the server's parent) alive until the process ends.
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("postgres thread").expect("start postgres")
}
