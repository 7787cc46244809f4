//! The prepared dataset file: images decoded and squared once, packed as bytes, so training
//! reads each image with one positional read instead of decoding JPEGs every epoch.
//!
//! Layout (little-endian): a 64-byte header, the class names (UTF-8, one per line), `count`
//! records of `[label u32, channels x size x size bytes]`, then a table of one CRC-32 per
//! record. The header carries its own CRC and those of the names and the table, so a damaged
//! header is refused at open and a damaged record when it is read. Records are read with
//! positional reads rather than a memory map: the OS page cache serves both the same way, and
//! reads need no `unsafe` and turn I/O errors into errors instead of signals.

use crate::folder::{ImageFolder, load_square};
use crate::{DataError, ImageSource};
use md5::{Digest, Md5};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

const MAGIC: &[u8; 8] = b"HAYATEDS";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
/// Bounds far beyond any real dataset, so a damaged header cannot ask for absurd allocations.
const MAX_SIZE: u32 = 4096;
const MAX_CLASSES: u32 = 1 << 20;
const MAX_NAMES_BYTES: u32 = 64 << 20;
const MAX_COUNT: u64 = 1 << 31;
/// Channels of every prepared image (RGB).
const CHANNELS: u32 = 3;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    size: u32,
    classes: u32,
    count: u64,
    names_len: u32,
    names_crc: u32,
    table_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.size.to_le_bytes());
        h[16..20].copy_from_slice(&CHANNELS.to_le_bytes());
        h[20..24].copy_from_slice(&self.classes.to_le_bytes());
        h[24..32].copy_from_slice(&self.count.to_le_bytes());
        h[32..36].copy_from_slice(&self.names_len.to_le_bytes());
        h[36..40].copy_from_slice(&self.names_crc.to_le_bytes());
        h[40..44].copy_from_slice(&self.table_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..60]);
        h[60..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_BYTES]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        if &h[..8] != MAGIC {
            return Err("not a hayate prepared dataset (bad magic bytes)".into());
        }
        if u32_at(8) != VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads version {VERSION})",
                u32_at(8)
            ));
        }
        if crc32fast::hash(&h[..60]) != u32_at(60) {
            return Err("header checksum mismatch (the header is damaged)".into());
        }
        let header = Self {
            size: u32_at(12),
            classes: u32_at(20),
            count: u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")),
            names_len: u32_at(32),
            names_crc: u32_at(36),
            table_crc: u32_at(40),
        };
        if u32_at(16) != CHANNELS {
            return Err(format!(
                "{} channels; only RGB (3) is supported",
                u32_at(16)
            ));
        }
        if !(1..=MAX_SIZE).contains(&header.size)
            || header.classes > MAX_CLASSES
            || header.names_len > MAX_NAMES_BYTES
            || header.count == 0
            || header.count > MAX_COUNT
        {
            return Err(format!(
                "header values out of range (size {}, classes {}, count {}, names {} bytes)",
                header.size, header.classes, header.count, header.names_len
            ));
        }
        Ok(header)
    }

    fn image_bytes(&self) -> usize {
        (CHANNELS * self.size * self.size) as usize
    }

    fn record_bytes(&self) -> usize {
        4 + self.image_bytes()
    }

    fn data_offset(&self) -> u64 {
        HEADER_BYTES as u64 + self.names_len as u64
    }

    fn table_offset(&self) -> u64 {
        self.data_offset() + self.count * self.record_bytes() as u64
    }

    fn file_len(&self) -> u64 {
        self.table_offset() + 4 * self.count
    }
}

/// A prepared dataset file opened for reading; only the checksum table is held in memory.
#[derive(Debug)]
pub struct PreparedImages {
    path: PathBuf,
    file: Mutex<File>,
    header: Header,
    classes: Vec<String>,
    crcs: Vec<u32>,
}

