//! Runs the suite driven by the official JS `socket.io-client` (`tests/js/`) against the
//! binary cargo just built. Needs Node.js; installs the npm packages on first use.

use std::path::Path;
use std::process::Command;

#[test]
fn official_socket_io_client_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir.join("node_modules/socket.io-client").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the JS-client tests (Node.js 20)");
        assert!(status.success(), "npm ci failed in tests/js");
    }
    // Bounded (coreutils `timeout`): a test that waits for ever (an answer that never
    // comes) fails the run instead of hanging it.
    let output = Command::new("timeout")
        .args([
            "--kill-after=10",
            "300",
            "node",
            "--test",
            "--test-reporter=spec",
        ])
        .current_dir(&dir)
        .env("LOGSTREAM_BIN", env!("CARGO_BIN_EXE_logstream"))
        .output()
        .expect("node is needed for the JS-client tests");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert_ne!(
        output.status.code(),
        Some(124),
        "JS-client suite did not finish within 300 s:\n{report}"
    );
    assert!(output.status.success(), "JS-client suite failed:\n{report}");
    assert!(report.contains("pass"), "JS-client suite ran no test");
}
