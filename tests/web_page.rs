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
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
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
    assert!(output.status.success(), "page suite failed:\n{report}");
    assert!(
        report.contains("✔ the live-tail page"),
        "page suite ran no test"
    );
}
