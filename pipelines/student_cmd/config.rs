//! `distill train` settings: a TOML file (`--config`) and/or flags, flags winning. The file's
//! shape is [`TrainSettings`]; unknown keys at any level are rejected with the key's name and
//! line, so a typo never silently trains with a default.
//!
//! ```toml
//! corpus = "runs/demo/corpus"
//! out = "runs/demo/student"
//! from_scratch = true          # or: base = "path/to/checkpoint-or.gguf" (or "owner/name")
//! [data]                       # distill_student::data::DataConfig
//! max_seq_len = 128
//! token_cache = "/data/token-cache"   # where the corpus is tokenised once (default OUT/token-cache)
//! [model]                      # from-scratch architecture (distill_student::init::ScratchConfig)
//! hidden_size = 64
//! [model.tokenizer]            # from-scratch BPE (vocab_size, split_digits, min_frequency,
//!                              #  merge_across_words, pre_tokenizer)
//! vocab_size = 80
//! [train]                      # distill_student::TrainerConfig: batch, steps, cadence
//! micro_batch_size = 32
//! [train.schedule]             # lr, warmup_steps, min_lr_ratio
//! [train.optim]                # beta1, beta2, eps, weight_decay, decay_embeddings
//! [train.kd]                   # logit distillation (distill_student::kd::KdConfig)
//! teacher = "Qwen/Qwen2.5-1.5B-Instruct"   # same tokenizer as the student;
//!                              #  or from_corpus = true: the corpus's stored top-K
//!                              #  (`distill generate --logprobs K`)
//! weight = 0.5                 # loss = (1 − weight)·cross-entropy + weight·divergence
//! beta = 0.0                   # 0 forward KL, 1 reverse KL, between: generalised JSD
//! [train.opd]                  # on-policy distillation (`--method opd`; needs `base` and
//!                              #  `kd.teacher`, `kd.weight = 1`): distill_student::trainer::
//!                              #  on_policy::OpdConfig
//! prompts_per_step = 32
//! max_new_tokens = 1024
//! ```
//!
//! `engine = "trl"` hands the same settings to TRL (see [`super::trl`]); its own table:
//!
//! ```toml
//! engine = "trl"
//! [trl]                        # distributed, nodes, gpus_per_node, offload, lora_r, …
//! distributed = "zero3"
//! nodes = 2
//! gpus_per_node = 8
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use distill_models::prune::LayerList;
use distill_models::{DeviceChoice, DtypeChoice};
use distill_student::data::DataConfig;
use distill_student::init::ScratchConfig;
use distill_student::TrainerConfig;
use serde::{Deserialize, Serialize};

use super::trl::settings::{Distributed, Engine, Offload, TrlSettings};

