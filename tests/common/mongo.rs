//! A MongoDB for the tests: the one `MONGODB_URI` names, or else a MongoDB-wire-compatible stand-in
//! (SecantusDB, `secantusd-py`) started once per test process, in memory, on a free port.
//!
//! SecantusDB is GPL: it only ever runs as a separate process, never linked or vendored. `./test.sh`
//! installs it into `.tools/secantus` (a Python venv); `$EVENTSYNC_SECANTUSD` points elsewhere.
//!
//! The stand-in dies with the test process, even on a panic or an abort: it is spawned by a thread
//! that never exits, with `PR_SET_PDEATHSIG` set to `SIGKILL` (the signal fires when the thread that
//! forked the child exits, not the process, hence that thread).

use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Longest the stand-in may take to accept connections (it usually takes 1-3 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports tried before giving up (another process may take the port between our probe and
/// the stand-in's bind).
const START_ATTEMPTS: u32 = 3;
/// How much of the stand-in's log a failure shows.
const LOG_TAIL_BYTES: u64 = 4096;

/// Whether the tests run on MongoDB: `EVENTSYNC_TEST_STORE=mongodb`.
pub fn testing_mongodb() -> bool {
    std::env::var("EVENTSYNC_TEST_STORE").is_ok_and(|v| v == "mongodb")
}

/// A database name no other test uses: `t_` and 24 random hex digits.
pub fn fresh_database() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{}", &id[..24])
}

/// A database name derived from `key` (e.g. a data directory): the same within this test process,
/// different in another one (a real MongoDB may still hold the databases of earlier runs).
pub fn database_for(key: &str) -> String {
    static SALT: OnceLock<String> = OnceLock::new();
    let salt = SALT.get_or_init(|| uuid::Uuid::new_v4().simple().to_string());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut hasher);
    key.hash(&mut hasher);
    format!("t_{:016x}", hasher.finish())
}

/// A MongoDB URI for `database`: `MONGODB_URI` with its path replaced, or the stand-in's
/// (`mongodb://127.0.0.1:PORT/DATABASE?directConnection=true`), started on first use.
pub fn uri(database: &str) -> String {
    match std::env::var("MONGODB_URI") {
        Ok(base) if !base.trim().is_empty() => with_database(base.trim(), database),
        _ => with_database(
            &format!("mongodb://{}/?directConnection=true", stand_in()),
            database,
        ),
    }
}

/// `base` with `database` as its path; the scheme, credentials, hosts and query are kept. Credentials
/// without an `authSource` authenticate against the database of the path (`admin` if none), so
/// that one is kept as the `authSource`.
fn with_database(base: &str, database: &str) -> String {
    let (scheme, rest) = base
        .split_once("://")
        .unwrap_or_else(|| panic!("not a MongoDB URI (no '://'): {base}"));
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(hosts_end);
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, query),
        None => (tail, ""),
    };
    let mut query: Vec<String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(str::to_string)
        .collect();
    let has_auth_source = query.iter().any(|kv| {
        kv.split('=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("authSource"))
    });
    if hosts.contains('@') && !has_auth_source {
        let original = path.trim_start_matches('/');
        let source = if original.is_empty() { "admin" } else { original };
        query.push(format!("authSource={source}"));
    }
    let mut uri = format!("{scheme}://{hosts}/{database}");
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&query.join("&"));
    }
    uri
}

/// The stand-in's address, starting it on the first call. A failed start fails every later call
/// at once, with the same message, rather than trying again in each test.
fn stand_in() -> SocketAddr {
    static STAND_IN: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    match STAND_IN.get_or_init(start_stand_in) {
        Ok(addr) => *addr,
        Err(e) => panic!("{e}"),
    }
}

/// The stand-in's executable: `$EVENTSYNC_SECANTUSD`, else the one `./test.sh` installs.
fn executable() -> Result<PathBuf, String> {
    let exe = match std::env::var_os("EVENTSYNC_SECANTUSD") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join(".tools/secantus/bin/secantusd-py"),
    };
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(format!(
            "the MongoDB stand-in is not installed: run ./test.sh once (it installs SecantusDB into \
             .tools/secantus) [looked for {}]",
            exe.display()
        ))
    }
}

/// Starts the stand-in from a thread that then parks forever, so that the death signal only fires
/// when the whole test process is gone.
fn start_stand_in() -> Result<SocketAddr, String> {
    let exe = executable()?;
    let scratch = scratch_dir()?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("mongodb-stand-in".into())
        .spawn(move || {
            let mut last_error = String::new();
            for attempt in 1..=START_ATTEMPTS {
                match launch(&exe, &scratch, attempt) {
                    Ok((addr, child)) => {
                        let _ = tx.send(Ok(addr));
                        // Holding the child (never waited for) and never returning: this thread's
                        // exit would kill the stand-in.
                        let _child = child;
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => last_error = e,
                }
            }
            let _ = tx.send(Err(format!(
                "the MongoDB stand-in did not start ({START_ATTEMPTS} attempts): {last_error}"
            )));
        })
        .map_err(|e| format!("cannot start the thread that runs the MongoDB stand-in: {e}"))?;
    rx.recv()
        .unwrap_or_else(|_| Err("the thread starting the MongoDB stand-in panicked".into()))
}

/// A directory for the stand-in's logs and its in-memory storage (`:memory:` is a temporary
/// WiredTiger home, which a killed stand-in cannot clean up): `eventsync-secantus-PID` in the
/// temporary directory. Those of test processes that are gone are removed first.
fn scratch_dir() -> Result<PathBuf, String> {
    const PREFIX: &str = "eventsync-secantus-";
    let tmp = std::env::temp_dir();
    let me = std::process::id();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            let gone = pid.parse::<u32>().is_ok_and(|pid| {
                pid == me || (cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists())
            });
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{PREFIX}{me}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One start on a fresh port: the stand-in, once it accepts TCP connections.
fn launch(exe: &Path, scratch: &Path, attempt: u32) -> Result<(SocketAddr, Child), String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log_path = scratch.join(format!("secantusd-{attempt}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            ":memory:",
        ])
        // No secantusd.toml from the working directory; the temporary WiredTiger home goes into
        // the scratch directory.
        .current_dir(scratch)
        .env("TMPDIR", scratch)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    die_with_this_thread(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} exited ({status}) on port {port}; its log ({}) ends with:\n{}",
                exe.display(),
                log_path.display(),
                tail(&log_path)
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok((addr, child));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} did not accept connections on port {port} within {START_TIMEOUT:?}; its log ({}) \
                 ends with:\n{}",
                exe.display(),
                log_path.display(),
                tail(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the child get `SIGKILL` when the thread spawning it exits (Linux only).
#[cfg(target_os = "linux")]
pub fn die_with_this_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have exited before the prctl: then no signal will ever come. (No
            // allocation here: another thread of the parent may have held the allocator's lock.)
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_this_thread(_command: &mut Command) {}

/// The end of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    if text.trim().is_empty() {
        "(nothing)".into()
    } else {
        text
    }
}

/// The repository's root: this file's crate, or the workspace above a member crate (the
/// conformance crate includes this file too).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("test.sh").exists())
        .unwrap_or(manifest)
        .to_path_buf()
}
