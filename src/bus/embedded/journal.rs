//! The sessions of the embedded bus on disk, beside its history: one JSON line per change
//! (`{"put":id,"saved":…}` or `{"del":id}`), appended as it happens, so a restart (or a
//! crash: the lines are in the OS's hands as soon as they are written) gives every session
//! back. At start the lines are replayed and the file rewritten with only the live
//! sessions; it is rewritten again whenever it holds more than twice as many lines as
//! sessions. A line that does not parse (the last one, cut by a crash) is skipped.
//!
//! Sessions come back idle, with a full `session_ttl_ms` from the start: their connections
//! ended with the process.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sessions::Saved;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Put { put: String, saved: Saved },
    Del { del: String },
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file.
    lines: usize,
    /// A write failed (said once, until one succeeds).
    failing: bool,
}

/// Lines past twice the live sessions (and this many) rewrite the file.
const SLACK: usize = 1024;

impl Journal {
    /// Open `path` (created if missing) and the sessions it holds.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Vec<(String, Saved)>)> {
        let mut live: HashMap<String, Saved> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        match File::open(path) {
            Ok(f) => {
                let mut skipped = 0usize;
                for line in BufReader::new(f).split(b'\n') {
                    let line = line?;
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(Line::Put { put, saved }) => {
                            if live.insert(put.clone(), saved).is_none() {
                                order.push(put);
                            }
                        }
                        Ok(Line::Del { del }) => {
                            live.remove(&del);
                        }
                        Err(_) if line.is_empty() => {}
                        Err(_) => skipped += 1,
                    }
                }
                if skipped > 0 {
                    tracing::warn!(file = %path.display(), skipped, "sessions: lines that do not parse were skipped (a write cut short by a crash?)");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sessions: Vec<(String, Saved)> = order
            .into_iter()
            .filter_map(|id| live.remove(&id).map(|s| (id, s)))
            .collect();
        let file = rewrite(path, sessions.iter().map(|(id, s)| (id.as_str(), s)))?;
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                lines: sessions.len(),
                failing: false,
            },
            sessions,
        ))
    }

    pub fn put(&mut self, id: &str, saved: &Saved) {
        self.append(&Line::Put {
            put: id.to_owned(),
            saved: saved.clone(),
        });
    }

    pub fn del(&mut self, id: &str) {
        self.append(&Line::Del { del: id.to_owned() });
    }

    fn append(&mut self, line: &Line) {
        let mut text = serde_json::to_vec(line).unwrap_or_default();
        text.push(b'\n');
        match self.file.write_all(&text) {
            Ok(()) => {
                self.lines += 1;
                if self.failing {
                    tracing::info!(file = %self.path.display(), "sessions: writes succeed again");
                    self.failing = false;
                }
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(file = %self.path.display(), error = %e, "sessions: a change could not be written; sessions changed now will not survive a restart");
            }
            Err(_) => {}
        }
    }

    /// Rewrite the file with `live` when it has grown past twice their number.
    pub fn compact_if_long<'a>(
        &mut self,
        live: usize,
        sessions: impl Iterator<Item = (&'a str, &'a Saved)>,
    ) {
        if self.lines <= 2 * live + SLACK {
            return;
        }
        match rewrite(&self.path, sessions) {
            Ok(file) => {
                self.file = file;
                self.lines = live;
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "sessions: the file could not be compacted")
            }
        }
    }
}

/// Write `sessions` to a new file and put it in place of `path`; the append handle on it.
fn rewrite<'a>(
    path: &Path,
    sessions: impl Iterator<Item = (&'a str, &'a Saved)>,
) -> std::io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        for (id, saved) in sessions {
            let line = Line::Put {
                put: id.to_owned(),
                saved: saved.clone(),
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    std::fs::OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(user: &str) -> Saved {
        Saved {
            user: user.into(),
            subscription: serde_json::json!({ "deviceIds": ["d"] }),
        }
    }

    #[test]
    fn sessions_come_back_and_a_torn_last_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("logstream-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sessions.jsonl");
        let _ = std::fs::remove_file(&path);
        let (mut j, none) = Journal::open(&path).unwrap();
        assert!(none.is_empty());
        j.put("a", &saved("ann"));
        j.put("b", &saved("bob"));
        j.del("a");
        j.put("c", &saved("cy"));
        drop(j);
        // A crash cut the last line short.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"put":"d","saved":{"user":"d"#).unwrap();
        let (j, back) = Journal::open(&path).unwrap();
        let ids: Vec<&str> = back.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(back[0].1, saved("bob"));
        assert_eq!(j.lines, 2, "rewritten with the live ones");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