/// Everything a training run needs, as written to `train_config.toml` beside its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Corpus folder (or parquet file) to train on.
    pub corpus: Option<PathBuf>,
    /// A separate held-out corpus for the evaluation loss (instead of `data.eval_fraction`).
    pub eval_corpus: Option<PathBuf>,
    /// Base checkpoint: a Hugging Face folder, a GGUF file, or a hub model (`owner/name`).
    pub base: Option<PathBuf>,
    /// With `base`: keep only these decoder layers of it, renumbered in order (`"0-3,20-23"` or
    /// a list); embeddings, final norm and output layer stay whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_layers: Option<LayerList>,
    /// Start from a fresh model (`[model]`) and a tokenizer trained on the corpus.
    pub from_scratch: bool,
    /// From scratch: take this checkpoint's tokenizer (and chat template) instead of training
    /// one, so the student shares its vocabulary (what logit distillation from it needs).
    pub tokenizer: Option<PathBuf>,
    /// Output folder: `model/` (the final Hugging Face folder), `checkpoints/`,
    /// `metrics.jsonl`, `loss.png`, `train_config.toml`, `data_report.json`.
    pub out: Option<PathBuf>,
    /// Where training runs (`auto`, `cpu`, `cuda`, `cuda:N`).
    pub device: DeviceChoice,
    /// Training precision (`auto`, `f32`, `bf16`, `bf16-pure`).
    pub dtype: DtypeChoice,
    /// Which trainer runs: `distill` (this one) or `trl` (TRL under accelerate).
    pub engine: Engine,
    pub data: DataConfig,
    pub model: ScratchConfig,
    pub train: TrainerConfig,
    /// The TRL engine's own settings (machines, sharding, LoRA, Python, Slurm).
    #[serde(skip_serializing_if = "TrlSettings::is_default")]
    pub trl: TrlSettings,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrainArgs {
    /// TOML file with the run's settings; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Corpus folder (or parquet file).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Held-out corpus for the evaluation loss (default: `--eval-fraction` of the corpus).
    #[arg(long)]
    pub eval_corpus: Option<PathBuf>,
    /// Base checkpoint to fine-tune: Hugging Face folder, GGUF file, or a hub model
    /// (`owner/name[@revision]`, downloaded into the Hugging Face cache).
    #[arg(long, conflicts_with = "from_scratch")]
    pub base: Option<PathBuf>,
    /// With `--base`: keep only these decoder layers of it (`0-3,20-23`, `0,2,4`), renumbered
    /// in order; embeddings, final norm and output layer stay whole. A student initialised from
    /// a subset of the teacher's layers.
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub keep_layers: Vec<LayerList>,
    /// Train a fresh model and a byte-level BPE tokenizer on the corpus.
    #[arg(long)]
    pub from_scratch: bool,
    /// With `--from-scratch`: the tokenizer of this checkpoint (a folder, a GGUF file or
    /// `owner/name`) instead of one trained on the corpus, e.g. the teacher's for `--kd-teacher`.
    #[arg(long, value_name = "MODEL")]
    pub tokenizer: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the last checkpoint in `--out`.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (metrics still go to `metrics.jsonl`).
    #[arg(long)]
    pub quiet: bool,
    /// Where training runs: `auto` (the GPU when this binary has CUDA and one is usable),
    /// `cpu`, `cuda` or `cuda:N` [default: the config's, else auto].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
    /// `auto` (CPU: f32; GPU: bf16 compute over f32 master weights and moments, as PyTorch AMP),
    /// `f32`, `bf16`, or `bf16-pure` (bf16 weights, gradients and moments: half the memory)
    /// [default: the config's, else auto].
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<DtypeChoice>,

    /// Tokens per training row and longest document kept [default: 2048].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// One document per row instead of best-fit-decreasing packing.
    #[arg(long)]
    pub no_packing: bool,
    /// Chat template: `auto`, `chatml`, `llama3`, `deepseek-r1` or a Jinja file.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Fraction of the problems held out for the evaluation loss (all samples of each)
    /// [default: 0.02].
    #[arg(long)]
    pub eval_fraction: Option<f64>,

    /// Peak learning rate, reached after the warmup and decayed by a cosine to a tenth
    /// [default: 0.0001; TRL's SFT default is 0.00002, the presets set their own].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Optimizer steps (overrides `--epochs`).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Passes over the corpus [default: 1].
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Packed rows per forward pass [default: 4].
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub accumulation_steps: Option<usize>,
    /// Seed of the shuffle and of from-scratch weights [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Held-out loss every N steps (0: at the end only) [default: 0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps (0: at the end only) [default: 0].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (activation checkpointing): far less memory for long rows, one more forward per step.
    #[arg(long)]
    pub activation_checkpointing: bool,

    /// From scratch: vocabulary size of the trained tokenizer.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    /// From scratch: let tokenizer merges span words (whole phrases become tokens).
    #[arg(long)]
    pub merge_across_words: bool,
    /// From scratch: `compact` (a digit keeps its space; the shortest text) or `smollm`
    /// (llama.cpp's pre-tokenizer of that name, so `distill export` can write a GGUF)
    /// [default: compact].
    #[arg(long, value_name = "NAME")]
    pub pre_tokenizer: Option<distill_student::tokenizer_train::PreTokenizer>,
    /// From scratch: hidden size.
    #[arg(long)]
    pub hidden_size: Option<usize>,
    /// From scratch: decoder layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// From scratch: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// From scratch: key/value heads.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// From scratch: MLP intermediate size.
    #[arg(long)]
    pub intermediate_size: Option<usize>,

    /// Trainer: `distill` (this one, one device) or `trl` (TRL's SFT under `accelerate
    /// launch`, one GPU or many) [default: the config's, else distill].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// TRL: write the dataset, recipe, accelerate config, launch and Slurm scripts into
    /// `--out`, print the memory estimate, and stop before launching.
    #[arg(long)]
    pub dry_run: bool,
    /// TRL: `none` (data parallel), `fsdp2` or `zero3`.
    #[arg(long, value_enum)]
    pub distributed: Option<Distributed>,
    /// TRL: machines in the job.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// TRL: GPUs (processes) per machine.
    #[arg(long)]
    pub gpus_per_node: Option<usize>,
    /// TRL: `none`, `optimizer` (ZeRO-3) or `all` moved to host memory.
    #[arg(long, value_enum)]
    pub offload: Option<Offload>,
    /// TRL: LoRA rank (PEFT); 0 trains every weight.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// TRL: LoRA alpha (default: twice the rank).
    #[arg(long)]
    pub lora_alpha: Option<usize>,
    /// TRL: QLoRA, the frozen base in 4-bit (needs `--lora-r`).
    #[arg(long)]
    pub load_in_4bit: bool,
    /// Logit distillation: the frozen teacher whose next-token distributions the student also
    /// learns (a checkpoint folder, a GGUF file or `owner/name`; same tokenizer as the student).
    /// With `--method opd` also the URL of an endpoint that scores token ids with vLLM's
    /// `prompt_logprobs` (vLLM, `distill serve`; needs `--kd-top-k`).
    #[arg(long, value_name = "MODEL|URL", help_heading = "Logit distillation")]
    pub kd_teacher: Option<String>,
    /// The endpoint teacher's model name [default: the endpoint's only model].
    #[arg(long, value_name = "NAME", help_heading = "Logit distillation")]
    pub kd_teacher_model: Option<String>,
    /// The environment variable holding the endpoint teacher's API key [default: no key].
    #[arg(long, value_name = "VAR", help_heading = "Logit distillation")]
    pub kd_teacher_api_key_env: Option<String>,
    /// Logit distillation from the teacher's top-K distributions stored in the corpus
    /// (`distill generate --logprobs K`), without running the teacher.
    #[arg(
        long,
        help_heading = "Logit distillation",
        conflicts_with = "kd_teacher"
    )]
    pub kd_from_corpus: bool,
    /// Share of the divergence in the loss, the rest being the cross-entropy [default: 0.5].
    #[arg(long, value_name = "W", help_heading = "Logit distillation")]
    pub kd_weight: Option<f64>,
    /// 0 forward KL, 1 reverse KL, between: generalised JSD (TRL's GKD `beta`) [default: 0].
    #[arg(long, value_name = "BETA", help_heading = "Logit distillation")]
    pub kd_beta: Option<f64>,
    /// Temperature of both distributions [default: 1].
    #[arg(long, value_name = "T", help_heading = "Logit distillation")]
    pub kd_temperature: Option<f64>,
    /// Compare on the teacher's K most likely tokens per position; 0 the whole vocabulary
    /// [default: 0].
    #[arg(long, value_name = "K", help_heading = "Logit distillation")]
    pub kd_top_k: Option<usize>,

    /// `sft`: learn the corpus's samples; `opd`: on-policy distillation, the student samples
    /// the corpus's prompts and learns the `--kd-teacher`'s distribution on its own samples
    /// (`--kd-weight` and `--kd-beta` default to 1: the reverse KL alone) [default: the
    /// config's, `opd` when it has `[train.opd]`].
    #[arg(long, value_enum, help_heading = "On-policy distillation")]
    pub method: Option<Method>,
    /// Prompts sampled per optimizer step [default: 32].
    #[arg(long, value_name = "N", help_heading = "On-policy distillation")]
    pub opd_prompts_per_step: Option<usize>,
    /// Longest sampled completion [default: 1024].
    #[arg(long, value_name = "N", help_heading = "On-policy distillation")]
    pub opd_max_new_tokens: Option<usize>,
    /// Text the assistant turn starts with [default: "<think>\n", R1's protocol; "" for
    /// instruct models].
    #[arg(long, value_name = "TEXT", help_heading = "On-policy distillation")]
    pub opd_prefill: Option<String>,
    /// Held-out problems sampled at each evaluation for the pass rate [default: 64].
    #[arg(long, value_name = "N", help_heading = "On-policy distillation")]
    pub opd_eval_problems: Option<usize>,
}

