//! The process tier: the `eventsync` binary, spawned with the test's flags and found through the
//! `listening on` line it prints. A black box that can be killed (`SIGKILL`), stopped (`SIGTERM`),
//! restarted on its data and address, and watched from outside (`/proc/<pid>`); dropped, it is
//! killed.
//!
//! Its stderr is the test's (at `EVENTSYNC_LOG`, `warn` unless set); its stdout is drained so the
//! server never blocks on a full pipe.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest a server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `eventsync` process (none once killed or terminated).
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Starts the binary with `flags` and waits for its `listening on` line; returns its URL.
    pub fn spawn(flags: Vec<OsString>) -> (String, Process) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventsync"))
            .args(&flags)
            .env(
                "EVENTSYNC_LOG",
                std::env::var("EVENTSYNC_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the eventsync binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server {flags:?} printed no address within {START_TIMEOUT:?} (port taken?)")
        });
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        (url, Process { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
