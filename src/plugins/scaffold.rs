//! `logstream plugin new NAME --lang rust|js|python`: a working filter project to start from,
//! self-contained (it carries its own copy of `wit/plugin.wit`), with the build command in
//! its header. Each template is a small "message contains text" filter.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::subscription::valid_filter_name;

const WIT: &str = include_str!("../../wit/plugin.wit");

/// (path in the project, template)
fn files(lang: &str) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    Ok(match lang {
        "rust" => vec![
            ("Cargo.toml", include_str!("scaffold/rust_cargo.toml")),
            ("src/lib.rs", include_str!("scaffold/rust_lib.rs")),
        ],
        "python" => vec![
            ("app.py", include_str!("scaffold/python_app.py")),
            ("build.sh", include_str!("scaffold/python_build.sh")),
        ],
        "js" | "javascript" => vec![
            ("filter.js", include_str!("scaffold/js_filter.js")),
            ("package.json", include_str!("scaffold/js_package.json")),
            ("build.mjs", include_str!("scaffold/js_build.mjs")),
        ],
        other => bail!("unknown language {other:?}; choose rust, js or python"),
    })
}

/// Create `dir/NAME` for a filter called `name`; returns the directory.
pub fn create(dir: &Path, name: &str, lang: &str) -> anyhow::Result<PathBuf> {
    if !valid_filter_name(name) {
        bail!("{name:?} is not a plugin name: letters, digits, '-' or '_', at most 64");
    }
    let files = files(lang)?;
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let crate_name = name.replace('-', "_");
    for (path, template) in files.iter().copied().chain([("wit/plugin.wit", WIT)]) {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name);
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        #[cfg(unix)]
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(root)
}
