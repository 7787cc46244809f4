//! Datasets for hayate: the CIFAR-10 reader (official binary format, local folder or download)
//! and the glue that turns images into Burn tensors in [-1, 1].

mod batch;
mod cifar10;
mod download;
mod error;

pub use batch::{ImageBatcher, Sample, image_to_unit_range};
pub use cifar10::{CIFAR10_CLASSES, Cifar10, CifarImage, IMAGE_BYTES, RECORD_BYTES, Split};
pub use download::{
    CIFAR10_ARCHIVE_MD5, CIFAR10_URL, cifar10_dir, download_cifar10, extract_cifar10, fetch,
};
pub use error::DataError;
