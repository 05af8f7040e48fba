//! `logstream plugin check`, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn built(name: &str) -> PathBuf {
    PathBuf::from(env!("LOGSTREAM_BUILT_PLUGINS")).join(format!("{name}.wasm"))
}

fn check(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["plugin", "check"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn logs_file(lines: &[&str]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "logstream-check-{}-{}.jsonl",
        std::process::id(),
        lines.len()
    ));
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn check_reports_validity_params_and_matches() {
    let regex = built("regex");
    let logs = logs_file(&[
        r#"{"deviceId":"d","message":"disk full"}"#,
        r#"{"deviceId":"d","message":"cpu hot"}"#,
    ]);
    let (ok, out) = check(&[
        regex.to_str().unwrap(),
        "--params",
        r#"{"pattern":"^disk"}"#,
        "--logs",
        logs.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("a filter plugin (world filter-plugin of logstream:plugin@0.1.0)"),
        "{out}"
    );
    assert!(
        out.contains("line 1: match") && out.contains("line 2: no match"),
        "{out}"
    );
    assert!(out.contains("1 of 2 logs match"), "{out}");

    let (ok, out) = check(&[regex.to_str().unwrap(), "--params", r#"{"pattern":"("}"#]);
    assert!(
        !ok && out.contains("params refused: pattern: invalid regular expression"),
        "{out}"
    );

    let not_wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let (ok, out) = check(&[not_wasm.to_str().unwrap()]);
    assert!(!ok && out.contains("not a WebAssembly file"), "{out}");

    let bad_logs = logs_file(&[
        r#"{"deviceId":"d","message":"ok"}"#,
        "nope",
        r#"{"message":"no device"}"#,
    ]);
    let (ok, out) = check(&[
        regex.to_str().unwrap(),
        "--params",
        r#"{"pattern":"o"}"#,
        "--logs",
        bad_logs.to_str().unwrap(),
    ]);
    assert!(
        !ok && out.contains("line 2: skipped")
            && out.contains("line 3: skipped, not a valid log entry: deviceId"),
        "{out}"
    );
}

#[test]
fn check_reports_a_plugin_that_runs_away() {
    let logs = logs_file(&[r#"{"deviceId":"d","message":"loop"}"#]);
    let (ok, out) = check(&[
        built("misbehave").to_str().unwrap(),
        "--logs",
        logs.to_str().unwrap(),
        "--set",
        "plugin_timeout_ms=30",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 1: ✗ the plugin failed: plugin exceeded its CPU budget of 30 ms"),
        "{out}"
    );
}

#[test]
fn check_shows_what_a_transform_returns() {
    let logs =
        logs_file(&[r#"{"deviceId":"d","message":"mail bob@x.org from 1.2.3.4 token=abc"}"#]);
    let redact = built("redact");
    let (ok, out) = check(&[
        redact.to_str().unwrap(),
        "--params",
        r#"{"ipv4":false}"#,
        "--logs",
        logs.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("a transform plugin (world transform-plugin of logstream:plugin@0.1.0)"),
        "{out}"
    );
    assert!(
        out.contains(r#""message":"mail [email] from 1.2.3.4 token=[redacted]""#),
        "{out}"
    );
    let (ok, out) = check(&[redact.to_str().unwrap(), "--params", r#"{"colour":true}"#]);
    assert!(
        !ok && out.contains("params refused: colour: unknown field"),
        "{out}"
    );
}
