//! Builds the plugins in `filters-wasm/` as WebAssembly components (`wasm32-wasip2`):
//! - `default` is embedded in the server binary (the built-in filter);
//! - `regex` (a filter) and `redact` (a transform) are copied into `plugins/` so that
//!   `cargo run` serves them;
//! - the test fixtures stay in the build directory, named by `LOGSTREAM_BUILT_PLUGINS`.
//!
//! Adds the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
/// (crate artifact, plugin name)
const PLUGINS: [(&str, &str); 4] = [
    ("logstream_filter_default", "default"),
    ("logstream_filter_regex", "regex"),
    ("logstream_transform_redact", "redact"),
    ("logstream_fixture_misbehave", "misbehave"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for watched in [
        "wit",
        "filters-wasm/Cargo.toml",
        "filters-wasm/Cargo.lock",
        "filters-wasm/default",
        "filters-wasm/regex",
        "filters-wasm/sdk",
        "filters-wasm/redact",
        "filters-wasm/fixtures",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    ensure_target();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"))
        .join("filters-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest.join("filters-wasm/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Do not leak the host build's flags and wrappers (clippy, coverage) into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for filters-wasm");
    assert!(
        status.success(),
        "building the wasm plugins in filters-wasm/ failed (see above)"
    );
    let built = target_dir.join(TARGET).join("release");
    for (artifact, name) in PLUGINS {
        let from = built.join(format!("{artifact}.wasm"));
        copy_if_changed(&from, &built.join(format!("{name}.wasm")));
    }
    copy_if_changed(&built.join("default.wasm"), &out.join("default.wasm"));
    std::fs::create_dir_all(manifest.join("plugins")).expect("creating plugins/");
    for shipped in ["regex", "redact"] {
        copy_if_changed(
            &built.join(format!("{shipped}.wasm")),
            &manifest.join(format!("plugins/{shipped}.wasm")),
        );
    }
    println!(
        "cargo:rustc-env=LOGSTREAM_BUILT_PLUGINS={}",
        built.display()
    );
}

fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if installed {
        return;
    }
    println!(
        "cargo:warning=adding the {TARGET} target with rustup (needed to build the wasm plugins)"
    );
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    if !matches!(added, Ok(s) if s.success()) {
        panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and build again"
        );
    }
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        std::fs::write(to, &new).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    }
}
