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
        out.contains("a filter plugin (world filter-plugin of logstream:plugin@0.2.0)"),
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
fn check_uses_the_compile_cache() {
    let cache = std::env::temp_dir().join(format!("logstream-check-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_logstream"))
            .args(["plugin", "check"])
            .arg(built("regex"))
            .args(["--params", r#"{"pattern":"x"}"#])
            .env("LOGSTREAM_PLUGIN_CACHE_DIR", &cache)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .expect("the check created the cache")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "one compiled artifact for the checked file"
    );
    let modified = cached[0].metadata().unwrap().modified().unwrap();
    assert!(run().status.success());
    assert_eq!(
        cached[0].metadata().unwrap().modified().unwrap(),
        modified,
        "the second check read the artifact instead of compiling again"
    );
    let _ = std::fs::remove_dir_all(&cache);
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

/// `plugin new` for each language gives a project that builds into a plugin that passes
/// `plugin check` and filters as its header says.
#[test]
fn plugin_new_scaffolds_projects_that_build_and_pass_check() {
    let dir = std::env::temp_dir().join(format!("logstream-scaffold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let logs = logs_file(&[
        r#"{"deviceId":"d","message":"disk ERROR"}"#,
        r#"{"deviceId":"d","message":"fine"}"#,
    ]);
    let run = |cwd: &std::path::Path, program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (lang, name, build, artifact) in [
        (
            "rust",
            "rs-contains",
            vec![(
                "cargo",
                vec!["build", "--release", "--target", "wasm32-wasip2"],
            )],
            "target/wasm32-wasip2/release/rs_contains.wasm",
        ),
        (
            "python",
            "py-contains",
            vec![("bash", vec!["build.sh"])],
            "py-contains.wasm",
        ),
        (
            "js",
            "js-contains",
            vec![
                ("npm", vec!["install", "--no-audit", "--no-fund"]),
                ("npm", vec!["run", "build"]),
            ],
            "js-contains.wasm",
        ),
    ] {
        run(
            &dir,
            env!("CARGO_BIN_EXE_logstream"),
            &["plugin", "new", name, "--lang", lang, "--dir", "."],
        );
        let project = dir.join(name);
        assert!(
            project.join("wit/plugin.wit").exists(),
            "{lang}: the project carries the WIT"
        );
        for (program, args) in &build {
            let mut cmd_args = args.clone();
            if *program == "cargo" {
                // Its own target dir, away from any enclosing build's environment.
                cmd_args.extend(["--target-dir", "target"]);
            }
            run(&project, program, &cmd_args);
        }
        let wasm = project.join(artifact);
        let (ok, out) = check(&[
            wasm.to_str().unwrap(),
            "--params",
            r#"{"text":"error"}"#,
            "--logs",
            logs.to_str().unwrap(),
        ]);
        assert!(ok, "{lang}: {out}");
        assert!(
            out.contains("line 1: match") && out.contains("line 2: no match"),
            "{lang}: {out}"
        );
        let (ok, out) = check(&[wasm.to_str().unwrap(), "--params", r#"{"txt":"x"}"#]);
        assert!(!ok && out.contains("txt: unknown field"), "{lang}: {out}");
    }
    let (bad_lang, _) = {
        let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
            .args(["plugin", "new", "x", "--lang", "cobol", "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        (out.status.success(), ())
    };
    assert!(!bad_lang);
    let _ = std::fs::remove_dir_all(&dir);
}
