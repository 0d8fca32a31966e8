//! Hugging Face checkpoint folders: `config.json`, `model.safetensors` or sharded
//! `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`, and
//! `generation_config.json`. Reading checks every tensor against the config before any maths
//! runs; writing produces what `save_pretrained` would, so `transformers` loads it as is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::transformer::{Model, Spec};
use crate::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Default shard size when saving, as `save_pretrained`'s `max_shard_size="5GB"`.
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// The safetensors files of a checkpoint folder: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX);
    if !index_path.is_file() {
        return Err(Error::parse(
            dir,
            format!("no `{WEIGHTS}` or `{WEIGHTS_INDEX}` in the folder"),
        ));
    }
    let files = shard_names(&index_path)?;
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::parse(
            &index_path,
            format!("lists shard `{}` which does not exist", missing.display()),
        ));
    }
    Ok(files)
}

/// The shard files a `model.safetensors.index.json` lists (its `weight_map` values), sorted and
/// deduplicated, as written (relative to the index's folder).
pub fn shard_names(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::parse(index_path, e))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::parse(index_path, "no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Opens each file separately so a corrupt shard is named in the error.
fn open_checked(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    for file in files {
        // SAFETY: the mapping is read-only; distill never writes a file while it is mapped.
        unsafe { MmapedSafetensors::new(file) }.map_err(|e| Error::parse(file, e))?;
    }
    // SAFETY: as above.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::parse(&files[0], e))
}

/// Checks that every tensor the spec needs exists with the right shape, naming the first one
/// that does not.
fn check_shapes(st: &MmapedSafetensors, spec: &Spec, dir: &Path) -> Result<()> {
    let present: HashMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    for (name, shape) in spec.tensor_shapes() {
        match present.get(&name) {
            None => {
                return Err(Error::MissingTensor {
                    name,
                    path: dir.to_path_buf(),
                })
            }
            Some(actual) if *actual != shape => {
                return Err(Error::ShapeMismatch {
                    name,
                    expected: shape,
                    actual: actual.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Loads a model for inference (weights converted to `dtype`, f32 by default everywhere).
pub fn load_model(dir: &Path, spec: &Spec, dtype: DType, device: &Device) -> Result<Model> {
    let files = weight_files(dir)?;
    let st = open_checked(&files)?;
    check_shapes(&st, spec, dir)?;
    let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
    Model::new(spec, vb)
}

/// All weights of a folder as `dtype` tensors, keyed by Hugging Face name.
pub fn load_tensors(
    dir: &Path,
    spec: &Spec,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let files = weight_files(dir)?;
    let st = open_checked(&files)?;
    check_shapes(&st, spec, dir)?;
    spec.tensor_shapes()
        .into_iter()
        .map(|(name, _)| {
            let t = st.load(&name, device)?.to_dtype(dtype)?;
            Ok((name, t))
        })
        .collect()
}

/// Count of tensors per stored dtype (`{"f32": 12, "bf16": 3}`).
pub fn dtype_counts(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let st = open_checked(&weight_files(dir)?)?;
    let mut counts = BTreeMap::new();
    for (_, view) in st.tensors() {
        *counts
            .entry(format!("{:?}", view.dtype()).to_lowercase())
            .or_insert(0) += 1;
    }
    Ok(counts)
}

/// Writes `tensors` as `model.safetensors`, or as shards plus an index once they exceed
/// `max_shard_bytes`. Tensors keep their order; each file carries `{"format": "pt"}` metadata,
/// which `transformers` checks.
pub fn save_tensors(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_shard_bytes: usize,
) -> Result<()> {
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0usize;
    for entry in tensors {
        let size = bytes(&entry.1);
        if current > 0 && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += size;
        if let Some(last) = shards.last_mut() {
            last.push(entry);
        }
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let write = |path: &Path, shard: &[&(String, Tensor)]| -> Result<()> {
        let data: Vec<(&str, Tensor)> = shard
            .iter()
            .map(|(n, t)| Ok((n.as_str(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(data, metadata.clone(), path)
            .map_err(|e| Error::parse(path, e))
    };
    if shards.len() == 1 {
        return write(&dir.join(WEIGHTS), &shards[0]);
    }
    let total = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, total);
        write(&dir.join(&name), shard)?;
        for (tensor, _) in shard {
            weight_map.insert(tensor.clone(), name.clone());
        }
    }
    let total_size: usize = tensors.iter().map(|(_, t)| bytes(t)).sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let path = dir.join(WEIGHTS_INDEX);
    let text = serde_json::to_string_pretty(&index).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}
