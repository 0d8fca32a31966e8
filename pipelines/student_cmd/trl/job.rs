//! The files of a TRL job, made from distill's resolved settings, the base model's
//! architecture and the corpus' token lengths — nothing here reads a file, so the 7B/32B/70B
//! presets are checked byte for byte against golden copies:
//!
//! - `recipe.yaml`: TRL's `ScriptArguments`, `SFTConfig` and `ModelConfig` (what `trl sft
//!   --config` and `distill_sft.py` parse), every value taken from distill's settings;
//! - `accelerate.yaml`: processes, machines, mixed precision, and the FSDP2 or DeepSpeed ZeRO-3
//!   settings with their offload options;
//! - `launch.sh`: `accelerate launch` of `distill_sft.py` on one machine (or one machine of
//!   several, with `MACHINE_RANK` and `MAIN_PROCESS_IP` set);
//! - `slurm.sbatch`: the same on every node of a Slurm allocation.
//!
//! Paths in the recipe are relative to the output folder (the scripts change into it), so the
//! folder can be copied to a cluster as it is.

use std::fmt::Write;
use std::path::PathBuf;

use distill_models::device::size;
use distill_models::{DeviceChoice, DtypeChoice, Spec};

use super::dataset::{LengthStats, DATA_DIR};
use super::settings::{Distributed, Offload};
use super::yaml::{Doc, Scalar};
use crate::student_cmd::memory::{self, Estimate, Sharding};
use crate::student_cmd::{TrainSettings, CHECKPOINTS_DIR};

pub const RECIPE: &str = "recipe.yaml";
pub const ACCELERATE: &str = "accelerate.yaml";
pub const LAUNCH: &str = "launch.sh";
pub const SLURM: &str = "slurm.sbatch";
pub const ENTRY: &str = "distill_sft.py";
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
/// Tells distill_sft.py whether weight decay reaches the embedding table (launch.sh sets it).
pub const DECAY_EMBEDDINGS_ENV: &str = "DISTILL_DECAY_EMBEDDINGS";

/// The entry script TRL runs under (shipped in `engines/trl/`, copied beside the recipe).
pub const ENTRY_SOURCE: &str = include_str!("../../../engines/trl/distill_sft.py");

/// Where the Python with TRL is looked for when neither `trl.python` nor `DISTILL_TRL_PYTHON`
/// says (what `engines/trl/setup.sh` makes), as the scripts write it.
pub const DEFAULT_PYTHON: &str = "$HOME/.cache/distill-trl-venv/bin/python";

/// Lengths are rounded up to this many tokens (tensor-core friendly shapes).
const LENGTH_MULTIPLE: usize = 64;

/// Everything the generated files are made from.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub settings: &'a TrainSettings,
    /// What TRL loads: a hub name (`owner/name`) or an absolute folder.
    pub model: String,
    /// A hub revision (`owner/name@revision`).
    pub revision: Option<String>,
    pub spec: Spec,
    /// Token lengths of the training documents under the base tokenizer and template.
    pub lengths: LengthStats,
    /// Held-out conversations exist (`data/eval.parquet`).
    pub has_eval: bool,
    /// The output folder as the job sees it (absolute; Slurm starts there).
    pub out: PathBuf,
    /// A training chat template distill wrote beside the recipe (`chat_template.jinja`).
    pub chat_template: bool,
}

