//! Dropout whose masks are a pure function of (the step's seed, the layer, the image's index in
//! the step's whole batch, the element), computed on the device with integer hashing. An image
//! gets the same mask whichever backend computes it and however the batch is split across
//! devices, which a backend's own generator (one stream per device, consumed in launch order)
//! cannot give.

use burn::prelude::*;

/// Where a training forward pass's dropout masks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    /// The step's seed (hayate draws one per step on the host from the run's dropout stream).
    pub seed: u64,
    /// The index, in the step's whole batch, of this forward pass's first image (a shard on one
    /// of several devices starts where the shards before it end).
    pub first_image: usize,
}

/// The dropout layers of one forward pass: each call to [`DropoutMasks::apply`], in the order the
/// network makes them, is the next layer.
#[derive(Debug)]
pub struct DropoutMasks {
    key: DropoutKey,
    layer: u64,
}

/// Hash values and keys have 31 bits, so every step of the hash is exact in both 32- and 64-bit
/// integers: products of two 31-bit values keep their low 32 bits under wrapping, shifts only see
/// non-negative values.
const MASK: i64 = 0x7fff_ffff;
const ROUNDS: [(i64, i64); 3] = [(0x2c1b_3c6d, 12), (0x297a_2d39, 15), (0x1b87_3593, 13)];

/// The device hash's host twin (what [`hash_tensor`] computes for one value), for the tests.
#[cfg(test)]
fn hash31(mut v: i64) -> i64 {
    v &= MASK;
    for (multiplier, shift) in ROUNDS {
        v = (v * multiplier) & MASK;
        v ^= v >> shift;
    }
    v
}

fn hash_tensor<const D: usize>(v: Tensor<D, Int>) -> Tensor<D, Int> {
    let mut v = v.bitwise_and_scalar(MASK);
    for (multiplier, shift) in ROUNDS {
        v = v.mul_scalar(multiplier).bitwise_and_scalar(MASK);
        v = v.clone().bitwise_xor(v.bitwise_right_shift_scalar(shift));
    }
    v
}

/// A 31-bit key from 64 bits (SplitMix64's finaliser, then the low 31 bits).
fn key31(mut z: u64) -> i64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) as i64) & MASK
}

impl DropoutMasks {
    /// The masks of a forward pass keyed by `key`, starting at the network's first layer.
    pub fn new(key: DropoutKey) -> Self {
        Self { key, layer: 0 }
    }

