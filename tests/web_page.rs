//! Runs the live-tail page suite (`tests/web/`): the page in a real headless Chromium
//! (Debian's `chromium`, driven by `playwright-core`) against the binary cargo just built.
//! `.ci/run` installs Chromium and the npm package; screenshots land in `target/page-test/`.

use std::path::Path;
use std::process::Command;

#[test]
fn live_tail_page_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed for the page tests: apt-get install chromium (or set CHROMIUM)"
    );
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the page tests (Node.js 20)");
        assert!(status.success(), "npm ci failed in tests/web");
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
        .env("CHROMIUM", &chromium)
        .env(
            "SCREENSHOT_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-test"),
        )
        .output()
        .expect("node is needed for the page tests");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert_ne!(
        output.status.code(),
        Some(124),
        "page suite did not finish within 300 s:\n{report}"
    );
    assert!(output.status.success(), "page suite failed:\n{report}");
    assert!(
        report.contains("✔ the live-tail page"),
        "page suite ran no test"
    );
}