impl PreparedImages {
    /// Opens `path`, checking the header, the file's length, the class names and the checksum
    /// table; each record's own checksum is checked when it is read.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::BadPrepared {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(bad(format!(
                "{len} bytes, too short to be a prepared dataset"
            )));
        }
        let mut h = [0u8; HEADER_BYTES];
        file.read_exact(&mut h)
            .map_err(|e| DataError::io(path, e))?;
        let header = Header::decode(&h).map_err(bad)?;
        if len != header.file_len() {
            return Err(bad(format!(
                "{len} bytes, but its header describes {} bytes (truncated or damaged)",
                header.file_len()
            )));
        }
        let mut names = vec![0u8; header.names_len as usize];
        file.read_exact(&mut names)
            .map_err(|e| DataError::io(path, e))?;
        if crc32fast::hash(&names) != header.names_crc {
            return Err(bad("class names checksum mismatch".into()));
        }
        let names =
            String::from_utf8(names).map_err(|_| bad("class names are not UTF-8".into()))?;
        let classes: Vec<String> = names.lines().map(str::to_owned).collect();
        if classes.len() != header.classes as usize {
            return Err(bad(format!(
                "{} class names for {} classes",
                classes.len(),
                header.classes
            )));
        }
        file.seek(SeekFrom::Start(header.table_offset()))
            .map_err(|e| DataError::io(path, e))?;
        let mut table = vec![0u8; 4 * header.count as usize];
        file.read_exact(&mut table)
            .map_err(|e| DataError::io(path, e))?;
        if crc32fast::hash(&table) != header.table_crc {
            return Err(bad("checksum table mismatch".into()));
        }
        let crcs = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            header,
            classes,
            crcs,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ImageSource for PreparedImages {
    fn len(&self) -> usize {
        self.header.count as usize
    }

    fn resolution(&self) -> usize {
        self.header.size as usize
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError> {
        if index >= self.len() {
            return Err(DataError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        assert_eq!(pixels.len(), self.header.image_bytes(), "pixel buffer size");
        let offset = self.header.data_offset() + (index * self.header.record_bytes()) as u64;
        let mut label = [0u8; 4];
        {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut label))
                .and_then(|_| file.read_exact(pixels))
                .map_err(|e| DataError::io(&self.path, e))?;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&label);
        crc.update(pixels);
        let label = u32::from_le_bytes(label);
        if crc.finalize() != self.crcs[index] {
            return Err(DataError::BadPrepared {
                path: self.path.clone(),
                reason: format!("image {index} fails its checksum (the file is damaged)"),
            });
        }
        if label >= self.header.classes.max(1) {
            return Err(DataError::BadPrepared {
                path: self.path.clone(),
                reason: format!(
                    "image {index} has label {label} of {} classes",
                    self.classes.len()
                ),
            });
        }
        Ok(label)
    }

    fn describe(&self) -> String {
        format!(
            "{} images of {s}x{s} in {} classes from {}",
            self.len(),
            self.classes.len(),
            self.path.display(),
            s = self.header.size
        )
    }

    fn name(&self) -> String {
        self.path
            .file_stem()
            .map_or_else(|| "prepared".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// A file that was not packed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why (empty, huge, not an image, broken).
    pub reason: String,
}

/// Where a prepare stands, passed to its progress callback after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareProgress {
    /// Source files handled so far.
    pub done: usize,
    /// Source files in all.
    pub total: usize,
    /// Images packed so far.
    pub written: usize,
    /// Files skipped so far.
    pub skipped: usize,
    /// Source files that an earlier, interrupted prepare had already handled.
    pub resumed_from: usize,
}

/// What a prepare did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    /// Whether the file was finished (false when the progress callback stopped it; run the same
    /// prepare again to resume).
    pub complete: bool,
    /// Images packed.
    pub written: usize,
    /// Files skipped, with reasons.
    pub skipped: Vec<Skipped>,
    /// Source files that an earlier, interrupted prepare had already handled.
    pub resumed_from: usize,
}

/// Source files decoded per chunk and thread; progress is saved after each chunk.
const FILES_PER_THREAD: usize = 32;

/// Packs `folder` at `size` x `size` into `out` on `threads` threads, resuming an interrupted
/// prepare of the same folder and size. Broken, empty, huge and non-image files are skipped
/// and listed in the report. `progress` is called after each chunk, whose records are on disk
/// by then; returning `Break` stops (the work so far is kept for a resume). The finished file
/// appears at `out` by a rename, so `out` is never half written.
pub fn prepare(
    folder: &ImageFolder,
    size: usize,
    out: &Path,
    threads: usize,
    mut progress: impl FnMut(&PrepareProgress) -> ControlFlow<()>,
) -> Result<PrepareReport, DataError> {
    if !(1..=MAX_SIZE as usize).contains(&size) {
        return Err(DataError::BadPrepared {
            path: out.to_path_buf(),
            reason: format!("image size {size} must be 1 to {MAX_SIZE}"),
        });
    }
    let partial = sibling(out, "partial");
    let journal_path = sibling(out, "progress");
    let names = folder.classes.join("\n");
    let mut header = Header {
        size: size as u32,
        classes: folder.classes.len() as u32,
        count: 0,
        names_len: names.len() as u32,
        names_crc: crc32fast::hash(names.as_bytes()),
        table_crc: 0,
    };
    let job = job_id(folder, size);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| DataError::io(path, e)
    };

    let mut journal = Journal::read(&journal_path, &job).filter(|_| partial.is_file());
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&partial)
        .map_err(io(&partial))?;
    let mut crcs = Vec::new();
    match &journal {
        Some(j) => {
            // Keep only the records the journal vouches for; a chunk cut short is redone.
            let end = header.data_offset() + (j.written * header.record_bytes()) as u64;
            file.set_len(end).map_err(io(&partial))?;
            file.seek(SeekFrom::Start(header.data_offset()))
                .map_err(io(&partial))?;
            let mut record = vec![0u8; header.record_bytes()];
            for _ in 0..j.written {
                file.read_exact(&mut record).map_err(io(&partial))?;
                crcs.push(crc32fast::hash(&record));
            }
        }
        None => {
            file.set_len(0).map_err(io(&partial))?;
            file.write_all(&[0u8; HEADER_BYTES])
                .and_then(|_| file.write_all(names.as_bytes()))
                .map_err(io(&partial))?;
        }
    }
    let mut state = journal.take().unwrap_or(Journal {
        job,
        done: 0,
        written: 0,
        skipped: Vec::new(),
    });
    let resumed_from = state.done;
    let threads = threads.max(1);
    let mut writer = BufWriter::new(file);
    let mut complete = true;
    for chunk in folder.files[state.done..].chunks(threads * FILES_PER_THREAD) {
        let decoded = decode_parallel(chunk, size, threads);
        for ((path, label), result) in chunk.iter().zip(decoded) {
            match result {
                Ok(pixels) => {
                    let mut crc = crc32fast::Hasher::new();
                    crc.update(&label.to_le_bytes());
                    crc.update(&pixels);
                    crcs.push(crc.finalize());
                    writer
                        .write_all(&label.to_le_bytes())
                        .and_then(|_| writer.write_all(&pixels))
                        .map_err(io(&partial))?;
                    state.written += 1;
                }
                Err(reason) => state.skipped.push(Skipped {
                    path: path.clone(),
                    reason,
                }),
            }
        }
        state.done += chunk.len();
        writer.flush().map_err(io(&partial))?;
        writer.get_ref().sync_data().map_err(io(&partial))?;
        state.write(&journal_path)?;
        let step = progress(&PrepareProgress {
            done: state.done,
            total: folder.files.len(),
            written: state.written,
            skipped: state.skipped.len(),
            resumed_from,
        });
        if step.is_break() && state.done < folder.files.len() {
            complete = false;
            break;
        }
    }
    if complete {
        if state.written == 0 {
            return Err(DataError::NoImages {
                dir: folder.root.clone(),
            });
        }
        let table: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        header.count = state.written as u64;
        header.table_crc = crc32fast::hash(&table);
        writer.write_all(&table).map_err(io(&partial))?;
        let mut file = writer
            .into_inner()
            .map_err(|e| DataError::io(&partial, e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()))
            .and_then(|_| file.sync_all())
            .map_err(io(&partial))?;
        drop(file);
        std::fs::rename(&partial, out).map_err(io(out))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename durable; some filesystems cannot sync a folder, which is harmless.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        let _ = std::fs::remove_file(&journal_path);
    }
    Ok(PrepareReport {
        complete,
        written: state.written,
        skipped: state.skipped,
        resumed_from,
    })
}

