//! Finding CIFAR-10 on disk, or downloading and checking the official archive.

use crate::DataError;
use md5::{Digest, Md5};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The official binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5.
pub const CIFAR10_ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The folder inside the archive that holds the batch files.
const ARCHIVE_FOLDER: &str = "cifar-10-batches-bin";

/// The folder to read CIFAR-10 from: `explicit` if given, else `$HAYATE_CIFAR10_DIR`, else
/// `cache/cifar-10-batches-bin`, downloading the archive there first if it is absent.
pub fn cifar10_dir(explicit: Option<&Path>, cache: &Path) -> Result<PathBuf, DataError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("HAYATE_CIFAR10_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let dir = cache.join(ARCHIVE_FOLDER);
    if dir.join("test_batch.bin").is_file() {
        return Ok(dir);
    }
    download_cifar10(cache)
}

/// Downloads the official archive into `cache`, checks its MD5, and extracts it; returns the
/// folder of batch files. A download with the wrong checksum is moved aside, never used.
pub fn download_cifar10(cache: &Path) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(cache).map_err(|e| DataError::io(cache, e))?;
    let archive = cache.join("cifar-10-binary.tar.gz");
    if !archive.is_file() {
        eprintln!(
            "downloading CIFAR-10 from {CIFAR10_URL} (163 MB) into {}",
            cache.display()
        );
        fetch(CIFAR10_URL, &archive)?;
    }
    extract_cifar10(&archive, cache)
}

/// Downloads `url` to `dest`: into `dest.part` first, synced, then renamed, so `dest` exists
/// only when complete.
pub fn fetch(url: &str, dest: &Path) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Download {
        url: url.into(),
        reason,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let mut file = std::fs::File::create(&partial).map_err(|e| DataError::io(&partial, e))?;
    std::io::copy(&mut response.into_body().into_reader(), &mut file)
        .map_err(|e| fail(e.to_string()))?;
    file.sync_all().map_err(|e| DataError::io(&partial, e))?;
    std::fs::rename(&partial, dest).map_err(|e| DataError::io(dest, e))
}

/// Checks `archive` against the published MD5 and extracts its batch files into
/// `dest/cifar-10-batches-bin`. A mismatching archive is renamed to `*.bad` and reported.
pub fn extract_cifar10(archive: &Path, dest: &Path) -> Result<PathBuf, DataError> {
    let actual = md5_hex(archive)?;
    if actual != CIFAR10_ARCHIVE_MD5 {
        let kept = archive.with_extension("gz.bad");
        std::fs::rename(archive, &kept).map_err(|e| DataError::io(archive, e))?;
        return Err(DataError::Checksum {
            path: archive.to_path_buf(),
            actual,
            expected: CIFAR10_ARCHIVE_MD5.into(),
            kept,
        });
    }
    unpack(archive, dest)
}

/// Extracts the batch folder of a CIFAR-10 archive into `dest/cifar-10-batches-bin`: into a
/// temporary folder first, renamed into place when complete, so a half-extracted folder is never
/// used.
fn unpack(archive: &Path, dest: &Path) -> Result<PathBuf, DataError> {
    let staging = dest.join(format!("{ARCHIVE_FOLDER}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.unpack(&staging)
        .map_err(|e| DataError::io(archive, e))?;
    let extracted = staging.join(ARCHIVE_FOLDER);
    if !extracted.is_dir() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(DataError::io(
            archive,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the archive has no {ARCHIVE_FOLDER}/ folder"),
            ),
        ));
    }
    let target = dest.join(ARCHIVE_FOLDER);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&extracted, &target).map_err(|e| DataError::io(&target, e))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(target)
}

fn md5_hex(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_with_the_wrong_checksum_is_kept_aside_and_not_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&archive, b"not the real archive").unwrap();
        let err = extract_cifar10(&archive, dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("MD5") && msg.contains(CIFAR10_ARCHIVE_MD5),
            "{msg}"
        );
        assert!(!archive.exists());
        assert!(dir.path().join("cifar-10-binary.tar.gz.bad").is_file());
        assert!(!dir.path().join(ARCHIVE_FOLDER).exists());
    }

    fn tar_gz(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("archive.tar.gz");
        let file = std::fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn unpacking_yields_a_readable_batch_folder() {
        let dir = tempfile::tempdir().unwrap();
        let record = [[3u8].as_slice(), &[7u8; crate::IMAGE_BYTES]].concat();
        let archive = tar_gz(
            dir.path(),
            &[
                ("cifar-10-batches-bin/test_batch.bin", &record),
                ("cifar-10-batches-bin/readme.html", b"x"),
            ],
        );
        let folder = unpack(&archive, dir.path()).unwrap();
        assert_eq!(folder, dir.path().join(ARCHIVE_FOLDER));
        let test = crate::Cifar10::open(&folder, crate::Split::Test).unwrap();
        assert_eq!(test.image(0), (&[7u8; crate::IMAGE_BYTES][..], 3));
        assert!(
            !dir.path()
                .join(format!("{ARCHIVE_FOLDER}.partial"))
                .exists()
        );
        // An archive without the batch folder is an error, and leaves nothing behind.
        let other = tempfile::tempdir().unwrap();
        let wrong = tar_gz(other.path(), &[("something/else.bin", b"y")]);
        let msg = unpack(&wrong, other.path()).unwrap_err().to_string();
        assert!(msg.contains(ARCHIVE_FOLDER), "{msg}");
        assert!(!other.path().join(ARCHIVE_FOLDER).exists());
    }

    #[test]
    fn an_explicit_folder_is_used_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let got = cifar10_dir(Some(dir.path()), Path::new("/nonexistent")).unwrap();
        assert_eq!(got, dir.path());
    }

    #[test]
    fn md5_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(md5_hex(&path).unwrap(), "900150983cd24fb0d6963f7d28e17f72");
    }
}