    /// The keys of the next layer, for its elements and its images.
    fn next_keys(&mut self) -> (i64, i64) {
        let base = self
            .key
            .seed
            .wrapping_add(self.layer.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.layer += 1;
        (key31(base), key31(base ^ 0xd1b5_4a32_d192_ed03))
    }

    /// Zeroes each element of `x` (`[n, ...]`, image `i` being image `first_image + i` of the
    /// step) with probability `prob` and scales the rest by `1 / (1 - prob)`: the next layer's
    /// dropout. Element e of image g is dropped when hash(hash(e ^ k1) ^ hash(g ^ k2)), a 31-bit
    /// value, is below `prob * 2^31`.
    pub fn apply<const D: usize>(&mut self, x: Tensor<D>, prob: f64) -> Tensor<D> {
        let (element_key, image_key) = self.next_keys();
        if prob <= 0.0 {
            return x;
        }
        let dims = x.dims();
        let n = dims[0];
        let per_image = dims[1..].iter().product::<usize>();
        let device = x.device();
        let first = self.key.first_image as i64;
        let elements = hash_tensor(
            Tensor::<1, Int>::arange(0..per_image as i64, &device).bitwise_xor_scalar(element_key),
        );
        let images = hash_tensor(
            Tensor::<1, Int>::arange(first..first + n as i64, &device)
                .bitwise_xor_scalar(image_key),
        );
        let mixed = hash_tensor(
            elements
                .reshape([1, per_image])
                .expand([n, per_image])
                .bitwise_xor(images.reshape([n, 1]).expand([n, per_image])),
        );
        let threshold = (prob * (MASK + 1) as f64).round() as i64;
        let keep = mixed
            .greater_equal_elem(threshold)
            .float()
            .cast(x.dtype())
            .reshape(dims);
        x * keep.mul_scalar(1.0 / (1.0 - prob))
    }

    /// The keep decision the device makes for element `element` of image `image` in the next
    /// layer (without moving to the layer after it), computed on the host.
    #[cfg(test)]
    fn host_keep(&self, image: usize, element: usize, prob: f64) -> bool {
        let (element_key, image_key) = Self {
            key: self.key,
            layer: self.layer,
        }
        .next_keys();
        let e = hash31(element as i64 ^ element_key);
        let g = hash31(image as i64 ^ image_key);
        hash31(e ^ g) >= (prob * (MASK + 1) as f64).round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(masks: &mut DropoutMasks, n: usize, per_image: usize, prob: f64) -> Vec<bool> {
        let device = Device::flex();
        let x = Tensor::<2>::ones([n, per_image], &device);
        let out: Vec<f32> = masks.apply(x, prob).into_data().iter::<f32>().collect();
        let scale = (1.0 / (1.0 - prob)) as f32;
        out.iter()
            .map(|&v| {
                assert!(v == 0.0 || (v - scale).abs() < 1e-6, "{v}");
                v != 0.0
            })
            .collect()
    }

    #[test]
    fn the_device_masks_are_the_host_hash_and_drop_about_prob() {
        let key = DropoutKey {
            seed: 42,
            first_image: 3,
        };
        let (n, per_image, prob) = (4, 3000, 0.1);
        let mut masks = DropoutMasks::new(key);
        let expected: Vec<bool> = (0..n)
            .flat_map(|i| (0..per_image).map(move |e| (i, e)))
            .map(|(i, e)| masks.host_keep(key.first_image + i, e, prob))
            .collect();
        let got = kept(&mut masks, n, per_image, prob);
        assert_eq!(got, expected);
        let dropped = got.iter().filter(|k| !**k).count() as f64 / got.len() as f64;
        // 12,000 draws: the standard deviation of the fraction is about 0.003.
        assert!((dropped - prob).abs() < 0.015, "{dropped}");
        // The next layer draws other masks.
        let next = kept(&mut masks, n, per_image, prob);
        assert_ne!(next, got);
    }

    #[test]
    fn an_image_gets_its_mask_whatever_the_shard_it_is_computed_in() {
        let (n, per_image, prob) = (6, 500, 0.3);
        let key = |first_image| DropoutKey {
            seed: 7,
            first_image,
        };
        let whole = kept(&mut DropoutMasks::new(key(0)), n, per_image, prob);
        let head = kept(&mut DropoutMasks::new(key(0)), 2, per_image, prob);
        let tail = kept(&mut DropoutMasks::new(key(2)), 4, per_image, prob);
        assert_eq!([head, tail].concat(), whole);
        // Another seed, other masks; images of one batch differ from each other.
        let other = kept(
            &mut DropoutMasks::new(DropoutKey { seed: 8, ..key(0) }),
            n,
            per_image,
            prob,
        );
        assert_ne!(other, whole);
        assert_ne!(whole[..per_image], whole[per_image..2 * per_image]);
    }

    #[test]
    fn no_dropout_leaves_the_input_but_still_counts_the_layer() {
        let device = Device::flex();
        let x = Tensor::<2>::from_floats([[1.0, -2.0], [3.0, 4.0]], &device);
        let mut masks = DropoutMasks::new(DropoutKey {
            seed: 1,
            first_image: 0,
        });
        let out = masks.apply(x.clone(), 0.0);
        out.into_data().assert_eq(&x.into_data(), true);
        assert_eq!(masks.layer, 1);
    }
}
