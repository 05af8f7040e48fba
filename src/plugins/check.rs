//! `logstream plugin check`: is this file a plugin this server can run, does it accept these
//! params, and what does it do with these logs (and how fast)?

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use super::filter::WasmFilter;
use super::{INTERFACE, PluginStats, Runtime, limits};
use crate::config::Config;
use crate::filter::{AddError, FilterEngine, Matches};
use crate::log_entry::LogRecord;

/// Run the checks, writing a report to `out`. `Err` (non-zero exit) when the plugin is not
/// usable as given.
pub fn run(
    config: &Config,
    file: &Path,
    params: Option<&str>,
    logs: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = Runtime::new(limits(config), None)?;
    let started = Instant::now();
    let pre = match runtime.prepare(&bytes) {
        Ok(pre) => pre,
        Err(e) => {
            writeln!(out, "✗ {}: {e:#}", file.display())?;
            bail!("not a usable plugin");
        }
    };
    writeln!(
        out,
        "✓ {}: a filter plugin (world filter-plugin of {INTERFACE}), {:.1} MB, compiled in {:.2} s",
        file.display(),
        bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    )?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let mut engine = WasmFilter::new(name, runtime, pre, 1, Arc::new(PluginStats::default()));
    let params = params.unwrap_or("{}");
    let value: serde_json::Value =
        serde_json::from_str(params).with_context(|| format!("--params {params:?} is not JSON"))?;
    if !value.is_object() {
        bail!("--params must be a JSON object");
    }
    match engine.add(1, &value.to_string()) {
        Ok(()) => writeln!(out, "✓ params accepted: {value}")?,
        Err(AddError::Rejected(reason)) => {
            writeln!(out, "✗ params refused: {reason}")?;
            bail!("params refused");
        }
        Err(AddError::Unavailable(reason)) => {
            writeln!(
                out,
                "✗ the plugin failed while checking the params: {reason}"
            )?;
            bail!("plugin failed");
        }
    }
    let Some(logs) = logs else {
        return Ok(());
    };
    let text =
        std::fs::read_to_string(logs).with_context(|| format!("reading {}", logs.display()))?;
    let mut records = Vec::new();
    let mut bad_lines = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(line)
            .map_err(|e| e.to_string())
            .and_then(|v| LogRecord::from_value(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => records.push((i + 1, Arc::new(r))),
            Err(e) => {
                bad_lines += 1;
                writeln!(out, "  line {}: skipped, not a valid log entry: {e}", i + 1)?;
            }
        }
    }
    let mut matched = 0;
    for (line, record) in &records {
        let mut found: Vec<Matches> = Vec::new();
        let t = Instant::now();
        let result = engine.evaluate(std::slice::from_ref(record), &mut found);
        let took = t.elapsed();
        match result {
            Ok(()) => {
                let hit = found.iter().any(|m| m.entries.contains(&0));
                matched += usize::from(hit);
                let verdict = if hit { "match" } else { "no match" };
                writeln!(
                    out,
                    "  line {line}: {verdict:<8} ({:.1} µs)  {}",
                    took.as_secs_f64() * 1e6,
                    record.message
                )?;
            }
            Err(e) => {
                writeln!(out, "  line {line}: ✗ the plugin failed: {e}")?;
                bail!("plugin failed on line {line}");
            }
        }
    }
    let batch: Vec<Arc<LogRecord>> = records.iter().map(|(_, r)| r.clone()).collect();
    if !batch.is_empty() {
        let mut found = Vec::new();
        let t = Instant::now();
        engine
            .evaluate(&batch, &mut found)
            .map_err(|e| anyhow::anyhow!("the plugin failed on the whole batch: {e}"))?;
        let took = t.elapsed();
        writeln!(
            out,
            "{matched} of {} logs match; as one batch: {:.1} µs ({:.2} µs per log)",
            batch.len(),
            took.as_secs_f64() * 1e6,
            took.as_secs_f64() * 1e6 / batch.len() as f64
        )?;
    }
    if bad_lines > 0 {
        bail!(
            "{bad_lines} line(s) of {} are not valid log entries",
            logs.display()
        );
    }
    Ok(())
}
