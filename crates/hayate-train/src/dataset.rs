//! The training images of a run: CIFAR-10, or an image folder (the ImageNet layout) packed once
//! into a prepared file that training reads image by image.

use crate::config::{DataConfig, DatasetKind};
use anyhow::{Context, Result, bail};
use hayate_data::{
    BoxDownscaled, Cifar10, ImageFolder, ImageSource, PrepareProgress, PrepareReport,
    PreparedImages, Split,
};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Opens the training images of `data` at `resolution`: `dir` (the `--data-dir` override, else
/// `data.dir`) is CIFAR-10's folder, or an image folder or prepared file. An image folder is
/// prepared into `cache/prepared` the first time (resuming an interrupted prepare), then read
/// from there.
pub fn open_training_images(
    data: &DataConfig,
    dir: Option<&Path>,
    resolution: usize,
    cache: &Path,
) -> Result<Arc<dyn ImageSource>> {
    let dir = dir.or(data.dir.as_deref());
    let images: Arc<dyn ImageSource> = match data.dataset {
        DatasetKind::Cifar10 => cifar10_images(dir, Split::Train, resolution, cache)?,
        DatasetKind::ImageFolder => {
            let Some(dir) = dir else {
                bail!(
                    "data.dataset = \"image_folder\" needs data.dir or --data-dir: an image folder \
                     (one subfolder per class) or a file written by `hayate prepare`"
                );
            };
            let file = if dir.is_dir() {
                prepared_in_cache(dir, resolution, cache)?
            } else {
                dir.to_path_buf()
            };
            Arc::new(PreparedImages::open(&file)?)
        }
    };
    if images.resolution() != resolution {
        bail!(
            "{} is {}x{} but the model is built for {resolution}x{resolution}; prepare the data at \
             {resolution} (hayate prepare --size {resolution}) or change model.resolution \
             (CIFAR-10 also trains at 16 and 8)",
            images.describe(),
            images.resolution(),
            images.resolution()
        );
    }
    Ok(images)
}

/// A CIFAR-10 split from `dir` (else `$HAYATE_CIFAR10_DIR` or the cache, downloading there),
/// averaged over 2x2 or 4x4 blocks when `resolution` is 16 or 8.
pub fn cifar10_images(
    dir: Option<&Path>,
    split: Split,
    resolution: usize,
    cache: &Path,
) -> Result<Arc<dyn ImageSource>> {
    let dir = hayate_data::cifar10_dir(dir, cache)?;
    let full: Arc<dyn ImageSource> = Arc::new(Cifar10::open(&dir, split)?);
    Ok(match BoxDownscaled::new(full.clone(), resolution) {
        Some(small) if resolution < full.resolution() => Arc::new(small),
        _ => full,
    })
}

/// The prepared file of folder `src` at `size` in `cache/prepared`, named by a hash of the
/// folder's listing, prepared now if it is not there yet.
fn prepared_in_cache(src: &Path, size: usize, cache: &Path) -> Result<PathBuf> {
    eprintln!("scanning {}", src.display());
    let folder = ImageFolder::scan(src)?;
    let job = hayate_data::job_id(&folder, size);
    let stem = src
        .file_name()
        .map_or_else(|| "images".into(), |n| n.to_string_lossy().into_owned());
    let dir = cache.join("prepared");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{stem}-{size}-{}.hds", &job[..16]));
    if out.is_file() {
        return Ok(out);
    }
    eprintln!(
        "preparing {} images of {} at {size}x{size} into {} (once; later runs read that file)",
        folder.files.len(),
        src.display(),
        out.display()
    );
    prepare_with_progress(&folder, size, &out, default_threads())?;
    Ok(out)
}

/// All cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`hayate_data::prepare`] with a progress line on stderr every few seconds and the skipped
/// files listed at the end.
pub fn prepare_with_progress(
    folder: &ImageFolder,
    size: usize,
    out: &Path,
    threads: usize,
) -> Result<PrepareReport> {
    for path in &folder.ignored {
        eprintln!("  ignored (outside the class folders): {}", path.display());
    }
    let started = Instant::now();
    let mut last = Instant::now();
    let report = hayate_data::prepare(folder, size, out, threads, |p: &PrepareProgress| {
        if last.elapsed().as_secs_f64() >= 5.0 || p.done == p.total {
            last = Instant::now();
            let rate = (p.done - p.resumed_from) as f64 / started.elapsed().as_secs_f64();
            let eta = (p.total - p.done) as f64 / rate.max(1e-9);
            eprintln!(
                "prepare: {}/{} files, {} images, {} skipped, {rate:.0} files/s, {:.0} s left",
                p.done, p.total, p.written, p.skipped, eta
            );
        }
        ControlFlow::Continue(())
    })?;
    if report.resumed_from > 0 {
        eprintln!(
            "resumed an interrupted prepare after {} files",
            report.resumed_from
        );
    }
    for s in &report.skipped {
        eprintln!("  skipped {}: {}", s.path.display(), s.reason);
    }
    eprintln!(
        "prepared {} images into {} ({} files skipped) in {:.1} s",
        report.written,
        out.display(),
        report.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}
