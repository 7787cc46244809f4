//! Image folders and prepared files, on generated folders with broken files in them and on real
//! CIFAR-10 test images written out as PNGs.

use hayate_data::{Cifar10, DataError, ImageFolder, ImageSource, PreparedImages, Split, prepare};
use image::{ImageFormat, RgbImage};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

const CLASSES: [&str; 3] = ["cat", "dog", "fox"];
const PER_CLASS: usize = 100;
const SIZE: usize = 16;

/// A pixel that encodes class, index and position, so every image differs.
fn pixel(class: usize, index: usize, x: u32, y: u32) -> image::Rgb<u8> {
    image::Rgb([
        (class * 80) as u8,
        (index * 2) as u8,
        (x * 13 + y * 7) as u8,
    ])
}

/// Three classes of 100 PNGs at 16x16 (lossless, so pixels can be compared exactly), a few
/// larger JPEGs, and the usual debris: an empty file, a text file, a truncated PNG, a file over
/// the size limit and a PNG whose header claims a huge image. Returns the broken files' names.
fn write_folder(root: &Path) -> Vec<String> {
    for (c, class) in CLASSES.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..PER_CLASS {
            let image = RgbImage::from_fn(SIZE as u32, SIZE as u32, |x, y| pixel(c, i, x, y));
            image.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
    // A photo-like JPEG, 48x32: halved once to 24x16 then cropped to the centre 16x16.
    let wide = RgbImage::from_fn(48, 32, |x, _| {
        image::Rgb([if x < 24 { 20 } else { 230 }; 3])
    });
    wide.save_with_format(root.join("fox/wide.JPEG"), ImageFormat::Jpeg)
        .unwrap();
    let broken = [
        "cat/empty.png",
        "dog/notes.txt",
        "dog/truncated.png",
        "fox/huge.png",
        "fox/bomb.png",
    ];
    std::fs::write(root.join(broken[0]), b"").unwrap();
    std::fs::write(root.join(broken[1]), b"not an image\n").unwrap();
    let good = std::fs::read(root.join("dog/000.png")).unwrap();
    std::fs::write(root.join(broken[2]), &good[..good.len() / 2]).unwrap();
    // Sparse: 300 MiB on paper, nothing on disk.
    std::fs::File::create(root.join(broken[3]))
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    // A PNG header claiming 100000 x 100000 pixels (a decompression bomb).
    let mut bomb = good[..33].to_vec();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(root.join(broken[4]), bomb).unwrap();
    broken.iter().map(|s| s.to_string()).collect()
}

/// PNG's CRC-32 (the same polynomial as the prepared file's).
fn crc(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn prepare_all(folder: &ImageFolder, out: &Path) -> hayate_data::PrepareReport {
    prepare_all_at(folder, SIZE, out)
}

#[test]
fn a_folder_with_broken_files_prepares_its_images_and_names_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    let broken = write_folder(&root);
    // Hidden entries are no class and no image.
    std::fs::create_dir(root.join(".ipynb_checkpoints")).unwrap();
    std::fs::write(root.join("cat/.DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    let folder = ImageFolder::scan(&root).unwrap();
    assert_eq!(folder.classes, CLASSES);
    assert_eq!(folder.files.len(), 3 * PER_CLASS + 1 + broken.len());

    let out = tmp.path().join("train-16.hds");
    let report = prepare_all(&folder, &out);
    assert!(report.complete);
    assert_eq!(report.written, 3 * PER_CLASS + 1);
    let skipped: BTreeMap<String, String> = report
        .skipped
        .iter()
        .map(|s| {
            let name = s.path.strip_prefix(&root).unwrap().display().to_string();
            (name, s.reason.clone())
        })
        .collect();
    assert_eq!(skipped.keys().cloned().collect::<Vec<_>>(), {
        let mut b = broken.clone();
        b.sort();
        b
    });
    assert!(
        skipped["cat/empty.png"].contains("empty file"),
        "{skipped:?}"
    );
    assert!(
        skipped["dog/notes.txt"].contains("not an image"),
        "{skipped:?}"
    );
    assert!(
        skipped["dog/truncated.png"].contains("cannot decode"),
        "{skipped:?}"
    );
    assert!(skipped["fox/huge.png"].contains("MiB limit"), "{skipped:?}");
    assert!(
        skipped["fox/bomb.png"].contains("cannot decode"),
        "{skipped:?}"
    );
    assert!(!out.with_file_name("train-16.hds.partial").exists());
    assert!(!out.with_file_name("train-16.hds.progress").exists());

    let data = PreparedImages::open(&out).unwrap();
    assert_eq!(data.len(), 3 * PER_CLASS + 1);
    assert_eq!(data.resolution(), SIZE);
    assert_eq!(data.classes(), CLASSES);
    let mut pixels = vec![0u8; 3 * SIZE * SIZE];
    // Sorted paths: cat/000..099, dog/000..099, fox/000..099, fox/wide.JPEG.
    for (index, (class, i)) in
        [(0, 0), (57, 57), (100, 0), (299, 99)].map(|(index, i)| (index, (index / PER_CLASS, i)))
    {
        let label = data.read(index, &mut pixels).unwrap();
        assert_eq!(label as usize, class);
        for (x, y) in [(0, 0), (5, 11), (15, 15)] {
            let p = pixel(class, i, x, y);
            let at = (y as usize) * SIZE + x as usize;
            for c in 0..3 {
                assert_eq!(
                    pixels[c * SIZE * SIZE + at],
                    p[c],
                    "image {index} ({x}, {y}) c{c}"
                );
            }
        }
    }
    // The wide JPEG: the crop keeps 4 dark columns on the left and 4 light on the right.
    assert_eq!(data.read(300, &mut pixels).unwrap(), 2);
    assert!(
        pixels[0] < 60 && pixels[SIZE - 1] > 190,
        "{:?}",
        &pixels[..SIZE]
    );
}

#[test]
fn an_interrupted_prepare_resumes_to_the_same_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    write_folder(&root);
    let folder = ImageFolder::scan(&root).unwrap();
    let straight = tmp.path().join("straight.hds");
    prepare_all(&folder, &straight);

    let out = tmp.path().join("resumed.hds");
    let mut calls = 0;
    let first = prepare(&folder, SIZE, &out, 2, |p| {
        calls += 1;
        assert_eq!(p.resumed_from, 0);
        ControlFlow::Break(())
    })
    .unwrap();
    assert!(!first.complete);
    assert_eq!(calls, 1);
    assert!(
        !out.exists(),
        "an unfinished prepare must not leave the output file"
    );
    // A chunk's worth of garbage past the journal's end, as a kill mid-chunk leaves.
    let partial = tmp.path().join("resumed.hds.partial");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes.extend(std::iter::repeat_n(0xAB, 5000));
    std::fs::write(&partial, bytes).unwrap();

    let second = prepare(&folder, SIZE, &out, 1, |p| {
        assert_eq!(p.resumed_from, 64);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(second.complete);
    assert_eq!(second.resumed_from, 64);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&straight).unwrap()
    );

    // A changed source starts over instead of mixing the two.
    let out2 = tmp.path().join("changed.hds");
    prepare(&folder, SIZE, &out2, 2, |_| ControlFlow::Break(())).unwrap();
    std::fs::remove_file(root.join("cat/000.png")).unwrap();
    let folder = ImageFolder::scan(&root).unwrap();
    let third = prepare(&folder, SIZE, &out2, 2, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(third.resumed_from, 0);
    assert_eq!(PreparedImages::open(&out2).unwrap().len(), 3 * PER_CLASS);
}

#[test]
fn flat_folders_are_unlabelled_and_bad_folders_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let flat = tmp.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for i in 0..3u8 {
        RgbImage::from_pixel(20, 20, image::Rgb([i * 50; 3]))
            .save(flat.join(format!("{i}.png")))
            .unwrap();
    }
    let folder = ImageFolder::scan(&flat).unwrap();
    assert!(folder.classes.is_empty());
    let out = tmp.path().join("flat.hds");
    prepare(&folder, 8, &out, 2, |_| ControlFlow::Continue(())).unwrap();
    let data = PreparedImages::open(&out).unwrap();
    assert_eq!((data.len(), data.resolution()), (3, 8));
    let mut pixels = vec![0u8; 3 * 64];
    assert_eq!(data.read(2, &mut pixels).unwrap(), 0);
    assert!(pixels.iter().all(|&p| p == 100));

    std::fs::create_dir_all(tmp.path().join("classes/a")).unwrap();
    std::fs::create_dir_all(tmp.path().join("classes/b")).unwrap();
    std::fs::copy(flat.join("0.png"), tmp.path().join("classes/a/0.png")).unwrap();
    let err = ImageFolder::scan(&tmp.path().join("classes")).unwrap_err();
    assert!(matches!(err, DataError::EmptyClass { .. }), "{err}");
    assert!(err.to_string().contains("classes/b"), "{err}");

    let err = ImageFolder::scan(&tmp.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let err = ImageFolder::scan(&tmp.path().join("empty")).unwrap_err();
    assert!(err.to_string().contains("no image files"), "{err}");

    // Only broken files: nothing to pack is an error, not an empty dataset.
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.txt"), b"text").unwrap();
    let folder = ImageFolder::scan(&junk).unwrap();
    let err = prepare(&folder, 8, &tmp.path().join("junk.hds"), 1, |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(err.to_string().contains("no image files"), "{err}");
}

/// A small valid prepared file and its bytes.
fn small_prepared(dir: &Path) -> (PathBuf, Vec<u8>) {
    let root = dir.join("src");
    for (c, name) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..3 {
            RgbImage::from_fn(4, 4, |x, y| pixel(c, i, x, y))
                .save(root.join(format!("{name}/{i}.png")))
                .unwrap();
        }
    }
    let out = dir.join("small.hds");
    prepare(&ImageFolder::scan(&root).unwrap(), 4, &out, 1, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    (out, bytes)
}

#[test]
fn damaged_prepared_files_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, good) = small_prepared(tmp.path());
    let damaged = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        PreparedImages::open(&path)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let mut b = good.clone();
    b[0] = b'X';
    assert!(damaged(&b).contains("bad magic"));
    let mut b = good.clone();
    b[25] ^= 1; // the count
    assert!(damaged(&b).contains("header checksum"));
    assert!(damaged(&good[..good.len() - 1]).contains("truncated or damaged"));
    assert!(damaged(&good[..10]).contains("too short"));
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 1; // the checksum table
    assert!(damaged(&b).contains("checksum table"));

    // A damaged image opens (the header is fine) but fails when read, naming it.
    let mut b = good.clone();
    let record = 4 + 3 * 16;
    let names = "a\nb".len();
    b[64 + names + 4 * record + 10] ^= 0x40;
    std::fs::write(&path, &b).unwrap();
    let data = PreparedImages::open(&path).unwrap();
    let mut pixels = vec![0u8; 48];
    assert_eq!(data.read(3, &mut pixels).unwrap(), 1);
    let err = data.read(4, &mut pixels).unwrap_err().to_string();
    assert!(
        err.contains("image 4 fails its checksum") && err.contains("small.hds"),
        "{err}"
    );
    assert!(data.read(6, &mut pixels).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Whatever the damage (bytes overwritten, the file cut or extended), opening and reading
    /// every image returns data or an error; it never panics or allocates without bound.
    #[test]
    fn any_damage_to_a_prepared_file_is_refused_or_read_without_panicking(
        edits in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..400),
        extra in 0usize..3,
    ) {
        thread_local! {
            static GOOD: (tempfile::TempDir, Vec<u8>) = {
                let tmp = tempfile::tempdir().unwrap();
                let (_, bytes) = small_prepared(tmp.path());
                (tmp, bytes)
            };
        }
        let (dir, mut bytes) = GOOD.with(|(d, b)| (d.path().to_path_buf(), b.clone()));
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        bytes.extend(std::iter::repeat_n(7u8, extra));
        let path = dir.join(format!("fuzz-{:?}.hds", std::thread::current().id()));
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(data) = PreparedImages::open(&path) {
            let mut pixels = vec![0u8; 3 * data.resolution() * data.resolution()];
            for i in 0..data.len() {
                if let Ok(label) = data.read(i, &mut pixels) {
                    proptest::prop_assert!((label as usize) < data.classes().len().max(1));
                }
            }
        }
    }
}

#[test]
fn cifar10_test_images_as_pngs_prepare_to_the_same_pixels() {
    let dir = std::env::var_os("HAYATE_CIFAR10_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/cifar10")
        });
    if !dir.join("test_batch.bin").is_file() {
        eprintln!(
            "skipped: no CIFAR-10 test file in {} (set HAYATE_CIFAR10_DIR)",
            dir.display()
        );
        return;
    }
    let cifar = Cifar10::open(&dir, Split::Test).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar10-test");
    let n = 500;
    let mut expected = Vec::new();
    for i in 0..n {
        let (pixels, label) = cifar.image(i);
        let class = hayate_data::CIFAR10_CLASSES[label as usize];
        std::fs::create_dir_all(root.join(class)).unwrap();
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let at = (y * 32 + x) as usize;
            image::Rgb([pixels[at], pixels[1024 + at], pixels[2048 + at]])
        });
        let path = root.join(class).join(format!("{i:05}.png"));
        image.save(&path).unwrap();
        expected.push((path, label, pixels.to_vec()));
    }
    let out = tmp.path().join("cifar10-test.hds");
    let report = prepare_all_at(&ImageFolder::scan(&root).unwrap(), 32, &out);
    assert_eq!((report.written, report.skipped.len()), (n, 0));
    let data = PreparedImages::open(&out).unwrap();
    // Classes are the sorted folder names, which is CIFAR-10's label order.
    assert_eq!(data.classes(), hayate_data::CIFAR10_CLASSES);
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut pixels = vec![0u8; 3 * 32 * 32];
    for (index, (_, label, want)) in expected.iter().enumerate() {
        assert_eq!(data.read(index, &mut pixels).unwrap(), *label as u32);
        assert_eq!(&pixels, want, "image {index}");
    }
}

fn prepare_all_at(folder: &ImageFolder, size: usize, out: &Path) -> hayate_data::PrepareReport {
    prepare(folder, size, out, 2, |_| ControlFlow::Continue(())).unwrap()
}
