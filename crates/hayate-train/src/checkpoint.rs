//! Checkpoints: one file per checkpoint holding model, EMA, optimiser, RNG streams, step and
//! config, written atomically (temporary file, fsync, rename) and checksummed. There is no
//! learning-rate scheduler state: the rate is a function of the step and the config
//! (`TrainConfig::lr_schedule`), rebuilt from the step on resume.

use crate::batches::SourceState;
use crate::config::RunConfig;
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"HAYATECK";
const VERSION: u32 = 1;

/// The host-side part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The resolved run config.
    pub config: RunConfig,
    /// The batch sequence's position, including the global step and RNG streams.
    pub source: SourceState,
    /// Names and byte lengths of the binary sections, in file order.
    pub sections: Vec<(String, u64)>,
    /// Seconds spent in training steps from the start of the run to this checkpoint, over
    /// every resume (checkpoints, sample grids and scoring excluded); 0 in checkpoints written
    /// before it was kept.
    #[serde(default)]
    pub train_seconds: f64,
}

/// A checkpoint in memory: metadata plus named binary records (Burn's burnpack bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Config, step, RNG state.
    pub meta: CheckpointMeta,
    /// The records, by name.
    pub sections: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    /// The global step the checkpoint was taken at.
    pub fn step(&self) -> u64 {
        self.meta.source.step
    }

    /// The section named `name`.
    pub fn section(&self, name: &str) -> Result<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .with_context(|| format!("checkpoint has no {name:?} section"))
    }

    /// Writes the file: magic, version, metadata length and JSON, the sections, then the
    /// SHA-256 of everything before it. Streamed, so a checkpoint of several gigabytes is never
    /// assembled in memory a second time.
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut meta = self.meta.clone();
        meta.sections = self
            .sections
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect();
        let json = serde_json::to_vec(&meta).expect("checkpoint metadata serialises");
        let mut hash = Sha256::new();
        let mut put = |bytes: &[u8]| {
            hash.update(bytes);
            out.write_all(bytes)
        };
        put(MAGIC)?;
        put(&VERSION.to_le_bytes())?;
        put(&(json.len() as u64).to_le_bytes())?;
        put(&json)?;
        for (_, bytes) in &self.sections {
            put(bytes)?;
        }
        out.write_all(&hash.finalize())
    }

    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to memory");
        out
    }

    #[cfg(test)]
    fn decode(bytes: &[u8]) -> Result<Self> {
        Self::read_from(std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    /// Reads and verifies a checkpoint of `len` bytes: a first pass checks the digest, a second
    /// reads the sections, so memory holds the sections once (not the file and then the
    /// sections).
    fn read_from(mut reader: impl Read + Seek, len: u64) -> Result<Self> {
        ensure!(len >= 8 + 4 + 8 + 32, "file too short to be a checkpoint");
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic)?;
        ensure!(&magic == MAGIC, "not a hayate checkpoint (bad magic)");
        reader.rewind()?;
        let mut hash = Sha256::new();
        std::io::copy(&mut (&mut reader).take(len - 32), &mut hash)?;
        let mut digest = [0u8; 32];
        reader.read_exact(&mut digest)?;
        ensure!(
            hash.finalize().as_slice() == digest,
            "checksum mismatch: the file is corrupt or incomplete"
        );
        reader.rewind()?;
        Self::read_body(reader.take(len - 32), len - 32)
    }

    /// Parses a verified body (the file without its digest) of `len` bytes, reading each
    /// section straight into its own buffer.
    fn read_body(mut body: impl Read, len: u64) -> Result<Self> {
        let mut head = [0u8; 20];
        body.read_exact(&mut head).context("truncated header")?;
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        ensure!(
            version == VERSION,
            "checkpoint format version {version}, expected {VERSION}"
        );
        let mut left = len - 20;
        // Every length is checked against what is left of the file before anything is
        // allocated, so a damaged length cannot ask for more memory than the file's size.
        let mut take = |n: u64, what: &str| -> Result<Vec<u8>> {
            ensure!(n <= left, "truncated {what}");
            left -= n;
            let mut buf = vec![0u8; usize::try_from(n).context("section too large")?];
            body.read_exact(&mut buf)
                .with_context(|| format!("reading {what}"))?;
            Ok(buf)
        };
        let json_len = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        let json = take(json_len, "metadata")?;
        let meta: CheckpointMeta = serde_json::from_slice(&json).context("bad metadata")?;
        let mut sections = Vec::new();
        for (name, n) in &meta.sections {
            sections.push((name.clone(), take(*n, "section")?));
        }
        ensure!(left == 0, "trailing bytes after the last section");
        Ok(Self { meta, sections })
    }

    /// Writes the checkpoint into `dir` as `ckpt-<step>.hayate`, atomically, then deletes all
    /// but the newest `keep`. Returns the file's path.
    pub fn save(&self, dir: &Path, keep: usize) -> Result<PathBuf> {
        let path = dir.join(format!("ckpt-{:09}.hayate", self.step()));
        self.write_file(&path)?;
        let all = list(dir)?;
        for old in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_file(old)
                .with_context(|| format!("cannot delete old checkpoint {}", old.display()))?;
        }
        Ok(path)
    }

    /// Writes the checkpoint to `path`, atomically.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        write_atomic_with(path, |file| {
            let mut out = std::io::BufWriter::new(file);
            self.write_to(&mut out)?;
            out.flush()
        })
    }

    /// Reads and verifies a checkpoint file.
    pub fn load(path: &Path) -> Result<Self> {
        let read = || -> Result<Self> {
            let file = std::fs::File::open(path)?;
            let len = file.metadata()?.len();
            Self::read_from(std::io::BufReader::new(file), len)
        };
        read().with_context(|| format!("checkpoint {}", path.display()))
    }

    /// The newest checkpoint in `dir` that loads and verifies, with its path (or the file itself
    /// when `dir` is a checkpoint file). Newer files that fail to verify are skipped with a
    /// warning naming them, so one damaged file does not strand a run.
    pub fn load_newest_valid(dir: &Path) -> Result<(PathBuf, Self)> {
        if dir.is_file() {
            return Ok((dir.to_path_buf(), Self::load(dir)?));
        }
        let found = list(dir)?;
        let mut failures = Vec::new();
        for path in found.iter().rev() {
            match Self::load(path) {
                Ok(checkpoint) => {
                    for failure in &failures {
                        eprintln!("warning: skipped a damaged checkpoint: {failure:#}");
                    }
                    return Ok((path.clone(), checkpoint));
                }
                Err(e) => failures.push(e),
            }
        }
        match failures.is_empty() {
            true => bail!("no checkpoint (ckpt-*.hayate) in {}", dir.display()),
            false => bail!(
                "no checkpoint in {} verifies: {}",
                dir.display(),
                failures
                    .iter()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    /// The newest checkpoint in `dir` (a checkpoint file, or a run folder).
    pub fn latest(dir: &Path) -> Result<PathBuf> {
        if dir.is_file() {
            return Ok(dir.to_path_buf());
        }
        let found = list(dir)?;
        match found.last() {
            Some(p) => Ok(p.clone()),
            None => bail!("no checkpoint (ckpt-*.hayate) in {}", dir.display()),
        }
    }
}

/// Checkpoint files (`ckpt-*.hayate`) in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".hayate"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path`, and
/// syncs the folder, so `path` is always either the old or the new complete file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `write` into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    // A bare file name's parent is "", which cannot be opened to sync: it is the current folder.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::Streams;

    fn sample(step: u64) -> Checkpoint {
        let config = RunConfig::parse("[model]\npreset = \"tiny\"\n").unwrap();
        Checkpoint {
            meta: CheckpointMeta {
                config,
                source: SourceState {
                    step,
                    streams: Streams::new(3),
                    order: vec![2, 0, 1],
                    cursor: 1,
                    adaptive: None,
                },
                sections: vec![],
                train_seconds: 1.5,
            },
            sections: vec![("model".into(), vec![1, 2, 3]), ("ema".into(), vec![])],
        }
    }

    /// `--out grid.png` names a file in the current folder: written, synced, no error.
    #[test]
    fn writes_a_bare_file_name_in_the_current_folder() {
        let name = format!("write-atomic-test-{}.tmp", std::process::id());
        let result = write_atomic(Path::new(&name), b"ok");
        let written = std::fs::read(&name);
        let _ = std::fs::remove_file(&name);
        result.unwrap();
        assert_eq!(written.unwrap(), b"ok");
    }

    #[test]
    fn round_trips_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30, 40] {
            sample(step).save(dir.path(), 2).unwrap();
        }
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let latest = Checkpoint::latest(dir.path()).unwrap();
        let loaded = Checkpoint::load(&latest).unwrap();
        assert_eq!(loaded.step(), 40);
        assert_eq!(loaded.section("model").unwrap(), &[1, 2, 3]);
        assert_eq!(loaded.meta.source, sample(40).meta.source);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(5).save(dir.path(), 1).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let msg = format!("{:#}", Checkpoint::load(&path).unwrap_err());
        assert!(msg.contains("checksum") && msg.contains("ckpt-"), "{msg}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(Checkpoint::load(&path).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(Checkpoint::load(&path).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// A checkpoint cut short or with bytes changed (and, half the time, its checksum
        /// recomputed so the parser behind it is reached) loads or fails with an error; it
        /// never panics.
        #[test]
        fn damaged_checkpoints_fail_cleanly(
            cut in proptest::prelude::any::<usize>(),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                0..6,
            ),
            rechecksum in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = sample(7).encode();
            bytes.truncate(cut % (bytes.len() + 1));
            let len = bytes.len();
            for (at, value) in flips {
                if len > 0 {
                    bytes[at % len] = value;
                }
            }
            if rechecksum && len > 32 {
                let digest = Sha256::digest(&bytes[..len - 32]);
                bytes[len - 32..].copy_from_slice(&digest);
            }
            let _ = Checkpoint::decode(&bytes);
        }
    }

    #[test]
    fn the_newest_valid_checkpoint_is_found_past_damaged_and_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            sample(step).save(dir.path(), 3).unwrap();
        }
        // A write that died half way leaves only the temporary file; a damaged newest file
        // (bit rot, a copy cut short) fails its checksum.
        let newest = Checkpoint::latest(dir.path()).unwrap();
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(dir.path().join(".ckpt-000000040.hayate.tmp"), &bytes[..100]).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() - 1]).unwrap();
        let (path, loaded) = Checkpoint::load_newest_valid(dir.path()).unwrap();
        assert_eq!(loaded.step(), 20);
        assert!(path.ends_with("ckpt-000000020.hayate"));
        for step in [10, 20] {
            std::fs::write(dir.path().join(format!("ckpt-{step:09}.hayate")), b"junk").unwrap();
        }
        let msg = format!(
            "{:#}",
            Checkpoint::load_newest_valid(dir.path()).unwrap_err()
        );
        assert!(
            msg.contains("no checkpoint in") && msg.contains("ckpt-000000010"),
            "{msg}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(Checkpoint::load_newest_valid(empty.path()).is_err());
    }
}
