//! One entry point for every checkpoint a user can point distill at: a Hugging Face folder or a
//! GGUF file. Knows where the config, weights, tokenizer and generation settings live in each,
//! and saves any of them back as a Hugging Face folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::gguf::GgufCheckpoint;
use crate::tokenizer::TextTokenizer;
use crate::transformer::Model;
use crate::{hf, Config, Error, GenerationConfig, Result};

enum Format {
    Folder,
    Gguf(Box<GgufCheckpoint>),
}

/// An opened checkpoint: its config is parsed and validated, weights are read on demand.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    config: Config,
    generation: GenerationConfig,
}

impl Checkpoint {
    /// Opens a Hugging Face checkpoint folder (with `config.json`) or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        if path.is_dir() {
            let config = Config::load(&path.join(hf::CONFIG))?;
            let gen_path = path.join(hf::GENERATION_CONFIG);
            let generation = if gen_path.is_file() {
                GenerationConfig::load(&gen_path)?
            } else {
                GenerationConfig {
                    bos_token_id: config.bos_token_id(),
                    eos_token_id: Some(crate::TokenIds::Many(config.eos_token_ids()))
                        .filter(|ids| !ids.to_vec().is_empty()),
                    ..Default::default()
                }
            };
            return Ok(Self {
                path: path.to_path_buf(),
                format: Format::Folder,
                config,
                generation,
            });
        }
        let gguf = GgufCheckpoint::open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            config: gguf.config()?,
            generation: gguf.generation_config(),
            format: Format::Gguf(Box::new(gguf)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.format, Format::Gguf(_))
    }

    /// The GGUF file behind this checkpoint, for callers that want quantized weights as stored.
    pub fn gguf(&self) -> Option<&GgufCheckpoint> {
        match &self.format {
            Format::Gguf(g) => Some(g),
            Format::Folder => None,
        }
    }

    /// End-of-sequence ids: `generation_config.json` first, then `config.json`.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let ids = self.generation.eos_token_ids();
        if ids.is_empty() {
            self.config.eos_token_ids()
        } else {
            ids
        }
    }

    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        match &self.format {
            Format::Folder => TextTokenizer::from_hf_dir(&self.path),
            Format::Gguf(g) => g.tokenizer(),
        }
    }

    /// Every weight as an f32 tensor under its Hugging Face name (GGUF weights dequantized and
    /// un-permuted).
    pub fn tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.tensors_as(device, DType::F32)
    }

    /// Every weight as a `dtype` tensor (a folder's are converted as they load; GGUF weights
    /// are dequantized to f32 first).
    pub fn tensors_as(&self, device: &Device, dtype: DType) -> Result<HashMap<String, Tensor>> {
        let spec = self.config.spec()?;
        match &self.format {
            Format::Folder => hf::load_tensors(&self.path, &spec, dtype, device),
            Format::Gguf(g) => g
                .tensors(device)?
                .into_iter()
                .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
                .collect(),
        }
    }

    /// The model in f32 for inference.
    pub fn load_model(&self, device: &Device) -> Result<Model> {
        let spec = self.config.spec()?;
        match &self.format {
            Format::Folder => hf::load_model(&self.path, &spec, DType::F32, device),
            Format::Gguf(g) => {
                let vb = VarBuilder::from_tensors(g.tensors(device)?, DType::F32, device);
                Model::new(&spec, vb)
            }
        }
    }

    /// The model for inference with GGUF weights kept quantized (candle `QMatMul` kernels);
    /// a Hugging Face folder loads in f32 as with [`load_model`](Self::load_model).
    pub fn load_quantized_model(&self, device: &Device) -> Result<Model> {
        self.load_for_inference(device, DType::F32)
    }

    /// The float dtype most stored weights have: what a folder's `safetensors` hold (`bf16` for
    /// most released checkpoints), f32 for GGUF (its float tensors run dequantized).
    pub fn stored_dtype(&self) -> DType {
        let Format::Folder = &self.format else {
            return DType::F32;
        };
        let counts = hf::dtype_counts(&self.path).unwrap_or_default();
        let count = |k: &str| counts.get(k).copied().unwrap_or(0);
        [DType::BF16, DType::F16, DType::F32]
            .into_iter()
            .max_by_key(|d| count(&format!("{d:?}").to_lowercase()))
            .filter(|d| count(&format!("{d:?}").to_lowercase()) > 0)
            .unwrap_or(DType::F32)
    }

    /// The model for inference on `device`: a folder's weights in `dtype` (see
    /// [`crate::device::DtypeChoice::inference`]); GGUF matrices stay quantized and run with
    /// f32 activations, as candle's quantized kernels take them.
    pub fn load_for_inference(&self, device: &Device, dtype: DType) -> Result<Model> {
        match &self.format {
            Format::Folder => {
                let spec = self.config.spec()?;
                hf::load_model(&self.path, &spec, dtype, device)
            }
            Format::Gguf(g) => {
                let spec = self.config.spec()?;
                Model::new_quantized(&spec, &crate::quantized::load(g, device)?, device)
            }
        }
    }

    /// Stored tensor types and how many tensors use each (`{"q4_1": 150, "f32": 61}`).
    pub fn tensor_types(&self) -> Result<BTreeMap<String, usize>> {
        match &self.format {
            Format::Folder => hf::dtype_counts(&self.path),
            Format::Gguf(g) => Ok(g.tensor_types()),
        }
    }

    /// Bytes on disk: the GGUF file, or the folder's weight files.
    pub fn size_on_disk(&self) -> Result<u64> {
        let files = match &self.format {
            Format::Folder => hf::weight_files(&self.path)?,
            Format::Gguf(_) => vec![self.path.clone()],
        };
        files
            .iter()
            .map(|f| Ok(std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len()))
            .sum()
    }

    /// Writes this checkpoint as a Hugging Face folder (f32 weights, tokenizer files when a
    /// tokenizer exists, generation config). `out` must be absent or empty; the folder appears
    /// only once complete.
    pub fn save_hf(&self, out: &Path, max_shard_bytes: usize) -> Result<()> {
        self.save_hf_keeping(out, max_shard_bytes, None)
    }

    /// [`Self::save_hf`] with only the decoder layers in `keep` (see [`crate::prune`]).
    pub fn save_hf_keeping(
        &self,
        out: &Path,
        max_shard_bytes: usize,
        keep: Option<&crate::prune::LayerList>,
    ) -> Result<()> {
        let mut config = self.config.clone();
        if let Some(keep) = keep {
            // Before the weights load: a layer the model lacks is named at once.
            keep.check_against(config.common().num_hidden_layers)
                .map_err(Error::Config)?;
        }
        let mut tensors = self.tensors(&Device::Cpu)?;
        if let Some(keep) = keep {
            crate::prune::keep_layers(&mut config, &mut tensors, keep)?;
        }
        let tokenizer = match self.tokenizer() {
            Ok(t) => Some(t),
            Err(Error::MissingTokenizer(_)) => None,
            Err(e) => return Err(e),
        };
        save_hf_folder(
            out,
            &config,
            &self.generation,
            tokenizer.as_ref(),
            tensors,
            max_shard_bytes,
        )
    }
}

