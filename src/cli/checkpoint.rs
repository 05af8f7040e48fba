//! Where `ship` is in each file it follows, kept on disk so that running it again resumes
//! instead of sending the whole file again (as Fluent Bit's DB and Vector's checkpoints do).
//!
//! One small JSON file per followed file and device, in `<data_dir>/ship/`: the file's path,
//! its identity (device and inode, so a file replaced while `ship` was not running is read
//! from its start), the byte offset up to which its lines landed, and the batch in flight
//! (`pending`: up to which offset, under which `Idempotency-Key`). The batch in flight is
//! written before it is sent: after a crash between the server's 202 and the checkpoint's
//! update, the next run sends the same lines under the same key, and the server answers
//! `duplicate` instead of publishing them twice. Writes go to a temporary name, then a
//! rename, so a checkpoint is always whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A file's identity: (device, inode).
pub type Identity = (u64, u64);

/// A batch sent but not yet known to have landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its lines end at this offset (they start at the checkpoint's `offset`).
    pub until: u64,
    /// The `Idempotency-Key` it was sent with.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub device: String,
    pub dev: u64,
    pub inode: u64,
    /// Every line before this byte has landed.
    pub offset: u64,
    /// A fingerprint of the up to 64 bytes before `offset`: a file truncated and written
    /// past the offset again (copytruncate while ship was away) does not match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

impl Checkpoint {
    pub fn identity(&self) -> Identity {
        (self.dev, self.inode)
    }
}

/// The checkpoint file of one followed file and device.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    file: PathBuf,
}

impl CheckpointFile {
    /// The checkpoint of `device`'s lines from `followed` (made absolute), in `data_dir`.
    pub fn new(data_dir: &Path, device: &str, followed: &Path) -> CheckpointFile {
        let name = format!(
            "{:016x}.json",
            fingerprint(format!("{device}\0{}", followed.display()).as_bytes())
        );
        CheckpointFile {
            file: data_dir.join("ship").join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The checkpoint kept, if any. One that cannot be read or parsed is an error (the
    /// caller says so and starts from the beginning).
    pub fn load(&self) -> Result<Option<Checkpoint>, String> {
        match std::fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("checkpoint {} is damaged: {e}", self.file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading checkpoint {}: {e}", self.file.display())),
        }
    }

    pub fn save(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A name of this process's own, synced before the rename: a checkpoint is whole
        // after a crash or a power loss.
        let tmp = self
            .file
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec(checkpoint).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.file)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing checkpoint {}: {e}", self.file.display())
        })
    }
}

/// A fingerprint of `bytes` (see [`Checkpoint::before`]), and of a (device, path) pair for
/// a stable file name: the first 8 bytes of their SHA-256.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_saved_whole_and_read_back_per_device_and_path() {
        let dir = std::env::temp_dir().join(format!("logstream-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = CheckpointFile::new(&dir, "web-1", Path::new("/var/log/app.log"));
        let b = CheckpointFile::new(&dir, "web-2", Path::new("/var/log/app.log"));
        assert_ne!(a.path(), b.path());
        assert_eq!(a.load().unwrap(), None);
        let mut c = Checkpoint {
            path: "/var/log/app.log".into(),
            device: "web-1".into(),
            dev: 1,
            inode: 2,
            offset: 10,
            before: Some(7),
            pending: Some(Pending {
                until: 30,
                key: "k".into(),
            }),
        };
        a.save(&c).unwrap();
        assert_eq!(a.load().unwrap(), Some(c.clone()));
        c.pending = None;
        c.offset = 30;
        a.save(&c).unwrap();
        assert_eq!(a.load().unwrap(), Some(c));
        assert_eq!(b.load().unwrap(), None);
        std::fs::write(a.path(), b"{not json").unwrap();
        assert!(a.load().unwrap_err().contains("damaged"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
