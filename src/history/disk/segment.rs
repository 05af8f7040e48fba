//! One segment file: a header, then frames (see [`super::frame`]) back to back. The writer
//! appends; readers read only up to the length the writer published after a frame was
//! written whole, so they never meet half a frame. What stays in memory is a sparse index
//! (one entry per [`INDEX_EVERY`] bytes of file) and a few totals.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::frame::{self, Bad, Frame, HEAD};

/// The header: magic, version, the first sequence number the segment was made for.
pub const HEADER: usize = 16;
const MAGIC: &[u8; 4] = b"LSEG";
const VERSION: u32 = 1;

/// An index entry per this many bytes of frames.
pub const INDEX_EVERY: u64 = 4096;

/// A segment's name: its first sequence number, so names sort as the segments do.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence number in a segment's name.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub fn header(first_seq: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// What a segment holds, as far as it is readable.
#[derive(Debug, Clone, Default)]
pub struct Extent {
    /// `(first sequence number of a frame, its offset)`, ascending, sparse.
    pub index: Vec<(u64, u64)>,
    /// One past the last log's sequence number (`first_seq` when empty).
    pub next_seq: u64,
    /// Bytes of whole frames, header included.
    pub len: u64,
    pub logs: u64,
    /// When its first and last frames were written (Unix ms; 0 when empty).
    pub oldest_ms: u64,
    pub newest_ms: u64,
    /// Offset of the last indexed frame.
    last_indexed: u64,
}

impl Extent {
    fn empty(first_seq: u64) -> Extent {
        Extent {
            next_seq: first_seq,
            len: HEADER as u64,
            ..Extent::default()
        }
    }

    /// Account for a whole frame written at `offset`, `bytes` long.
    pub fn add(&mut self, offset: u64, bytes: u64, seq: u64, count: u64, unix_ms: u64) {
        if self.index.is_empty() || offset - self.last_indexed >= INDEX_EVERY {
            self.index.push((seq, offset));
            self.last_indexed = offset;
        }
        if self.logs == 0 {
            self.oldest_ms = unix_ms;
        }
        self.newest_ms = unix_ms;
        self.next_seq = seq + count;
        self.len = offset + bytes;
        self.logs += count;
    }
}

pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Opened for reading; the writer has its own handle.
    file: File,
    extent: RwLock<Extent>,
}

/// Where a scan stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub why: Bad,
    /// Bytes from `offset` to the end of the file.
    pub bytes: u64,
}

impl Segment {
    /// A new empty segment at `path`, its header written (the writer's handle is returned too).
    pub fn create(dir: &Path, first_seq: u64) -> std::io::Result<(Segment, File)> {
        let path = dir.join(file_name(first_seq));
        let mut writer = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        std::io::Write::write_all(&mut writer, &header(first_seq))?;
        let file = File::open(&path)?;
        Ok((
            Segment {
                first_seq,
                path,
                file,
                extent: RwLock::new(Extent::empty(first_seq)),
            },
            writer,
        ))
    }

    /// Open and scan an existing segment: every frame's checksum is checked; the scan stops
    /// at the first frame that fails (reported as [`Damage`]), and `each` sees every good one
    /// (to rebuild what frames carry besides logs: idempotency keys).
    pub fn open(
        path: &Path,
        first_seq: u64,
        mut each: impl FnMut(&Frame<'_>),
    ) -> std::io::Result<(Segment, Option<Damage>)> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut extent = Extent::empty(first_seq);
        let mut reader = BufReader::with_capacity(1 << 16, &file);
        let mut head = [0u8; HEADER];
        let damage = match reader.read_exact(&mut head) {
            Err(_) => Some(Damage {
                offset: 0,
                why: Bad::Short,
                bytes: size,
            }),
            Ok(()) if &head[..4] != MAGIC || head[8..] != first_seq.to_le_bytes() => Some(Damage {
                offset: 0,
                why: Bad::Body,
                bytes: size,
            }),
            Ok(()) => {
                let mut offset = HEADER as u64;
                let mut body = Vec::new();
                loop {
                    if offset == size {
                        break None;
                    }
                    let mut fhead = [0u8; HEAD];
                    if reader.read_exact(&mut fhead).is_err() {
                        break Some(Bad::Short);
                    }
                    let len = match frame::body_len(&fhead) {
                        Ok(len) => len,
                        Err(bad) => break Some(bad),
                    };
                    if offset + (HEAD + len) as u64 > size {
                        break Some(Bad::Short);
                    }
                    body.resize(len, 0);
                    if reader.read_exact(&mut body).is_err() {
                        break Some(Bad::Short);
                    }
                    let frame = match frame::decode(&fhead, &body) {
                        Ok(f) => f,
                        Err(bad) => break Some(bad),
                    };
                    // Sequence numbers only grow inside a segment and start at its own.
                    if frame.seq != extent.next_seq || frame.logs.is_empty() {
                        break Some(Bad::Body);
                    }
                    extent.add(
                        offset,
                        (HEAD + len) as u64,
                        frame.seq,
                        frame.logs.len() as u64,
                        frame.unix_ms,
                    );
                    each(&frame);
                    offset += (HEAD + len) as u64;
                }
                .map(|why| Damage {
                    offset,
                    why,
                    bytes: size - offset,
                })
            }
        };
        drop(reader);
        Ok((
            Segment {
                first_seq,
                path: path.to_owned(),
                file,
                extent: RwLock::new(extent),
            },
            damage,
        ))
    }

