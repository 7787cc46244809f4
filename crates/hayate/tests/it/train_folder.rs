//! Training from image folders and prepared files, class-conditional with ADM-style blocks,
//! through the real binary (so the cache folder can be set for the automatic prepare).

use image::RgbImage;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Three classes of 12 images (24x20, squared to 16x16 when prepared), and a broken file.
fn write_folder(root: &Path) {
    for (c, class) in ["red", "green", "blue"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..12u32 {
            let mut rgb = [40u8; 3];
            rgb[c] = 200;
            RgbImage::from_fn(24, 20, |x, y| {
                image::Rgb(rgb.map(|v| v.wrapping_add(((x + y + i) % 7) as u8)))
            })
            .save(dir.join(format!("{i:02}.png")))
            .unwrap();
        }
    }
    std::fs::write(root.join("blue/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
}

/// A class-conditional 16x16 model with ADM's blocks (scale-shift norm, resampling residual
/// blocks, two attention heads), trained for `steps` steps from an image folder.
fn config(dir: &Path, steps: u64, num_classes: usize) -> std::path::PathBuf {
    let path = dir.join(format!("folder-{num_classes}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[model]
preset = "tiny"
resolution = 16
attention_resolutions = [8]
num_heads = 2
scale_shift_norm = true
resblock_updown = true
num_classes = {num_classes}

[train]
steps = {steps}
batch_size = 4
lr = 0.001
warmup_steps = 1
ema_decay = 0.9
checkpoint_every = 2
log_every = 2
label_dropout = 0.25
seed = 3

[data]
dataset = "image_folder"

[sampling]
grid_images = 3
ddim_steps = 2
cfg_scale = 2.0
"#
        ),
    )
    .unwrap();
    path
}

fn hayate(cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hayate"))
        .args(args)
        .env("HAYATE_CACHE", cache)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `hayate train --config CFG --data-dir DATA --out RUN --backend cpu` plus `extra`.
fn train(cache: &Path, cfg: &Path, data: &Path, run: &Path, extra: &[&str]) -> (bool, String) {
    let (cfg, data, run) = (s(cfg), s(data), s(run));
    let mut args = vec![
        "train",
        "--config",
        &cfg,
        "--data-dir",
        &data,
        "--out",
        &run,
        "--backend",
        "cpu",
    ];
    args.extend_from_slice(extra);
    hayate(cache, &args)
}

/// The image folder (written), the cache and the run folder under `dir`.
fn folders(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let src = dir.join("train");
    write_folder(&src);
    (src, dir.join("cache"), dir.join("run"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_class_conditional_model_trains_from_an_image_folder_and_samples_with_guidance() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache, run) = folders(tmp.path());
    let cfg = config(tmp.path(), 4, 3);
    let (ok, log) = train(&cache, &cfg, &src, &run, &[]);
    assert!(ok, "{log}");
    // Prepared once into the cache, the broken file named.
    assert!(
        log.contains("skipped") && log.contains("broken.png"),
        "{log}"
    );
    assert!(log.contains("36 images of 16x16 in 3 classes"), "{log}");
    let prepared: Vec<_> = std::fs::read_dir(cache.join("prepared"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    assert!(run.join("samples/step-000000004.png").is_file());

    // Resuming reads the prepared file instead of preparing again.
    let (ok, log) = train(&cache, &cfg, &src, &run, &["--resume", "--steps", "6"]);
    assert!(ok, "{log}");
    assert!(!log.contains("preparing"), "{log}");

    // Guided samples of one class, 16x16 each in the grid.
    let grid = tmp.path().join("blue.png");
    let sample = |n: &str, class: &str| {
        let (run, grid) = (s(&run), s(&grid));
        hayate(
            &cache,
            &[
                "sample",
                "--checkpoint",
                &run,
                "--n",
                n,
                "--steps",
                "2",
                "--class",
                class,
                "--cfg-scale",
                "3",
                "--out",
                &grid,
                "--backend",
                "cpu",
            ],
        )
    };
    let (ok, log) = sample("4", "2");
    assert!(ok, "{log}");
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 18 + 2, 2 * 18 + 2));
    let (ok, log) = sample("1", "3");
    assert!(
        !ok && log.contains("--class 3: the model has 3 classes"),
        "{log}"
    );

    // A model that expects another number of classes is refused before training.
    let cfg5 = config(tmp.path(), 2, 5);
    let (ok, log) = train(&cache, &cfg5, &src, &tmp.path().join("run5"), &[]);
    assert!(
        !ok && log.contains("model.num_classes is 5") && log.contains("3 classes"),
        "{log}"
    );
}

#[test]
fn a_damaged_prepared_file_stops_training_naming_the_image_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, cache, run) = folders(tmp.path());
    let file = tmp.path().join("train-16.hds");
    let (ok, log) = hayate(
        &cache,
        &[
            "prepare",
            "imagenet",
            "--src",
            &s(&src),
            "--size",
            "16",
            "--out",
            &s(&file),
        ],
    );
    assert!(ok, "{log}");
    assert!(
        log.contains("prepared 36 images") && log.contains("1 files skipped"),
        "{log}"
    );
    let cfg = config(tmp.path(), 2, 3);
    let (ok, log) = train(&cache, &cfg, &file, &run, &[]);
    assert!(ok, "{log}");

    // Damage every image's bytes (not the header): the file opens, the first read fails.
    let mut bytes = std::fs::read(&file).unwrap();
    let names = "blue\ngreen\nred".len();
    let record = 4 + 3 * 16 * 16;
    for i in 0..36 {
        bytes[64 + names + i * record + 100] ^= 0xFF;
    }
    std::fs::write(&file, bytes).unwrap();
    let (ok, log) = train(&cache, &cfg, &file, &run, &["--resume", "--steps", "4"]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("training data error at step 3") && log.contains("fails its checksum"),
        "{log}"
    );
    assert!(log.contains("train-16.hds"), "{log}");
    assert!(run.join("ckpt-000000002.hayate").is_file());
    assert!(!run.join("ckpt-000000004.hayate").exists());
}