/// Decodes `files` on `threads` threads, results in order.
fn decode_parallel(
    files: &[(PathBuf, u32)],
    size: usize,
    threads: usize,
) -> Vec<Result<Vec<u8>, String>> {
    let per = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(path, _)| {
                            // A decoder that panics on a malformed file makes that file
                            // unusable, not the whole prepare.
                            std::panic::catch_unwind(|| load_square(path, size)).unwrap_or_else(
                                |_| Err("cannot decode: the decoder crashed on this file".into()),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a decoding thread panicked"))
            .collect()
    })
}

/// `out` with `.suffix` appended to its name.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}

/// Identifies a prepare by its inputs: the format, the size, and every file's path, class,
/// length and modification time, so a resume never mixes two different sources.
pub fn job_id(folder: &ImageFolder, size: usize) -> String {
    let mut hash = Md5::new();
    hash.update(format!("v{VERSION} size {size}\n"));
    for class in &folder.classes {
        hash.update(format!("class {class}\n"));
    }
    for (path, label) in &folder.files {
        let meta = std::fs::metadata(path).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let relative = path.strip_prefix(&folder.root).unwrap_or(path);
        hash.update(format!("{} {label} {len} {modified}\n", relative.display()));
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The saved position of an interrupted prepare, rewritten atomically after each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Journal {
    job: String,
    done: usize,
    written: usize,
    skipped: Vec<Skipped>,
}

impl Journal {
    /// The journal at `path` if it belongs to `job`; a missing, damaged or foreign journal means
    /// starting over.
    fn read(path: &Path, job: &str) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut lines = text.lines();
        let mut field = |name: &str| lines.next()?.strip_prefix(name).map(str::to_owned);
        let journal_job = field("job ")?;
        let done = field("done ")?.parse().ok()?;
        let written = field("written ")?.parse().ok()?;
        let skipped = lines
            .map(|l| {
                let (path, reason) = l.strip_prefix("skip ")?.split_once('\t')?;
                Some(Skipped {
                    path: PathBuf::from(path),
                    reason: reason.into(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (journal_job == job && written + skipped.len() == done).then_some(Self {
            job: journal_job,
            done,
            written,
            skipped,
        })
    }

    fn write(&self, path: &Path) -> Result<(), DataError> {
        let mut text = format!(
            "job {}\ndone {}\nwritten {}\n",
            self.job, self.done, self.written
        );
        for s in &self.skipped {
            let reason = s.reason.replace(['\n', '\t'], " ");
            text.push_str(&format!("skip {}\t{reason}\n", s.path.display()));
        }
        let tmp = sibling(path, "tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| DataError::io(path, e))
    }
}
