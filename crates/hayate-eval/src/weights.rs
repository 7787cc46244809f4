//! Weight files by tensor name: safetensors and PyTorch pickles (`.pth`, `.pt`, `.bin`) read
//! without torch, safetensors written. The Inception network and diffusers imports read here.

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{bf16, f16};
use hayate_model::HostTensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads every floating-point tensor of a `.safetensors`, `.pth`, `.pt` or `.bin` file by name,
/// as f32 (f16, bf16 and f64 are converted; integer buffers are left out).
pub fn read(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let context = || format!("reading {}", path.display());
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let mut out = HashMap::new();
    if is_safetensors {
        let bytes = std::fs::read(path).with_context(context)?;
        let file = safetensors::SafeTensors::deserialize(&bytes).with_context(context)?;
        for (name, view) in file.tensors() {
            use safetensors::Dtype;
            let values = match view.dtype() {
                Dtype::F32 => f32_le(view.data()),
                Dtype::F16 => halves(view.data(), |b| f16::from_bits(b).to_f32()),
                Dtype::BF16 => halves(view.data(), |b| bf16::from_bits(b).to_f32()),
                Dtype::F64 => f64_le(view.data()),
                _ => continue,
            };
            let shape = view.shape().to_vec();
            out.insert(name, HostTensor { shape, values });
        }
    } else {
        let reader = pytorch_reader::PytorchReader::new(path).with_context(context)?;
        for (name, tensor) in reader.into_tensors() {
            use pytorch_reader::DType;
            let dtype = tensor.dtype();
            if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
                continue;
            }
            let shape = tensor.shape().to_vec();
            let bytes = tensor
                .read()
                .with_context(|| format!("{}: tensor {name}", context()))?;
            let values = match dtype {
                DType::F16 => halves(&bytes, |b| f16::from_bits(b).to_f32()),
                DType::BF16 => halves(&bytes, |b| bf16::from_bits(b).to_f32()),
                DType::F64 => f64_le(&bytes),
                _ => f32_le(&bytes),
            };
            out.insert(name, HostTensor { shape, values });
        }
    }
    ensure!(
        !out.is_empty(),
        "{}: no floating-point tensors",
        path.display()
    );
    for (name, t) in &out {
        let len: usize = t.shape.iter().product();
        if len != t.values.len() {
            bail!(
                "{}: tensor {name} has shape {:?} but {} values",
                path.display(),
                t.shape,
                t.values.len()
            );
        }
    }
    Ok(out)
}

/// Writes `tensors` as f32 to a safetensors file, atomically, with `metadata` in its header.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), data, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.as_str(), view))
                .with_context(|| format!("tensor {name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let file = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("encoding {}", path.display()))?;
    hayate_train::checkpoint::write_atomic(path, &file)
}

fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("chunks of 4 bytes")))
        .collect()
}

fn f64_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8 bytes")) as f32)
        .collect()
}

fn halves(bytes: &[u8], to_f32: impl Fn(u16) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| to_f32(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_half_precision_reads_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "a.weight".to_string(),
            HostTensor {
                shape: vec![2, 3],
                values: vec![1.0, -2.5, 3.25, 0.0, 1e-3, 7.0],
            },
        );
        write_safetensors(&path, &tensors, HashMap::new()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back["a.weight"], tensors["a.weight"]);

        // The same values as f16, as a half-precision export would hold them.
        let half: Vec<u8> = [1.0f32, -2.5, 3.25]
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![3], &half).unwrap();
        let file = safetensors::serialize([("h", view)], None).unwrap();
        std::fs::write(&path, file).unwrap();
        assert_eq!(read(&path).unwrap()["h"].values, vec![1.0, -2.5, 3.25]);
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("bad.safetensors"), "{err}");
    }
}
