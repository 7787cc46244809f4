//! Image folders: the ImageNet training layout (one folder per class) or any folder of images,
//! decoded with `image`, shrunk on the short side and centre-cropped to a square.

use crate::DataError;
use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};
use std::path::{Path, PathBuf};

/// Files larger than this are skipped as "huge" before anything is decoded: no real training
/// photo comes near it, and a stray video or disk image should not stall a prepare.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Largest width or height decoded; larger images are skipped.
pub const MAX_DIMENSION: u32 = 16_384;
/// Most memory one decode may allocate.
const MAX_DECODE_BYTES: u64 = 1 << 30;

/// The images of a folder, in a fixed order, with their class indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    /// The folder scanned.
    pub root: PathBuf,
    /// Class names (the subfolders' names, sorted); empty for a folder without class subfolders.
    pub classes: Vec<String>,
    /// Every file found and its class index (0 when there are no classes), sorted by path.
    pub files: Vec<(PathBuf, u32)>,
    /// Files outside the class folders of a class layout, which belong to no class.
    pub ignored: Vec<PathBuf>,
}

impl ImageFolder {
    /// Lists `root`: when it has subfolders, each is a class and holds that class's images (at
    /// any depth); otherwise the files of `root` (at any depth) are unlabelled images. An
    /// unreadable folder, a class folder without files, or a folder without any file is an
    /// error. Whether each file is an image is found out when it is decoded.
    pub fn scan(root: &Path) -> Result<Self, DataError> {
        let (dirs, top_files) = list(root)?;
        let mut folder = Self {
            root: root.to_path_buf(),
            classes: Vec::new(),
            files: Vec::new(),
            ignored: Vec::new(),
        };
        if dirs.is_empty() {
            folder.files = walk(root)?.into_iter().map(|p| (p, 0)).collect();
            if folder.files.is_empty() {
                return Err(DataError::NoImages {
                    dir: root.to_path_buf(),
                });
            }
            return Ok(folder);
        }
        folder.ignored = top_files;
        for (label, dir) in dirs.iter().enumerate() {
            let files = walk(dir)?;
            if files.is_empty() {
                return Err(DataError::EmptyClass { dir: dir.clone() });
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            folder.classes.push(name);
            folder
                .files
                .extend(files.into_iter().map(|p| (p, label as u32)));
        }
        Ok(folder)
    }
}

/// The subfolders and files directly in `dir`, each sorted by name. Hidden entries (names
/// starting with a dot: `.DS_Store`, `.ipynb_checkpoints`) are left out, so they never become a
/// class.
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, as a folder of links to the real images is common.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => dirs.push(path),
            Ok(m) if m.is_file() => files.push(path),
            // Sockets, dangling links and the like: reported when they fail to decode.
            _ => files.push(path),
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// Every file under `dir`, sorted by path.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let (dirs, mut files) = list(dir)?;
    for sub in dirs {
        files.extend(walk(&sub)?);
    }
    files.sort();
    Ok(files)
}

/// Decodes the image at `path` and makes it `size` x `size` RGB, planar `[3, size, size]` bytes:
/// halving with a 2x2 box while the short side is at least twice `size`, then a bicubic
/// (Catmull-Rom) resize of the short side to `size` and a centre crop, as ADM prepares ImageNet.
/// The error is the reason the file is not usable (empty, huge, not an image, broken).
pub fn load_square(path: &Path, size: usize) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len == 0 {
        return Err("empty file (0 bytes)".into());
    }
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "{len} bytes, more than the {} MiB limit for one image",
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut reader = ImageReader::open(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised format)".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| format!("cannot decode: {e}"))?;
    if image.width() == 0 || image.height() == 0 {
        return Err("image has no pixels".into());
    }
    Ok(planar(&square(image.to_rgb8(), size as u32)))
}

/// Shrinks the short side to `size` and crops the centre (see [`load_square`]).
pub fn square(mut image: RgbImage, size: u32) -> RgbImage {
    while image.width().min(image.height()) >= 2 * size {
        image = halve(&image);
    }
    let (w, h) = image.dimensions();
    let short = w.min(h);
    if short != size {
        let scale = size as f64 / short as f64;
        let nw = ((w as f64 * scale).round() as u32).max(size);
        let nh = ((h as f64 * scale).round() as u32).max(size);
        image = image::imageops::resize(&image, nw, nh, FilterType::CatmullRom);
    }
    let (w, h) = image.dimensions();
    let (x, y) = ((w - size) / 2, (h - size) / 2);
    image::imageops::crop_imm(&image, x, y, size, size).to_image()
}

/// Halves both sides, each output pixel the rounded mean of a 2x2 block (an odd last row or
/// column is dropped).
fn halve(image: &RgbImage) -> RgbImage {
    let (w, h) = (image.width() / 2, image.height() / 2);
    RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let p = image.get_pixel(2 * x + dx, 2 * y + dy);
            for c in 0..3 {
                sum[c] += p[c] as u32;
            }
        }
        image::Rgb(sum.map(|s| ((s + 2) / 4) as u8))
    })
}

/// Interleaved RGB to planar `[3, h, w]`.
fn planar(image: &RgbImage) -> Vec<u8> {
    let plane = (image.width() * image.height()) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_shrink_the_short_side_and_crop_the_centre() {
        // 8x4, left half black and right half white; the crop keeps the centre columns.
        let image = RgbImage::from_fn(8, 4, |x, _| image::Rgb([if x < 4 { 0 } else { 255 }; 3]));
        let out = square(image, 2);
        assert_eq!(out.dimensions(), (2, 2));
        assert_eq!(out.get_pixel(0, 0)[0], 0);
        assert_eq!(out.get_pixel(1, 0)[0], 255);
    }

    #[test]
    fn an_image_already_at_size_is_unchanged() {
        let image = RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(square(image.clone(), 4), image);
        let p = planar(&image);
        assert_eq!(&p[..4], &[0, 1, 2, 3]);
        assert_eq!(&p[16..20], &[0, 0, 0, 0]);
        assert!(p[32..].iter().all(|&v| v == 7));
    }

    #[test]
    fn halving_averages_blocks() {
        let image = RgbImage::from_fn(5, 2, |x, _| image::Rgb([(x * 10) as u8; 3]));
        let out = halve(&image);
        assert_eq!(out.dimensions(), (2, 1));
        assert_eq!(out.get_pixel(0, 0)[0], 5);
        assert_eq!(out.get_pixel(1, 0)[0], 25);
    }
}
