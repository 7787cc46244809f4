//! CIFAR-10 in the official binary format (`cifar-10-batches-bin`).

use crate::{DataError, ImageSource};
use std::path::{Path, PathBuf};

/// Bytes of one image: 3 planes (R, G, B) of 32x32, row-major.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record: a label byte, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in one official batch file.
const RECORDS_PER_FILE: usize = 10_000;

/// The class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which part of CIFAR-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `data_batch_1.bin` to `data_batch_5.bin` (50,000 images when all are present).
    Train,
    /// `test_batch.bin` (10,000 images).
    Test,
}

impl Split {
    /// The official file names of the split.
    pub fn file_names(self) -> Vec<String> {
        match self {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".into()],
        }
    }

    /// "train" or "test".
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A CIFAR-10 split held in memory (at most 150 MB for the full training set).
#[derive(Debug, Clone)]
pub struct Cifar10 {
    records: Vec<u8>,
    files: Vec<PathBuf>,
    classes: Vec<String>,
    split: Split,
}

impl Cifar10 {
    /// Reads every file of `split` present in `dir` (any subset of the official files works).
    pub fn open(dir: &Path, split: Split) -> Result<Self, DataError> {
        let names = split.file_names();
        let files: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            return Err(DataError::NoFiles {
                dir: dir.to_path_buf(),
                split: split.name().into(),
                expected: names.join(", "),
            });
        }
        let mut records = Vec::new();
        for path in &files {
            records.extend(read_batch_file(path)?);
        }
        Ok(Self {
            records,
            files,
            classes: CIFAR10_CLASSES.map(String::from).to_vec(),
            split,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The files that were found and read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The image at `index`, without copying.
    pub fn image(&self, index: usize) -> (&[u8], u8) {
        let r = &self.records[index * RECORD_BYTES..(index + 1) * RECORD_BYTES];
        (&r[1..], r[0])
    }
}

/// Reads and checks one batch file: a whole number of records, no more than an official file
/// holds, and labels in 0..10.
fn read_batch_file(path: &Path) -> Result<Vec<u8>, DataError> {
    // Refuse an oversized file before reading it: a wrong file under an official name could be
    // many gigabytes.
    let size = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    let max = (RECORDS_PER_FILE * RECORD_BYTES) as u64;
    if size > max {
        return Err(DataError::TooManyRecords {
            path: path.to_path_buf(),
            records: (size / RECORD_BYTES as u64) as usize,
            max: RECORDS_PER_FILE,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(DataError::BadSize {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            record: RECORD_BYTES,
        });
    }
    let records = bytes.len() / RECORD_BYTES;
    if records > RECORDS_PER_FILE {
        return Err(DataError::TooManyRecords {
            path: path.to_path_buf(),
            records,
            max: RECORDS_PER_FILE,
        });
    }
    for (record, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if chunk[0] > 9 {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                record,
                label: chunk[0],
            });
        }
    }
    Ok(bytes)
}

impl ImageSource for Cifar10 {
    fn len(&self) -> usize {
        Cifar10::len(self)
    }

    fn resolution(&self) -> usize {
        32
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError> {
        let len = self.len();
        if index >= len {
            return Err(DataError::OutOfRange { index, len });
        }
        let (image, label) = self.image(index);
        pixels.copy_from_slice(image);
        Ok(label as u32)
    }

    fn describe(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        format!(
            "CIFAR-10: {} images of 32x32 from {}",
            self.len(),
            files.join(", ")
        )
    }

    fn name(&self) -> String {
        format!("cifar10-{}", self.split.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_records(dir: &Path, name: &str, labels: &[u8]) -> PathBuf {
        let mut bytes = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            bytes.push(l);
            bytes.extend((0..IMAGE_BYTES).map(|p| ((p + i) % 256) as u8));
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_generated_files_and_says_which_it_found() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), "data_batch_1.bin", &[3, 7]);
        write_records(dir.path(), "data_batch_4.bin", &[9]);
        write_records(dir.path(), "test_batch.bin", &[0]);
        let train = Cifar10::open(dir.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 3);
        let names: Vec<_> = train
            .files()
            .iter()
            .map(|p| p.file_name().unwrap())
            .collect();
        assert_eq!(names, ["data_batch_1.bin", "data_batch_4.bin"]);
        let mut pixels = vec![0u8; IMAGE_BYTES];
        assert_eq!(train.read(1, &mut pixels).unwrap(), 7);
        assert_eq!(pixels[0], 1);
        assert_eq!(train.read(2, &mut pixels).unwrap(), 9);
        assert!(matches!(
            train.read(3, &mut pixels),
            Err(DataError::OutOfRange { index: 3, len: 3 })
        ));
        assert_eq!(Cifar10::open(dir.path(), Split::Test).unwrap().len(), 1);
    }

    #[test]
    fn truncated_file_is_an_error_naming_file_size_and_record_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_records(dir.path(), "data_batch_1.bin", &[1, 2]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let msg = Cifar10::open(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data_batch_1.bin"), "{msg}");
        assert!(msg.contains(&(2 * RECORD_BYTES - 100).to_string()), "{msg}");
        assert!(msg.contains("3073"), "{msg}");
    }

    #[test]
    fn oversized_and_empty_files_and_bad_labels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_records(dir.path(), "test_batch.bin", &[1]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Cifar10::open(dir.path(), Split::Test),
            Err(DataError::BadSize { .. })
        ));
        std::fs::write(&path, vec![0u8; RECORD_BYTES * (RECORDS_PER_FILE + 1)]).unwrap();
        let err = Cifar10::open(dir.path(), Split::Test).unwrap_err();
        assert!(matches!(err, DataError::TooManyRecords { .. }), "{err}");
        std::fs::write(&path, []).unwrap();
        assert!(matches!(
            Cifar10::open(dir.path(), Split::Test),
            Err(DataError::BadSize { size: 0, .. })
        ));
        write_records(dir.path(), "test_batch.bin", &[4, 12]);
        let msg = Cifar10::open(dir.path(), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("record 1") && msg.contains("label 12"),
            "{msg}"
        );
    }

    #[test]
    fn a_huge_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        // 64 GB, sparse: reading it first would exhaust memory (and take minutes).
        let file = std::fs::File::create(dir.path().join("data_batch_2.bin")).unwrap();
        file.set_len(64 << 30).unwrap();
        let err = Cifar10::open(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::TooManyRecords { .. }), "{err}");
        assert!(err.to_string().contains("data_batch_2.bin"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever bytes sit in a batch file, opening it returns an error or a dataset whose
        /// every record reads; it never panics. Lengths cluster near whole records so the
        /// label checks and the size checks both get exercised.
        #[test]
        fn any_batch_file_is_read_or_refused_without_panicking(
            records in 0usize..4,
            extra in proptest::prop_oneof![proptest::strategy::Just(0usize), 0usize..RECORD_BYTES],
            seed in proptest::prelude::any::<u64>(),
            label_bias in 0u8..3,
        ) {
            let mut state = seed | 1;
            let mut bytes: Vec<u8> = (0..records * RECORD_BYTES + extra)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            // Mostly valid labels, sometimes not.
            for chunk in bytes.chunks_mut(RECORD_BYTES) {
                chunk[0] %= 10 + label_bias * 100;
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("data_batch_1.bin"), &bytes).unwrap();
            if let Ok(data) = Cifar10::open(dir.path(), Split::Train) {
                proptest::prop_assert_eq!(data.len(), records);
                let mut pixels = vec![0u8; IMAGE_BYTES];
                for i in 0..data.len() {
                    proptest::prop_assert!(data.read(i, &mut pixels).unwrap() < 10);
                }
            }
        }
    }

    #[test]
    fn a_folder_without_cifar_files_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data_batch_1.txt"), b"x").unwrap();
        let msg = Cifar10::open(dir.path(), Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data_batch_1.bin"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