    pub fn extent(&self) -> Extent {
        self.extent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Totals without copying the index: (next_seq, len, logs, oldest_ms, newest_ms).
    pub fn totals(&self) -> (u64, u64, u64, u64, u64) {
        let e = self.extent.read().unwrap_or_else(|p| p.into_inner());
        (e.next_seq, e.len, e.logs, e.oldest_ms, e.newest_ms)
    }

    /// The writer wrote a whole frame: make it readable.
    pub fn published(&self, offset: u64, bytes: u64, seq: u64, count: u64, unix_ms: u64) {
        self.extent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add(offset, bytes, seq, count, unix_ms);
    }

    /// The logs with sequence numbers in `from..to`, at most `max`, as `(seq, json)`, oldest
    /// first. A frame that does not read back as written ends the read with an error.
    pub fn read(&self, from: u64, to: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let (start, len) = {
            let e = self.extent.read().unwrap_or_else(|p| p.into_inner());
            let i = e.index.partition_point(|(seq, _)| *seq <= from);
            let start = match i {
                0 => e.index.first().map_or(e.len, |(_, o)| *o),
                i => e.index[i - 1].1,
            };
            (start, e.len)
        };
        let mut out = Vec::new();
        let mut offset = start;
        let mut body = Vec::new();
        while offset < len && out.len() < max {
            let mut head = [0u8; HEAD];
            self.file
                .read_exact_at(&mut head, offset)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            let blen = frame::body_len(&head).map_err(|b| self.damaged(offset, b))?;
            body.resize(blen, 0);
            self.file
                .read_exact_at(&mut body, offset + HEAD as u64)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            let frame = frame::decode(&head, &body).map_err(|b| self.damaged(offset, b))?;
            for (k, json) in frame.logs.iter().enumerate() {
                let seq = frame.seq + k as u64;
                if seq >= to || out.len() == max {
                    return Ok(out);
                }
                if seq >= from {
                    out.push((seq, json.to_vec()));
                }
            }
            offset += (HEAD + blen) as u64;
        }
        Ok(out)
    }

    fn damaged(&self, offset: u64, why: Bad) -> String {
        format!(
            "{} at byte {offset}: {} (changed on disk after it was written)",
            self.path.display(),
            why.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "logstream-segment-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A segment from 10 with frames of 3 logs each, `frames` of them.
    fn written(d: &Path, frames: u64) -> (Segment, File) {
        let (seg, mut w) = Segment::create(d, 10).unwrap();
        let mut offset = HEADER as u64;
        for f in 0..frames {
            let mut buf = Vec::new();
            let logs: Vec<Vec<u8>> = (0..3)
                .map(|k| format!("{{\"n\":{}}}", 10 + f * 3 + k).into_bytes())
                .collect();
            let refs: Vec<&[u8]> = logs.iter().map(Vec::as_slice).collect();
            frame::encode(&mut buf, 10 + f * 3, 1000 + f, "", &refs);
            w.write_all(&buf).unwrap();
            seg.published(offset, buf.len() as u64, 10 + f * 3, 3, 1000 + f);
            offset += buf.len() as u64;
        }
        (seg, w)
    }

    #[test]
    fn reads_find_any_range_through_the_sparse_index() {
        let d = dir("read");
        let (seg, _w) = written(&d, 2000);
        let e = seg.extent();
        assert!(
            e.index.len() > 3 && e.index.len() < 2000 / 10,
            "sparse: {}",
            e.index.len()
        );
        assert_eq!(e.next_seq, 10 + 6000);
        let got = seg.read(4000, 6016, 5).unwrap();
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [4000, 4001, 4002, 4003, 4004]);
        assert_eq!(got[0].1, b"{\"n\":4000}");
        assert_eq!(seg.read(6008, 7000, 10).unwrap().len(), 2, "to the end");
        assert_eq!(seg.read(10, 12, 10).unwrap().len(), 2, "up to `to`");
        // Scanned again from disk, it is the same.
        let (again, damage) = Segment::open(&seg.path, 10, |_| {}).unwrap();
        assert_eq!(damage, None);
        assert_eq!(again.extent().next_seq, e.next_seq);
        assert_eq!(again.extent().index, e.index);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_torn_or_flipped_tail_is_found_and_the_good_frames_kept() {
        let d = dir("torn");
        let (seg, _w) = written(&d, 10);
        let full = std::fs::read(&seg.path).unwrap();
        let len = seg.extent().len;
        // Cut in the middle of the last frame.
        std::fs::write(&seg.path, &full[..full.len() - 5]).unwrap();
        let (s, damage) = Segment::open(&seg.path, 10, |_| {}).unwrap();
        let damage = damage.unwrap();
        assert_eq!(damage.why, Bad::Short);
        assert_eq!(s.extent().logs, 27, "nine whole frames");
        assert_eq!(damage.offset + damage.bytes, len - 5);
        // A flipped byte in the fifth frame.
        let mut flipped = full.clone();
        let fifth = s.extent().index[0].1 as usize + 4 * (full.len() - HEADER) / 10 + 20;
        flipped[fifth] ^= 0x40;
        std::fs::write(&seg.path, &flipped).unwrap();
        let (s, damage) = Segment::open(&seg.path, 10, |_| {}).unwrap();
        assert_eq!(damage.unwrap().why, Bad::Checksum);
        assert_eq!(s.extent().logs, 12);
        std::fs::remove_dir_all(d).unwrap();
    }
}