impl Job<'_> {
    fn trl(&self) -> &super::settings::TrlSettings {
        &self.settings.trl
    }

    /// CPU processes (gloo) instead of GPUs: `device = "cpu"`.
    pub fn cpu(&self) -> bool {
        self.settings.device == DeviceChoice::Cpu
    }

    /// bf16 compute: on GPUs unless `dtype = "f32"`.
    pub fn bf16(&self) -> bool {
        !self.cpu() && self.settings.dtype != DtypeChoice::F32
    }

    /// `bf16-pure`: the model loaded in bf16, so weights, gradients and moments are bf16.
    fn pure_bf16(&self) -> bool {
        self.bf16() && self.settings.dtype == DtypeChoice::Bf16Pure
    }

    /// Activation checkpointing: `[trl]`'s (on by default, as TRL recipes run), or switched on
    /// for either engine by `[train]`'s / `--activation-checkpointing`.
    fn activation_checkpointing(&self) -> bool {
        self.trl().activation_checkpointing || self.settings.train.activation_checkpointing
    }

    /// The sequence length TRL packs to or truncates at. Packed, rows are `data.max_seq_len`
    /// wide as distill packs them. Unpacked, the longest training document rounded up to a
    /// multiple of 64 (capped by `data.max_seq_len`): no document is cut (distill has already
    /// dropped or truncated longer ones) and padding is no wider than the corpus needs.
    pub fn max_length(&self) -> usize {
        max_length(
            self.settings.data.max_seq_len,
            self.settings.data.packing,
            &self.lengths,
        )
    }

    pub fn processes(&self) -> usize {
        self.trl().processes()
    }

    fn sharding(&self) -> Sharding {
        let trl = self.trl();
        Sharding {
            processes: self.processes(),
            zero3: trl.distributed == Distributed::Zero3,
            sharded: trl.distributed.shards(),
            offload_optimizer: trl.offload != Offload::None,
            offload_params: trl.offload == Offload::All,
            bf16: self.bf16(),
            pure_bf16: self.pure_bf16(),
            activation_checkpointing: self.activation_checkpointing(),
            lora_r: trl.lora_r,
            load_in_4bit: trl.load_in_4bit,
            micro_batch: self.settings.train.micro_batch_size,
            seq_len: self.max_length(),
        }
    }

    pub fn memory(&self) -> Estimate {
        memory::sharded(&self.spec, &self.sharding())
    }

    /// The estimate in one line, as printed before launch and written atop the recipe.
    pub fn memory_line(&self) -> String {
        let m = self.memory();
        let trl = self.trl();
        let layout = match trl.distributed {
            Distributed::None if self.processes() == 1 => "one process".to_string(),
            Distributed::None => format!("data parallel over {} processes", self.processes()),
            d => format!("{} over {} processes", d.name(), self.processes()),
        };
        let offload = match trl.offload {
            Offload::None => String::new(),
            o => format!(", offload {}", o.name()),
        };
        let lora = if trl.lora_r > 0 {
            format!(
                ", {}LoRA r={} ({} adapter parameters)",
                if trl.load_in_4bit { "4-bit Q" } else { "" },
                trl.lora_r,
                count(memory::lora_parameters(&self.spec, trl.lora_r) as f64)
            )
        } else {
            String::new()
        };
        format!(
            "Memory per {} (estimate; {layout}{offload}{lora}, {} parameters): weights {}, gradients {}, optimizer states {}, activations {} (micro-batch {} × {} tokens{}); total {}",
            if self.cpu() { "process" } else { "GPU" },
            count(self.spec.num_parameters() as f64),
            size(m.weights),
            size(m.gradients),
            size(m.optimizer),
            size(m.activations),
            self.settings.train.micro_batch_size,
            self.max_length(),
            if self.activation_checkpointing() {
                ", activation checkpointing"
            } else {
                ""
            },
            size(m.total()),
        )
    }

    /// Every generated file: name and contents.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        vec![
            (RECIPE, self.recipe()),
            (ACCELERATE, self.accelerate()),
            (LAUNCH, self.launch()),
            (SLURM, self.slurm()),
        ]
    }

    /// `recipe.yaml`.
    pub fn recipe(&self) -> String {
        let s = self.settings;
        let (trl, train, data) = (self.trl(), &s.train, &s.data);
        let mut y = Doc::new();
        y.comment(
            "TRL SFT recipe written by `distill train --engine trl` from distill's settings\n\
             (train_config.toml beside it). Run it with launch.sh (one machine) or slurm.sbatch;\n\
             it also parses as `trl sft --config recipe.yaml`.",
        )
        .comment(&self.memory_line())
        .blank();

        y.comment("Model");
        y.field("model_name_or_path", self.model.as_str());
        y.optional("model_revision", self.revision.as_deref());
        y.comment(if self.pure_bf16() {
            "bf16 weights, gradients and moments (distill's `bf16-pure`)"
        } else if self.bf16() {
            "f32 master weights and moments, bf16 compute (distill's `bf16`)"
        } else {
            "f32 throughout"
        });
        y.field(
            "dtype",
            if self.pure_bf16() {
                "bfloat16"
            } else {
                "float32"
            },
        );
        y.optional("attn_implementation", trl.attn_implementation.as_deref());
        y.blank();

        y.comment(
            "Data: the corpus after distill's filters (data_report.json); held-out problems in\n\
             data/eval.parquet (its `test` split)",
        );
        y.field("dataset_name", DATA_DIR);
        y.field("dataset_train_split", "train");
        y.field("dataset_test_split", "test");
        if self.chat_template {
            y.comment(
                "distill's template with `{% generation %}` around the trained turn and its\n\
                 end-of-turn token: the labels distill's own trainer uses",
            );
            y.field("chat_template_path", CHAT_TEMPLATE);
        }
        y.field("assistant_only_loss", true);
        let l = &self.lengths;
        y.comment(&format!(
            "{} training documents: longest {} tokens, p99 {}, p50 {} (base tokenizer and\n\
             template); data.max_seq_len {}{}",
            l.documents,
            l.max,
            l.p99,
            l.p50,
            data.max_seq_len,
            if data.packing {
                ": packed rows are that wide"
            } else {
                ""
            }
        ));
        y.field("max_length", self.max_length());
        y.field("packing", data.packing);
        if data.packing {
            y.comment("best-fit decreasing, as distill packs (padding-free: one sequence per row)");
            y.field("packing_strategy", "bfd");
        }
        y.blank();

        y.comment("Optimisation: distill's [train], [train.schedule] and [train.optim]");
        y.field("learning_rate", train.schedule.lr);
        let ratio = train.schedule.min_lr_ratio;
        if ratio >= 1.0 {
            y.field("lr_scheduler_type", "constant_with_warmup");
        } else if ratio == 0.0 {
            y.field("lr_scheduler_type", "cosine");
        } else {
            y.field("lr_scheduler_type", "cosine_with_min_lr");
            y.map("lr_scheduler_kwargs", |m| {
                m.field("min_lr_rate", ratio);
            });
        }
        y.field("warmup_steps", train.schedule.warmup_steps);
        match train.max_steps {
            Some(steps) => y.field("max_steps", steps),
            None => y.field("num_train_epochs", train.epochs),
        };
        y.field("per_device_train_batch_size", train.micro_batch_size);
        y.field("per_device_eval_batch_size", train.micro_batch_size);
        y.field("gradient_accumulation_steps", train.accumulation_steps);
        y.comment(&format!(
            "{} process{} × {} × {} = {} sequences per optimizer step",
            self.processes(),
            if self.processes() == 1 { "" } else { "es" },
            train.micro_batch_size,
            train.accumulation_steps,
            self.processes() * train.rows_per_step()
        ));
        y.comment(
            "the loss of a step is the mean over every label token of the step, across its\n\
             micro-batches and processes, as distill's trainer takes it",
        );
        y.field("average_tokens_across_devices", true);
        y.field("optim", "adamw_torch");
        y.field("adam_beta1", train.optim.beta1);
        y.field("adam_beta2", train.optim.beta2);
        y.field("adam_epsilon", train.optim.eps);
        y.field("weight_decay", train.optim.weight_decay);
        y.field("max_grad_norm", train.max_grad_norm.unwrap_or(0.0));
        y.field("seed", train.seed);
        y.field("data_seed", train.seed);
        y.field("bf16", self.bf16());
        if self.cpu() {
            y.field("use_cpu", true);
        }
        // FSDP2 checkpoints activations itself (accelerate.yaml); both at once is an error.
        let fsdp = trl.distributed == Distributed::Fsdp2;
        y.field(
            "activation_checkpointing",
            self.activation_checkpointing() && !fsdp,
        );
        y.blank();

        if trl.lora_r > 0 {
            y.comment("LoRA through PEFT");
            y.field("use_peft", true);
            y.field("lora_r", trl.lora_r);
            y.field("lora_alpha", trl.lora_alpha.unwrap_or(2 * trl.lora_r));
            y.field("lora_dropout", trl.lora_dropout);
            y.list("lora_target_modules", &[Scalar::from("all-linear")]);
            if trl.load_in_4bit {
                y.field("load_in_4bit", true);
                y.field("bnb_4bit_quant_type", "nf4");
                y.field("use_bnb_nested_quant", true);
                if trl.distributed.shards() {
                    y.comment("sharded 4-bit weights must be stored in the dtype FSDP/ZeRO shard");
                    y.field("bnb_4bit_quant_storage", "bfloat16");
                }
            }
            y.blank();
        }

        y.comment(
            "Checkpoints (a rerun resumes from the newest) and logs; distill_sft.py saves the\n\
             final model to model/",
        );
        y.field("output_dir", CHECKPOINTS_DIR);
        if train.checkpoint_every > 0 {
            y.field("save_strategy", "steps");
            y.field("save_steps", train.checkpoint_every);
        } else {
            y.field("save_strategy", "epoch");
        }
        y.field("save_total_limit", train.keep_last);
        if self.has_eval && train.eval_every > 0 {
            y.field("eval_strategy", "steps");
            y.field("eval_steps", train.eval_every);
        } else {
            y.field("eval_strategy", "no");
        }
        y.field("logging_steps", 1usize);
        y.field("report_to", "none");
        y.field("disable_tqdm", true);
        y.finish()
    }

    /// `accelerate.yaml`.
    pub fn accelerate(&self) -> String {
        let trl = self.trl();
        let mut y = Doc::new();
        y.comment("accelerate config written by `distill train --engine trl`");
        y.field("compute_environment", "LOCAL_MACHINE");
        y.field("debug", false);
        let distributed_type = match (trl.distributed, self.cpu(), self.processes()) {
            (Distributed::Zero3, _, _) => "DEEPSPEED",
            (Distributed::Fsdp2, _, _) => "FSDP",
            // accelerate starts the processes of a `MULTI_CPU` job only through mpirun (without
            // it, one process trains alone); `MULTI_GPU`'s launcher is torchrun, and with the
            // recipe's `use_cpu` every process it starts joins a gloo group on the CPU.
            (Distributed::None, _, n) if n > 1 => "MULTI_GPU",
            (Distributed::None, _, _) => "NO",
        };
        if self.cpu() && distributed_type == "MULTI_GPU" {
            y.comment("CPU processes started by torchrun (gloo; `use_cpu` in recipe.yaml)");
        }
        y.field("distributed_type", distributed_type);
        match trl.distributed {
            Distributed::Zero3 => {
                y.map("deepspeed_config", |d| {
                    d.field("deepspeed_multinode_launcher", "standard");
                    let device = |on: bool| if on { "cpu" } else { "none" };
                    d.field(
                        "offload_optimizer_device",
                        device(trl.offload != Offload::None),
                    );
                    d.field("offload_param_device", device(trl.offload == Offload::All));
                    d.field("zero3_init_flag", true);
                    d.field("zero3_save_16bit_model", true);
                    d.field("zero_stage", 3usize);
                });
            }
            Distributed::Fsdp2 => {
                y.map("fsdp_config", |f| {
                    f.field(
                        "fsdp_activation_checkpointing",
                        self.activation_checkpointing(),
                    );
                    f.field("fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP");
                    f.field("fsdp_cpu_ram_efficient_loading", true);
                    f.field("fsdp_offload_params", trl.offload == Offload::All);
                    f.field("fsdp_reshard_after_forward", true);
                    f.field("fsdp_state_dict_type", "FULL_STATE_DICT");
                    f.field("fsdp_version", 2usize);
                });
            }
            Distributed::None => {}
        }
        y.field("downcast_bf16", "no");
        y.field("machine_rank", 0usize);
        y.field("main_training_function", "main");
        y.field("mixed_precision", if self.bf16() { "bf16" } else { "no" });
        y.field("num_machines", trl.nodes);
        y.field("num_processes", self.processes());
        y.field("rdzv_backend", "static");
        y.field("same_network", true);
        y.list("tpu_env", &[]);
        y.field("tpu_use_cluster", false);
        y.field("tpu_use_sudo", false);
        y.field("use_cpu", self.cpu());
        y.finish()
    }

    fn python(&self) -> String {
        match &self.trl().python {
            Some(path) => format!("${{DISTILL_TRL_PYTHON:-{}}}", path.display()),
            None => format!("${{DISTILL_TRL_PYTHON:-{DEFAULT_PYTHON}}}"),
        }
    }

    /// `launch.sh`.
    pub fn launch(&self) -> String {
        let mut t = String::new();
        let _ = write!(
            t,
            r#"#!/usr/bin/env bash
# Launches the TRL job in this folder (written by `distill train --engine trl`).
# One machine: `bash launch.sh` (MAIN_PROCESS_PORT picks the rendezvous port). One machine of
# several: set MACHINE_RANK, MAIN_PROCESS_IP and MAIN_PROCESS_PORT on each, as slurm.sbatch does.
# {memory}
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="{python}"
# distill's `train.optim.decay_embeddings`: transformers decays the embedding table (and a tied
# head) under `weight_decay`; distill_sft.py leaves it out unless this is 1, as distill does.
export {decay_env}={decay}
args=(--config_file {accelerate})
if [ -n "${{MAIN_PROCESS_PORT:-}}" ]; then
  args+=(--main_process_port "$MAIN_PROCESS_PORT")
fi
if [ -n "${{MACHINE_RANK:-}}" ]; then
  args+=(--machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP")
fi
exec "$PYTHON" -m accelerate.commands.launch "${{args[@]}}" {entry} --config {recipe} "$@"
"#,
            memory = self.memory_line(),
            python = self.python(),
            decay_env = DECAY_EMBEDDINGS_ENV,
            decay = u8::from(self.settings.train.optim.decay_embeddings),
            accelerate = ACCELERATE,
            entry = ENTRY,
            recipe = RECIPE,
        );
        t
    }

    /// `slurm.sbatch`.
    pub fn slurm(&self) -> String {
        let trl = self.trl();
        let name = self
            .out
            .file_name()
            .map_or("distill".into(), |n| n.to_string_lossy().into_owned());
        let mut head = format!(
            "#!/usr/bin/env bash\n\
             # Slurm job for the TRL run in this folder (written by `distill train --engine trl`):\n\
             # `sbatch slurm.sbatch`. Every node runs launch.sh once; node 0 is the main process.\n\
             #SBATCH --job-name=distill-{name}\n\
             #SBATCH --nodes={nodes}\n\
             #SBATCH --ntasks-per-node=1\n",
            nodes = trl.nodes,
        );
        if !self.cpu() {
            let _ = writeln!(head, "#SBATCH --gpus-per-node={}", trl.gpus_per_node);
        }
        let _ = writeln!(head, "#SBATCH --exclusive");
        let _ = writeln!(head, "#SBATCH --chdir={}", self.out.display());
        let _ = writeln!(head, "#SBATCH --output={}/slurm-%j.log", self.out.display());
        if let Some(p) = &trl.slurm_partition {
            let _ = writeln!(head, "#SBATCH --partition={p}");
        }
        if let Some(t) = &trl.slurm_time {
            let _ = writeln!(head, "#SBATCH --time={t}");
        }
        head.push_str(
            r#"set -euo pipefail
MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_PROCESS_IP
export MAIN_PROCESS_PORT=29500
srun --kill-on-bad-exit=1 bash -c 'MACHINE_RANK=$SLURM_NODEID exec bash launch.sh'
"#,
        );
        head
    }
}

/// `1.23 B`, `45.6 M`, `7.9 k`.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2} B", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n => format!("{:.1} k", n / 1e3),
    }
}

/// See [`Job::max_length`].
pub fn max_length(max_seq_len: usize, packing: bool, lengths: &LengthStats) -> usize {
    if packing {
        return max_seq_len;
    }
    lengths
        .max
        .div_ceil(LENGTH_MULTIPLE)
        .saturating_mul(LENGTH_MULTIPLE)
        .min(max_seq_len)
        .max(1)
}
