use std::path::PathBuf;

/// Everything that can go wrong reading a dataset; each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CIFAR-10 batch file whose size is not a whole number of records.
    #[error(
        "{path}: size {size} bytes is not a multiple of the CIFAR-10 record size {record} bytes \
         (truncated or not a CIFAR-10 binary batch)"
    )]
    BadSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The expected record size.
        record: usize,
    },
    /// A CIFAR-10 batch file larger than any official one.
    #[error("{path}: {records} records, more than the {max} of an official CIFAR-10 batch file")]
    TooManyRecords {
        /// The file.
        path: PathBuf,
        /// Records found.
        records: usize,
        /// Most allowed.
        max: usize,
    },
    /// A record whose label byte is not a class index.
    #[error("{path}: record {record} has label {label}, but CIFAR-10 labels are 0 to 9")]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Record index.
        record: usize,
        /// The label byte.
        label: u8,
    },
    /// No batch file of the requested split in the folder.
    #[error("no CIFAR-10 {split} files in {dir} (looked for {expected})")]
    NoFiles {
        /// The folder.
        dir: PathBuf,
        /// Which split.
        split: String,
        /// The file names looked for.
        expected: String,
    },
    /// An index past the end of a dataset.
    #[error("index {index} is out of range for a dataset of {len} images")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// A download that failed or whose checksum is wrong.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// Where from.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An archive whose MD5 does not match the published one.
    #[error(
        "{path}: MD5 {actual} does not match the expected {expected}; the file was kept aside at {kept}"
    )]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// What it hashed to.
        actual: String,
        /// What it should hash to.
        expected: String,
        /// Where the bad file was moved.
        kept: PathBuf,
    },
    /// An image folder without a single file.
    #[error("{dir}: no image files found")]
    NoImages {
        /// The folder.
        dir: PathBuf,
    },
    /// A class folder without files.
    #[error("{dir}: empty class folder (every class folder must hold at least one image)")]
    EmptyClass {
        /// The class folder.
        dir: PathBuf,
    },
    /// A prepared dataset file that is damaged or not one.
    #[error("{path}: {reason}")]
    BadPrepared {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
