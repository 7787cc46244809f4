//! Datasets for hayate: CIFAR-10 (official binary format, local folder or download), image
//! folders (the ImageNet layout) and their prepared, packed form, and image bytes as floats in
//! [-1, 1]. Independent of Burn: training and evaluation put the floats on their devices.

mod batch;
mod cifar10;
mod download;
mod downscale;
mod error;
mod folder;
mod prepared;

pub use batch::image_to_unit_range;
pub use cifar10::{CIFAR10_CLASSES, Cifar10, IMAGE_BYTES, RECORD_BYTES, Split};
pub use download::{
    CIFAR10_ARCHIVE_MD5, CIFAR10_URL, cifar10_dir, download_cifar10, extract_cifar10, fetch,
};
pub use downscale::{BoxDownscaled, box_downscale};
pub use error::DataError;
pub use folder::{ImageFolder, MAX_DIMENSION, MAX_FILE_BYTES, load_square, square};
pub use prepared::{PrepareProgress, PrepareReport, PreparedImages, Skipped, job_id, prepare};

/// A set of square RGB training images with class labels, read one at a time.
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Side length of the images.
    fn resolution(&self) -> usize;
    /// Class names in label order; empty for unlabelled images (every label is 0).
    fn classes(&self) -> &[String];
    /// Copies image `index` as planar `[3, size, size]` bytes into `pixels` and returns its
    /// label.
    fn read(&self, index: usize, pixels: &mut [u8]) -> Result<u32, DataError>;
    /// One line for the log: what the images are and where they come from.
    fn describe(&self) -> String;
    /// A short name for file names and logs (`cifar10-train`, a prepared file's stem).
    fn name(&self) -> String;
}
