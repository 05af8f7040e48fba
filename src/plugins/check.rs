//! `logstream plugin check`: is this file a plugin this server can run, does it accept these
//! params, and what does it do with these logs (and how fast)?

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use super::component::{Prepared, prepare_any};
use super::filter::WasmFilter;
use super::transform::WasmTransform;
use super::{INTERFACE, PluginStats};
use crate::config::Config;
use crate::engine::{AddError, FilterEngine, Matches, TransformEngine};
use crate::log_entry::LogRecord;

/// Parse a `--params` value: a JSON object.
fn params_object(params: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let params = params.unwrap_or("{}");
    let value: serde_json::Value =
        serde_json::from_str(params).with_context(|| format!("--params {params:?} is not JSON"))?;
    if !value.is_object() {
        bail!("--params must be a JSON object");
    }
    Ok(value)
}

/// Valid entries with their line numbers, and how many lines were not valid.
type ReadLogs = (Vec<(usize, Arc<LogRecord>)>, usize);

/// Read a JSON-lines file of log entries; invalid lines are reported and counted.
fn read_logs(logs: &Path, out: &mut dyn Write) -> anyhow::Result<ReadLogs> {
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
    Ok((records, bad_lines))
}

fn check_transform(
    mut t: WasmTransform,
    params: Option<&str>,
    logs: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let value = params_object(params)?;
    let params = value.to_string();
    match t.validate(&params) {
        Ok(()) => writeln!(out, "✓ params accepted: {value}")?,
        Err(AddError::Rejected(reason) | AddError::Unavailable(reason)) => {
            writeln!(out, "✗ params refused: {reason}")?;
            bail!("params refused");
        }
    }
    let Some(logs) = logs else {
        return Ok(());
    };
    let (records, bad_lines) = read_logs(logs, out)?;
    for (line, record) in &records {
        let t0 = Instant::now();
        match t.apply(&params, std::slice::from_ref(record)) {
            Ok(result) if result.is_empty() => writeln!(
                out,
                "  line {line}: dropped ({:.1} µs)",
                t0.elapsed().as_secs_f64() * 1e6
            )?,
            Ok(result) => writeln!(
                out,
                "  line {line}: ({:.1} µs) {}",
                t0.elapsed().as_secs_f64() * 1e6,
                result[0].json.get()
            )?,
            Err(e) => {
                writeln!(out, "  line {line}: ✗ the transform failed: {e}")?;
                bail!("transform failed on line {line}");
            }
        }
    }
    if bad_lines > 0 {
        bail!(
            "{bad_lines} line(s) of {} are not valid log entries",
            logs.display()
        );
    }
    Ok(())
}

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
    // The server's compile cache: checking the same file again skips compilation.
    let runtime = super::runtime(config)?;
    let started = Instant::now();
    let prepared = match prepare_any(&runtime, &bytes) {
        Ok(p) => p,
        Err(e) => {
            writeln!(out, "✗ {}: {e:#}", file.display())?;
            bail!("not a usable plugin");
        }
    };
    let (kind, interface) = match &prepared {
        Prepared::Filter(pre) => ("filter", pre.interface()),
        Prepared::Transform(_) => ("transform", INTERFACE),
    };
    writeln!(
        out,
        "✓ {}: a {kind} plugin (world {kind}-plugin of {interface}), {:.1} MB, compiled in {:.2} s",
        file.display(),
        bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    )?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let stats = Arc::new(PluginStats::default());
    let pre = match prepared {
        Prepared::Filter(pre) => pre,
        Prepared::Transform(pre) => {
            let t = WasmTransform::new(name, runtime, pre, 1, stats);
            return check_transform(t, params, logs, out);
        }
    };
    let mut engine = WasmFilter::new(name, runtime, pre, 1, stats);
    let value = params_object(params)?;
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
    let (records, bad_lines) = read_logs(logs, out)?;
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