/// What the student learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Supervised fine-tuning on the corpus (with `[train.kd]`: plus logit distillation).
    Sft,
    /// On-policy distillation (`[train.opd]`).
    Opd,
}

/// Parses a settings file; errors name the file, line and offending key.
pub fn load(path: &Path) -> anyhow::Result<TrainSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    parse(&text, path)
}

pub fn parse(text: &str, origin: &Path) -> anyhow::Result<TrainSettings> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| {
                format!(
                    " line {}",
                    text[..s.start.min(text.len())].lines().count().max(1)
                )
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "invalid config `{}`{line}: {}",
            origin.display(),
            e.message().trim()
        )
    })
}

impl TrainArgs {
    /// The file's settings (or defaults) with every given flag applied.
    pub fn resolve(&self) -> anyhow::Result<TrainSettings> {
        let mut s = match &self.config {
            Some(path) => load(path)?,
            None => TrainSettings::default(),
        };
        let set = |slot: &mut Option<PathBuf>, v: &Option<PathBuf>| {
            if v.is_some() {
                slot.clone_from(v);
            }
        };
        set(&mut s.corpus, &self.corpus);
        set(&mut s.eval_corpus, &self.eval_corpus);
        set(&mut s.out, &self.out);
        if self.base.is_some() {
            s.base.clone_from(&self.base);
            s.from_scratch = false;
        }
        if self.from_scratch {
            s.from_scratch = true;
            s.base = None;
        }
        if !self.keep_layers.is_empty() {
            let indices = self.keep_layers.iter().flat_map(|l| l.indices().to_vec());
            let list = LayerList::new(indices.collect())
                .map_err(|e| anyhow::anyhow!("`--keep-layers`: {e}"))?;
            s.keep_layers = Some(list);
        }
        if self.tokenizer.is_some() {
            s.tokenizer.clone_from(&self.tokenizer);
        }
        fn over<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        over(&mut s.device, &self.device);
        over(&mut s.dtype, &self.dtype);
        over(&mut s.data.max_seq_len, &self.max_seq_len);
        if self.no_packing {
            s.data.packing = false;
        }
        over(&mut s.data.chat_template, &self.chat_template);
        over(&mut s.data.eval_fraction, &self.eval_fraction);
        over(&mut s.train.schedule.lr, &self.lr);
        over(&mut s.train.schedule.warmup_steps, &self.warmup_steps);
        if self.max_steps.is_some() {
            s.train.max_steps = self.max_steps;
        }
        over(&mut s.train.epochs, &self.epochs);
        over(&mut s.train.micro_batch_size, &self.micro_batch_size);
        over(&mut s.train.accumulation_steps, &self.accumulation_steps);
        over(&mut s.train.seed, &self.seed);
        over(&mut s.train.eval_every, &self.eval_every);
        over(&mut s.train.checkpoint_every, &self.checkpoint_every);
        if self.activation_checkpointing {
            s.train.activation_checkpointing = true;
        }
        over(&mut s.model.tokenizer.vocab_size, &self.vocab_size);
        if self.merge_across_words {
            s.model.tokenizer.merge_across_words = true;
        }
        over(&mut s.model.tokenizer.pre_tokenizer, &self.pre_tokenizer);
        over(&mut s.model.hidden_size, &self.hidden_size);
        over(&mut s.model.num_hidden_layers, &self.layers);
        over(&mut s.model.num_attention_heads, &self.heads);
        over(&mut s.model.num_key_value_heads, &self.kv_heads);
        over(&mut s.model.intermediate_size, &self.intermediate_size);
        over(&mut s.engine, &self.engine);
        over(&mut s.trl.distributed, &self.distributed);
        over(&mut s.trl.nodes, &self.nodes);
        over(&mut s.trl.gpus_per_node, &self.gpus_per_node);
        over(&mut s.trl.offload, &self.offload);
        over(&mut s.trl.lora_r, &self.lora_r);
        if self.lora_alpha.is_some() {
            s.trl.lora_alpha = self.lora_alpha;
        }
        if self.load_in_4bit {
            s.trl.load_in_4bit = true;
        }
        let kd_from_file = s.train.kd.is_some();
        if let Some(teacher) = &self.kd_teacher {
            let kd = s.train.kd.get_or_insert_with(Default::default);
            kd.teacher = teacher.clone();
            kd.from_corpus = false;
        }
        for (flag, value, slot) in [
            (
                "--kd-teacher-model",
                &self.kd_teacher_model,
                (|kd| &mut kd.teacher_model)
                    as fn(&mut distill_student::kd::KdConfig) -> &mut String,
            ),
            (
                "--kd-teacher-api-key-env",
                &self.kd_teacher_api_key_env,
                |kd| &mut kd.teacher_api_key_env,
            ),
        ] {
            let Some(value) = value else { continue };
            let Some(kd) = s.train.kd.as_mut().filter(|k| k.is_endpoint()) else {
                bail!("`{flag}` is for an endpoint teacher: pass `--kd-teacher URL`");
            };
            *slot(kd) = value.clone();
        }
        if self.kd_from_corpus {
            let kd = s.train.kd.get_or_insert_with(Default::default);
            kd.teacher.clear();
            kd.from_corpus = true;
        }
        let kd_flags = self.kd_weight.is_some()
            || self.kd_beta.is_some()
            || self.kd_temperature.is_some()
            || self.kd_top_k.is_some();
        let opd_flags = self.opd_prompts_per_step.is_some()
            || self.opd_max_new_tokens.is_some()
            || self.opd_prefill.is_some()
            || self.opd_eval_problems.is_some();
        match self.method {
            Some(Method::Opd) => {
                s.train.opd.get_or_insert_with(Default::default);
                // On-policy distillation learns the reverse KL alone unless told otherwise.
                if let (Some(kd), false) = (&mut s.train.kd, kd_from_file) {
                    kd.weight = 1.0;
                    kd.beta = 1.0;
                }
            }
            Some(Method::Sft) if opd_flags => {
                bail!("the `--opd-…` flags set on-policy distillation: drop `--method sft`")
            }
            Some(Method::Sft) => s.train.opd = None,
            None if opd_flags && s.train.opd.is_none() => {
                bail!("the `--opd-…` flags need `--method opd`")
            }
            None => {}
        }
        if let Some(opd) = &mut s.train.opd {
            over(&mut opd.prompts_per_step, &self.opd_prompts_per_step);
            over(&mut opd.max_new_tokens, &self.opd_max_new_tokens);
            over(&mut opd.prefill, &self.opd_prefill);
            over(&mut opd.eval_problems, &self.opd_eval_problems);
        }
        match &mut s.train.kd {
            Some(kd) => {
                over(&mut kd.weight, &self.kd_weight);
                over(&mut kd.beta, &self.kd_beta);
                over(&mut kd.temperature, &self.kd_temperature);
                over(&mut kd.top_k, &self.kd_top_k);
            }
            None if kd_flags => bail!(
                "`--kd-weight`, `--kd-beta`, `--kd-temperature` and `--kd-top-k` need a teacher: pass `--kd-teacher MODEL` or `--kd-from-corpus`"
            ),
            None => {}
        }
        if self.dry_run && s.engine != Engine::Trl {
            bail!("`--dry-run` writes a TRL job: it needs `--engine trl`");
        }
        s.validate()?;
        Ok(s)
    }
}

