//! `hayate prepare`.

use anyhow::{Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

/// `hayate prepare` sources.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// An ImageNet-style training folder (one subfolder of JPEG/PNG files per class), or any
    /// folder of images: each image is shrunk on its short side and centre-cropped to SIZE x
    /// SIZE. Broken and non-image files are listed and skipped; an interrupted prepare resumes
    /// when run again with the same arguments.
    #[command(visible_alias = "folder")]
    Imagenet {
        /// The source folder.
        #[arg(long)]
        src: PathBuf,
        /// Side length of the prepared images (the model's resolution).
        #[arg(long)]
        size: usize,
        /// The prepared file to write.
        #[arg(long)]
        out: PathBuf,
        /// Decoding threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

impl Command {
    /// Packs the folder.
    pub fn run(self) -> Result<()> {
        let Self::Imagenet {
            src,
            size,
            out,
            threads,
        } = self;
        if size == 0 || size > 4096 {
            bail!("--size must be in 1..=4096");
        }
        let folder = hayate_data::ImageFolder::scan(&src)?;
        eprintln!(
            "{}: {} files in {} classes",
            src.display(),
            folder.files.len(),
            folder.classes.len()
        );
        let threads = threads.unwrap_or_else(hayate_train::dataset::default_threads);
        hayate_train::dataset::prepare_with_progress(&folder, size, &out, threads)?;
        Ok(())
    }
}
