//! The real CIFAR-10 files that the other tests train on read as the official data set.

use crate::common;
use hayate_data::{CIFAR10_CLASSES, Cifar10, Split};

#[test]
fn reads_the_real_cifar10_subset() {
    let Some(dir) = common::shared_cifar10() else {
        return;
    };
    let train = Cifar10::open(&dir, Split::Train).unwrap();
    let test = Cifar10::open(&dir, Split::Test).unwrap();
    // The shared subset has one training file, the full data set five: 10,000 images each.
    let files = (1..=5)
        .filter(|i| dir.join(format!("data_batch_{i}.bin")).is_file())
        .count();
    assert_eq!(train.len(), 10_000 * files);
    assert_eq!(test.len(), 10_000);
    let mut counts = [0usize; 10];
    for i in 0..test.len() {
        counts[test.image(i).1 as usize] += 1;
    }
    // The official test set has exactly 1,000 images per class.
    assert_eq!(counts, [1000; 10]);
    // Real photographs use the whole byte range and are not constant.
    let (pixels, _) = train.image(0);
    let (min, max) = (pixels.iter().min().unwrap(), pixels.iter().max().unwrap());
    assert!(max - min > 50);
    let names = std::fs::read_to_string(dir.join("batches.meta.txt")).unwrap();
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names, CIFAR10_CLASSES);
}