/// Writes a complete Hugging Face folder atomically: everything goes into a hidden sibling,
/// which is renamed to `out` at the end, so a failure never leaves a half checkpoint.
pub fn save_hf_folder(
    out: &Path,
    config: &Config,
    generation: &GenerationConfig,
    tokenizer: Option<&TextTokenizer>,
    tensors: HashMap<String, Tensor>,
    max_shard_bytes: usize,
) -> Result<()> {
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::io(
                out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output folder is not empty",
                ),
            ));
        }
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = out.with_file_name(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let spec = config.spec()?;
        let mut ordered = Vec::with_capacity(tensors.len());
        let mut tensors = tensors;
        for (name, shape) in spec.tensor_shapes() {
            let t = tensors.remove(&name).ok_or_else(|| Error::MissingTensor {
                name: name.clone(),
                path: out.to_path_buf(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::ShapeMismatch {
                    name,
                    expected: shape,
                    actual: t.dims().to_vec(),
                });
            }
            ordered.push((name, t));
        }
        let dtype = ordered.first().map_or(DType::F32, |(_, t)| t.dtype());
        config.save_with_dtype(&tmp.join(hf::CONFIG), dtype)?;
        generation.save(&tmp.join(hf::GENERATION_CONFIG))?;
        if let Some(tok) = tokenizer {
            tok.save_hf_dir(&tmp)?;
        }
        hf::save_tensors(&tmp, &ordered, max_shard_bytes)
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
