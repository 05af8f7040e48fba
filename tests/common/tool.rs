//! A command-line tool of ours (`logstream tail`, `ship`) run as a person runs it, its
//! stdout and stderr read line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A running CLI command with its stdout and stderr read line by line.
pub struct Tool {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Tool {
    pub fn start(args: &[&str], stdin: bool) -> Tool {
        Tool::spawn(env!("CARGO_BIN_EXE_logstream"), args, stdin)
    }

    /// Another program (e.g. `script`, to give ours a terminal).
    pub fn start_program(program: &str, args: &[&str]) -> Tool {
        Tool::spawn(program, args, false)
    }

    fn spawn(program: &str, args: &[&str], stdin: bool) -> Tool {
        let mut child = Command::new(program)
            .args(args)
            .env_remove("LOGSTREAM_TOKEN")
            .env_remove("LOGSTREAM_API_KEY")
            .env_remove("LOGSTREAM_SERVER")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn logstream");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Tool {
            child,
            stdout: rx,
            stderr,
        }
    }

    pub fn lines(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.stdout.recv_timeout(T).unwrap_or_else(|_| {
                    panic!(
                        "only {i} of {n} lines; stderr: {:?}",
                        self.stderr.lock().unwrap()
                    )
                })
            })
            .collect()
    }

    /// Read stdout lines until one satisfies `pred` (within the timeout).
    pub fn lines_until(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let until = std::time::Instant::now() + T;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Assert that it said `what` on stderr (showing all it said otherwise).
    pub fn assert_said(&self, what: &str) {
        let said = self.stderr();
        assert!(said.contains(what), "expected {what:?} on stderr: {said}");
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Ctrl-C, then the exit status.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        wait(&mut self.child, Duration::from_secs(10))
    }
}

pub fn wait(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < until, "did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
