//! Runs the live-tail page suite (`tests/web/`): the page in a real headless Chromium
//! (Debian's `chromium`, driven by `playwright-core`) against the binary cargo just built.
//! `.ci/run` installs Chromium and the npm package; screenshots land in `target/page-test/`.

use std::path::Path;

#[path = "common/node.rs"]
mod node;

#[test]
fn live_tail_page_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed for the page tests: apt-get install chromium (or set CHROMIUM)"
    );
    let dir = node::suite_dir("web", "playwright-core");
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-test");
    let report = node::run_suite(
        &dir,
        &[
            ("CHROMIUM", chromium.as_ref()),
            ("SCREENSHOT_DIR", screenshots.as_os_str()),
        ],
    );
    assert!(
        report.contains("✔ the live-tail page"),
        "page suite ran no test"
    );
}
