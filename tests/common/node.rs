//! A `node --test` suite of this repository (`tests/js/`, `tests/web/`) run against the
//! binary cargo just built. Included with `#[path]` by the tests that need it, so they do
//! not build the rest of the harness.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How long a suite may run: a test that waits for ever (an answer that never comes) fails
/// the run instead of hanging it.
const LIMIT_S: &str = "300";

/// `tests/<name>`, with its npm packages installed (`npm ci`) unless `module` is there.
pub fn suite_dir(name: &str, module: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    if !dir.join("node_modules").join(module).exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the Node.js test suites (Node.js 20)");
        assert!(status.success(), "npm ci failed in tests/{name}");
    }
    dir
}

/// Run the suite in `dir` with `env` (and `LOGSTREAM_BIN`), bounded by coreutils `timeout`;
/// fail unless every test passed. Returns the report.
pub fn run_suite(dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut command = Command::new("timeout");
    command
        .args([
            "--kill-after=10",
            LIMIT_S,
            "node",
            "--test",
            "--test-reporter=spec",
        ])
        .current_dir(dir)
        .env("LOGSTREAM_BIN", env!("CARGO_BIN_EXE_logstream"));
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .expect("node is needed for the Node.js test suites");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let suite = dir.display();
    assert_ne!(
        output.status.code(),
        Some(124),
        "{suite} did not finish within {LIMIT_S} s:\n{report}"
    );
    assert!(output.status.success(), "{suite} failed:\n{report}");
    report
}