impl TrainSettings {
    /// Checks what can be checked before reading anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.corpus.is_none() {
            bail!("no corpus: pass `--corpus DIR` or set `corpus` in the config");
        }
        if self.out.is_none() {
            bail!("no output folder: pass `--out DIR` or set `out` in the config");
        }
        match (&self.base, self.from_scratch) {
            (None, false) => {
                bail!("no starting point: pass `--base MODEL` or `--from-scratch`")
            }
            (Some(_), true) => bail!("`base` and `from_scratch` exclude each other"),
            _ => {}
        }
        self.data.validate()?;
        self.train.validate()?;
        if self.keep_layers.is_some() && self.base.is_none() {
            bail!("`keep_layers` picks layers of a base model: pass `--base MODEL` (a from-scratch student sets `layers`)");
        }
        if self.tokenizer.is_some() && !self.from_scratch {
            bail!("`tokenizer` picks a from-scratch student's tokenizer: a base model brings its own (drop `--tokenizer` or use `--from-scratch`)");
        }
        if self.from_scratch {
            self.model.validate()?;
        }
        if self.train.opd.is_some() && self.base.is_none() {
            bail!("on-policy distillation starts from a trained student: pass `--base MODEL` (for example the `model/` of an SFT run)");
        }
        match self.engine {
            Engine::Trl => {
                if self.from_scratch {
                    bail!("the TRL engine fine-tunes a base model: pass `--base MODEL` (from-scratch students train with `--engine distill`)");
                }
                if self.keep_layers.is_some() {
                    bail!("`keep_layers` runs in distill's own trainer: drop `--engine trl` (or cut the base first with `distill convert --keep-layers` and give TRL that folder)");
                }
                if self.train.kd.is_some() || self.train.opd.is_some() {
                    bail!("logit and on-policy distillation (`[train.kd]`, `[train.opd]`) run in distill's own trainer: drop `--engine trl`");
                }
                self.trl.validate()?;
                // accelerate shards (FSDP2, ZeRO-3) only on accelerators: on the CPU it starts
                // the same processes as plain data parallel without a word (accelerate 1.16's
                // `_prepare_backend`), so every process would hold the whole model.
                if self.device == DeviceChoice::Cpu && self.trl.distributed != Distributed::None {
                    bail!(
                        "`trl.distributed = \"{}\"` needs GPUs: accelerate runs FSDP2 and ZeRO-3 only there and would train CPU processes as plain data parallel; drop `device = \"cpu\"` (or set `trl.distributed = \"none\"`)",
                        self.trl.distributed.name()
                    );
                }
            }
            Engine::Distill => {
                if !self.trl.is_default() {
                    bail!("the `[trl]` settings need `engine = \"trl\"` (or `--engine trl`)");
                }
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot write the resolved config as TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults `--help` states for the optional flags are the ones the trainer uses
    /// (they are `Option`s so a pipeline file's values win, so clap cannot print them itself).
    #[test]
    fn help_states_the_defaults_in_use() {
        use clap::{Args, Command};
        let help = TrainArgs::augment_args(Command::new("train"))
            .render_long_help()
            .to_string();
        let data = distill_student::data::DataConfig::default();
        let train = distill_student::trainer::TrainerConfig::default();
        for (flag, value) in [
            ("max-seq-len", data.max_seq_len.to_string()),
            ("eval-fraction", data.eval_fraction.to_string()),
            ("lr", train.schedule.lr.to_string()),
            ("warmup-steps", train.schedule.warmup_steps.to_string()),
            ("epochs", train.epochs.to_string()),
            ("micro-batch-size", train.micro_batch_size.to_string()),
            ("accumulation-steps", train.accumulation_steps.to_string()),
            ("seed", train.seed.to_string()),
            ("eval-every", train.eval_every.to_string()),
            ("checkpoint-every", train.checkpoint_every.to_string()),
        ] {
            let start = help
                .find(&format!("--{flag} <"))
                .unwrap_or_else(|| panic!("no --{flag} in the help"));
            // Each argument's text ends at a blank line in the long help.
            let end = help[start..].find("\n\n").map_or(help.len(), |e| start + e);
            let text = help[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                text.contains(&format!("[default: {value}")),
                "--{flag}: the trainer's default is {value}; the help says: {text}"
            );
        }
    }

    #[test]
    fn typos_are_named_at_every_level() {
        for (text, key) in [
            ("corpuss = \"x\"", "corpuss"),
            ("[data]\nmax_seq_length = 3", "max_seq_length"),
            ("[train.schedule]\nlearning_rate = 0.1", "learning_rate"),
            ("[model.tokenizer]\nvocab = 80", "vocab"),
        ] {
            let err = parse(text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("t.toml"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "corpus = \"a\"\nout = \"o\"\nfrom_scratch = true\n[train.schedule]\nlr = 0.01\n",
        )
        .unwrap();
        let args = TrainArgs {
            config: Some(path),
            lr: Some(0.002),
            max_steps: Some(7),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.train.schedule.lr, 0.002);
        assert_eq!(s.train.max_steps, Some(7));
        assert!(s.from_scratch);
        let back = parse(&s.to_toml().unwrap(), Path::new("r.toml")).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn out_of_range_values_fail() {
        let args = TrainArgs {
            corpus: Some("c".into()),
            out: Some("o".into()),
            from_scratch: true,
            lr: Some(3.0),
            ..Default::default()
        };
        assert!(args
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("`schedule.lr`"));
    }
}
