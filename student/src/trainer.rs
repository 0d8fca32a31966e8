//! The training loop: micro-batches → chunked cross-entropy → accumulated gradients → clipped
//! fused AdamW step on the schedule, with held-out evaluation, checkpoints and exact resume.
//!
//! Batching: an optimizer step consumes `micro_batch_size × accumulation_steps` packed rows in
//! the order of a seeded per-epoch shuffle. Each micro-batch's rows are padded to its longest
//! row with unlabelled positions that continue the last document (they attend only backwards and
//! nothing attends to them, so padding changes no loss or gradient). Every micro-batch's summed
//! loss is scaled by `1 / label tokens of the whole step`, so gradient accumulation equals one
//! big batch, whatever the split.
//!
//! The library never prints: [`Trainer::fit`] reports every step, evaluation and checkpoint to a
//! callback, which can also stop the run (a checkpoint is written first).

pub mod config;
mod init;
mod objective;
pub mod on_policy;

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use distill_models::recompute::RecomputeGrads;
use distill_models::tokenizer::TextTokenizer;
use distill_models::{Checkpoint, GenerationConfig, Model, Spec, TrainPrecision};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use config::TrainerConfig;
pub use init::init_weights;
use objective::{kd_term, micro_batch_loss};

use crate::batch::{PackedRow, Rows};
use crate::checkpoint::{self, DatasetFingerprint, StepRecord, TrainerState};
use crate::kd::Teacher;
use crate::optim::{clip_factor, AdamW, GradBuffers};
use crate::{Error, Result};

/// Largest shard of the Hugging Face weights in a checkpoint.
const MAX_SHARD_BYTES: usize = 2 << 30;

/// The student a run starts from: its config, weights and the files exported beside them.
pub struct StudentInit {
    pub config: distill_models::Config,
    pub generation: GenerationConfig,
    pub tokenizer: Option<TextTokenizer>,
    /// Weights keyed by Hugging Face name, on the host, in `dtype` (a bf16 base stays bf16 until
    /// the trainer casts it on the device).
    pub weights: HashMap<String, Tensor>,
    /// The dtype the base checkpoint stores its weights in; saved models keep it.
    pub dtype: DType,
}

impl StudentInit {
    /// A base checkpoint (Hugging Face folder, or GGUF dequantized to f32).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let tokenizer = match ckpt.tokenizer() {
            Ok(t) => Some(t),
            Err(distill_models::Error::MissingTokenizer(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            config: ckpt.config().clone(),
            generation: ckpt.generation_config().clone(),
            tokenizer,
            weights: ckpt.tensors_as(&Device::Cpu, ckpt.stored_dtype())?,
            dtype: ckpt.stored_dtype(),
        })
    }

    /// Keeps only the decoder layers in `keep`, renumbered in order (a student initialised from
    /// a subset of a teacher's layers; see [`distill_models::prune`]).
    pub fn keep_layers(&mut self, keep: &distill_models::prune::LayerList) -> Result<()> {
        distill_models::prune::keep_layers(&mut self.config, &mut self.weights, keep)?;
        Ok(())
    }

    /// A freshly initialised model (see [`init_weights`]).
    pub fn from_scratch(
        config: distill_models::Config,
        generation: GenerationConfig,
        tokenizer: Option<TextTokenizer>,
        seed: u64,
    ) -> Result<Self> {
        let weights = init_weights(&config.spec()?, seed, &Device::Cpu)?;
        Ok(Self {
            config,
            generation,
            tokenizer,
            weights,
            dtype: DType::F32,
        })
    }
}

/// What [`Trainer::fit`] reports.
#[derive(Debug)]
pub enum Event<'a> {
    Step(&'a StepMetrics),
    Eval {
        step: u64,
        loss: f64,
    },
    /// An evaluation of on-policy distillation on held-out problems.
    OnPolicyEval(&'a on_policy::OnPolicyEval),
    Checkpoint {
        step: u64,
        path: &'a Path,
    },
}

/// The callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Write a checkpoint and return from `fit`.
    Stop,
}

/// One optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Steps completed, this one included.
    pub step: u64,
    pub total_steps: u64,
    /// Mean cross-entropy over the step's label tokens; in on-policy distillation the mean
    /// divergence (the objective there).
    pub loss: f64,
    /// Mean teacher-student divergence over the step's label tokens (logit distillation).
    pub kd: Option<f64>,
    /// Learning rate this step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens (padding excluded) and label tokens in the step.
    pub tokens: usize,
    pub label_tokens: usize,
    pub tokens_per_sec: f64,
    pub elapsed: Duration,
    /// Where the step's time went.
    pub timings: StepTimings,
    /// On-policy distillation: the samples the step trained on.
    pub rollouts: Option<on_policy::RolloutStats>,
}

/// Wall time of a step's phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Model forward and loss, all micro-batches.
    pub forward: Duration,
    /// Backward passes and gradient accumulation.
    pub backward: Duration,
    /// Gradient norm and the AdamW update.
    pub optimizer: Duration,
}

/// How a `fit` call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// The callback asked to stop before the planned end.
    pub stopped: bool,
    pub checkpoint: Option<PathBuf>,
    /// Why the checkpoint after the last step could not be written (a full disk, say). The run
    /// still ends `Ok`: its weights are in memory and the caller writes the model, which a lost
    /// resume point must not cost (see [`Trainer::final_checkpoint`]).
    pub final_checkpoint_error: Option<String>,
}

/// Where a run trains: the device and the precision (parameter and compute dtypes).
#[derive(Debug, Clone)]
pub struct TrainTarget {
    pub device: Device,
    pub precision: TrainPrecision,
}

impl From<&Device> for TrainTarget {
    /// f32 throughout, as on the CPU.
    fn from(device: &Device) -> Self {
        Self {
            device: device.clone(),
            precision: TrainPrecision::F32,
        }
    }
}

/// A student being trained.
pub struct Trainer {
    config: TrainerConfig,
    spec: Spec,
    model_config: distill_models::Config,
    generation: GenerationConfig,
    tokenizer: Option<TextTokenizer>,
    model: Model,
    optimizer: AdamW,
    grads: GradBuffers,
    state: TrainerState,
    device: Device,
    precision: TrainPrecision,
    order: Option<(u64, Vec<usize>)>,
    /// The frozen teacher of `config.kd`.
    teacher: Option<Teacher>,
}

impl Trainer {
    /// A run on `target`: a `&Device` trains in f32; a [`TrainTarget`] chooses the precision.
    pub fn new(
        init: StudentInit,
        config: TrainerConfig,
        target: impl Into<TrainTarget>,
    ) -> Result<Self> {
        let TrainTarget { device, precision } = target.into();
        let device = &device;
        config.validate()?;
        let spec = init.config.spec()?;
        let varmap = VarMap::new();
        let mut weights = init.weights;
        let mut params = Vec::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Config("variable map lock poisoned".into()))?;
            for (name, _) in spec.tensor_shapes() {
                let t = weights.remove(&name).ok_or_else(|| {
                    Error::Config(format!("the initial weights have no tensor `{name}`"))
                })?;
                // Upload in the stored dtype (half the bytes for bf16), cast on the device.
                let var = Var::from_tensor(&t.to_device(device)?.to_dtype(precision.params)?)?;
                data.insert(name.clone(), var.clone());
                params.push((name, var));
            }
        }
        // Shapes are checked here: the VarMap refuses a variable whose shape differs.
        let model = Model::new(
            &spec,
            VarBuilder::from_varmap(&varmap, precision.params, device),
        )?;
        let optimizer = AdamW::new(params, config.optim.clone())?;
        let state = TrainerState {
            step: 0,
            total_steps: 0,
            rows_consumed: 0,
            dataset: None,
            history: Vec::new(),
            evals: Vec::new(),
            model_config: init.config.to_json(),
            trainer_config: config.clone(),
            export_dtype: init.dtype.as_str().into(),
        };
        Ok(Self {
            config,
            spec,
            model_config: init.config,
            generation: init.generation,
            tokenizer: init.tokenizer,
            model,
            optimizer,
            grads: GradBuffers::new(),
            state,
            device: device.clone(),
            precision,
            order: None,
            teacher: None,
        })
    }

    /// Continues the run saved in checkpoint folder `dir` (a `step-…` folder). `config` must
    /// equal the saved one except for evaluation/checkpoint cadence, and `expected_model` (when
    /// given) the saved model config; otherwise the first difference is named.
    pub fn resume(
        dir: &Path,
        config: TrainerConfig,
        expected_model: Option<&distill_models::Config>,
        target: impl Into<TrainTarget>,
    ) -> Result<Self> {
        let state = checkpoint::load_state(dir)?;
        let mismatch = |difference: String| Error::ResumeMismatch {
            path: dir.to_path_buf(),
            difference,
        };
        let to_json =
            |c: &TrainerConfig| serde_json::to_value(c).map_err(|e| Error::Config(e.to_string()));
        let (saved, now) = (to_json(&state.trainer_config)?, to_json(&config)?);
        if let Some(d) = checkpoint::first_difference(&saved, &now, config::RESUMABLE_KEYS) {
            return Err(mismatch(format!("training config differs: {d}")));
        }
        if let Some(expected) = expected_model {
            let now = expected.to_json();
            if let Some(d) = checkpoint::first_difference(&state.model_config, &now, &[]) {
                return Err(mismatch(format!("model config differs: {d}")));
            }
        }
        let ckpt = Checkpoint::open(&dir.join(checkpoint::MODEL_DIR))?;
        let init = StudentInit::from_checkpoint(&ckpt)?;
        let mut trainer = Self::new(init, config.clone(), target)?;
        trainer
            .optimizer
            .load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        if trainer.optimizer.step_count() != state.step {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "optimizer step `{}` differs from trainer step `{}`",
                    trainer.optimizer.step_count(),
                    state.step
                ),
            ));
        }
        trainer.state = TrainerState {
            trainer_config: config,
            ..state
        };
        Ok(trainer)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn precision(&self) -> TrainPrecision {
        self.precision
    }

    /// Gives a logit-distillation run (`config.kd`) its teacher, which must be on the
    /// trainer's device and share the student's vocabulary.
    pub fn set_teacher(&mut self, teacher: Teacher) -> Result<()> {
        if self.config.kd.is_none() {
            return Err(Error::Config(
                "a teacher was given but the training config has no `kd` section".into(),
            ));
        }
        if !teacher.model().device().same_device(&self.device) {
            return Err(Error::Config(
                "the teacher is on another device than the student".into(),
            ));
        }
        self.teacher = Some(teacher);
        Ok(())
    }

    /// The model the forward runs: the trained variables themselves, or (mixed precision) a
    /// copy cast to the compute dtype whose casts are recorded, so gradients reach the f32
    /// master weights in f32.
    fn compute_model(&self) -> Result<Option<Model>> {
        if !self.precision.is_mixed() {
            return Ok(None);
        }
        let weights: HashMap<String, Tensor> = self
            .optimizer
            .vars()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        let vb = VarBuilder::from_tensors(weights, self.precision.compute, &self.device);
        Ok(Some(Model::new(&self.spec, vb)?))
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Current weights (sharing storage with the trained variables, detached from the graph).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.optimizer
            .vars()
            .map(|(n, v)| (n.to_string(), v.as_detached_tensor()))
            .collect()
    }

    /// One optimizer step over `micro_batches` (their gradients accumulated), at the schedule's
    /// learning rate for the current step.
    pub fn train_step(&mut self, micro_batches: &[Vec<&PackedRow>]) -> Result<StepMetrics> {
        // On the CPU, one hand-over to rayon's pool per step instead of one per op.
        let device = self.device.clone();
        distill_models::workers::on_workers(&device, || self.train_step_here(micro_batches))
    }

    fn train_step_here(&mut self, micro_batches: &[Vec<&PackedRow>]) -> Result<StepMetrics> {
        let start = Instant::now();
        let label_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|r| r.label_count())
            .sum();
        let scale = 1.0 / label_tokens.max(1) as f64;
        let (mut loss, mut kd) = (0f64, 0f64);
        let mut tokens = 0;
        let mut timings = StepTimings::default();
        self.grads.clear();
        let cast = self.compute_model()?;
        let model = cast.as_ref().unwrap_or(&self.model);
        let kd_term = kd_term(&self.config.kd, &self.teacher)?;
        let recompute = self.config.activation_checkpointing.then(|| {
            RecomputeGrads::new(
                self.optimizer
                    .vars()
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect(),
            )
        });
        for rows in micro_batches {
            let t0 = Instant::now();
            let chunk = self.config.loss_chunk_size;
            let parts = micro_batch_loss(model, rows, scale, chunk, kd_term, recompute.as_ref())?;
            tokens += parts.tokens;
            loss += parts.cross_entropy;
            kd += parts.divergence.unwrap_or(0.0);
            let l = parts.objective;
            let t1 = Instant::now();
            let mut grads = l.backward()?;
            // The graph (activations) goes with `l`; free it before the next micro-batch.
            drop(l);
            if let Some(recompute) = &recompute {
                recompute.add_to(&mut grads)?;
            }
            self.grads.accumulate(grads, &self.optimizer)?;
            timings.forward += t1 - t0;
            timings.backward += t1.elapsed();
        }
        drop(cast);
        let t2 = Instant::now();
        let grad_norm = self.grads.global_norm()?;
        let total = self.state.total_steps.max(self.state.step + 1);
        let lr = self.config.schedule.lr_at(self.state.step, total);
        let factor = clip_factor(grad_norm, self.config.max_grad_norm);
        self.optimizer.step(&self.grads, lr, factor)?;
        timings.optimizer = t2.elapsed();
        self.state.step += 1;
        self.state.history.push(StepRecord {
            step: self.state.step,
            loss,
            lr,
            grad_norm,
        });
        let elapsed = start.elapsed();
        Ok(StepMetrics {
            step: self.state.step,
            total_steps: total,
            loss,
            kd: kd_term.map(|_| kd),
            lr,
            grad_norm,
            tokens,
            label_tokens,
            tokens_per_sec: tokens as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed,
            timings,
            rollouts: None,
        })
    }

    /// The current weights as a model without gradients, in the compute dtype (for evaluation
    /// and sampling).
    pub fn inference_model(&self) -> Result<Model> {
        let vb = VarBuilder::from_tensors(self.weights(), self.precision.compute, &self.device);
        Ok(Model::new(&self.spec, vb)?)
    }

    /// Mean cross-entropy over every label token of `rows`, without gradients.
    pub fn eval_loss(&self, rows: &(impl Rows + ?Sized)) -> Result<f64> {
        distill_models::workers::on_workers(&self.device, || self.eval_loss_here(rows))
    }

    fn eval_loss_here(&self, rows: &(impl Rows + ?Sized)) -> Result<f64> {
        let model = self.inference_model()?;
        let (mut sum, mut count) = (0f64, 0usize);
        let batch = self.config.micro_batch_size.max(1);
        for start in (0..rows.count()).step_by(batch) {
            let chunk: Vec<PackedRow> = (start..(start + batch).min(rows.count()))
                .map(|i| rows.row(i))
                .collect();
            let refs: Vec<&PackedRow> = chunk.iter().collect();
            let labels: usize = chunk.iter().map(|r| r.label_count()).sum();
            let parts =
                micro_batch_loss(&model, &refs, 1.0, self.config.loss_chunk_size, None, None)?;
            sum += parts.cross_entropy;
            count += labels;
        }
        if count == 0 {
            return Err(Error::NoData(
                "the held-out rows have no label tokens".into(),
            ));
        }
        Ok(sum / count as f64)
    }

    /// Trains on `train` until the planned number of steps (continuing a resumed run where it
    /// stopped), evaluating on `eval` and checkpointing under `checkpoint_dir` at the configured
    /// cadence and at the end.
    pub fn fit(
        &mut self,
        train: &(impl Rows + ?Sized),
        eval: Option<&dyn Rows>,
        checkpoint_dir: Option<&Path>,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<FitSummary> {
        train.check()?;
        let total = self.config.total_steps(train.count());
        self.plan(train.fingerprint(), total, checkpoint_dir, |saved, now| {
            format!(
                "the training data differs (checkpoint: `{}` rows, `{}` tokens; now: `{}` rows, `{}` tokens)",
                saved.rows, saved.tokens, now.rows, now.tokens
            )
        })?;
        let mut summary = self.summary_so_far();
        let mut evaluated_at = None;
        while self.state.step < total {
            let rows = self.next_rows(train, self.config.rows_per_step());
            let micro: Vec<Vec<&PackedRow>> = rows
                .chunks(self.config.micro_batch_size)
                .map(|c| c.iter().collect())
                .collect();
            let metrics = self.train_step(&micro)?;
            self.state.rows_consumed += rows.len() as u64;
            summary.steps = metrics.step;
            summary.last_loss = Some(metrics.loss);
            let stop = on_event(&Event::Step(&metrics)) == Control::Stop;
            let step = self.state.step;
            let every = |n: u64| n > 0 && step.is_multiple_of(n);
            if let (Some(rows), true) = (eval, every(self.config.eval_every)) {
                summary.eval_loss = Some(self.evaluate(rows, on_event)?);
                evaluated_at = Some(step);
            }
            // The last step's checkpoint is the final one, written after the loop.
            if (every(self.config.checkpoint_every) && step < total) || stop {
                self.checkpoint_now(checkpoint_dir, &mut summary, on_event)?;
            }
            if stop {
                summary.stopped = true;
                return Ok(summary);
            }
        }
        if let (Some(rows), false) = (eval, evaluated_at == Some(self.state.step)) {
            summary.eval_loss = Some(self.evaluate(rows, on_event)?);
        }
        self.final_checkpoint(checkpoint_dir, &mut summary, on_event);
        Ok(summary)
    }

    /// What a run (fresh or resumed) has done before its first step here.
    fn summary_so_far(&self) -> FitSummary {
        FitSummary {
            steps: self.state.step,
            last_loss: self.state.history.last().map(|r| r.loss),
            eval_loss: None,
            stopped: false,
            checkpoint: None,
            final_checkpoint_error: None,
        }
    }

    /// Records the run's data (`fingerprint`) and planned steps, refusing a resumed run whose
    /// data or plan differ from the checkpoint's (`differs` words the data difference).
    fn plan(
        &mut self,
        fingerprint: DatasetFingerprint,
        total: u64,
        checkpoint_dir: Option<&Path>,
        differs: impl Fn(&DatasetFingerprint, &DatasetFingerprint) -> String,
    ) -> Result<()> {
        let mismatch = |difference| Error::ResumeMismatch {
            path: checkpoint_dir.map(Path::to_path_buf).unwrap_or_default(),
            difference,
        };
        match self.state.dataset {
            Some(saved) if saved != fingerprint && self.state.step > 0 => {
                return Err(mismatch(differs(&saved, &fingerprint)))
            }
            _ => self.state.dataset = Some(fingerprint),
        }
        if self.state.step > 0 && self.state.total_steps != total {
            return Err(mismatch(format!(
                "the run was planned for `{}` steps, now `{total}`",
                self.state.total_steps
            )));
        }
        self.state.total_steps = total;
        Ok(())
    }

    /// A checkpoint of the current step (when `checkpoint_dir` is given), reported and kept in
    /// `summary`.
    fn checkpoint_now(
        &self,
        checkpoint_dir: Option<&Path>,
        summary: &mut FitSummary,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<()> {
        if let Some(dir) = checkpoint_dir {
            let path = self.save_checkpoint(dir)?;
            on_event(&Event::Checkpoint {
                step: self.state.step,
                path: &path,
            });
            summary.checkpoint = Some(path);
        }
        Ok(())
    }

    /// The checkpoint after a finished run's last step. A failure is kept in `summary` rather
    /// than returned: after hours of training the weights are still in memory, and the model
    /// folder (no optimizer moments: a third of a checkpoint's bytes or less) may still fit where the
    /// checkpoint did not. Checkpoints during the run still fail the run, as a resume point
    /// that cannot be written would leave later steps unrecoverable.
    pub(crate) fn final_checkpoint(
        &self,
        checkpoint_dir: Option<&Path>,
        summary: &mut FitSummary,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) {
        if let Err(e) = self.checkpoint_now(checkpoint_dir, summary, on_event) {
            summary.final_checkpoint_error = Some(e.to_string());
        }
    }

    fn evaluate(
        &mut self,
        rows: &dyn Rows,
        on_event: &mut dyn FnMut(&Event) -> Control,
    ) -> Result<f64> {
        let loss = self.eval_loss(rows)?;
        self.state.evals.push((self.state.step, loss));
        on_event(&Event::Eval {
            step: self.state.step,
            loss,
        });
        Ok(loss)
    }

    /// Writes a checkpoint of the current step under `root` (atomically; keeps the last
    /// `keep_last`). Returns its folder.
    pub fn save_checkpoint(&self, root: &Path) -> Result<PathBuf> {
        checkpoint::write_atomic(root, self.state.step, self.config.keep_last, |dir| {
            // The trained parameters exactly (f32 master weights stay f32), for exact resume.
            self.save_model_as(&dir.join(checkpoint::MODEL_DIR), self.precision.params)?;
            self.optimizer.save(&dir.join(checkpoint::OPTIMIZER_FILE))?;
            checkpoint::save_state(dir, &self.state)
        })
    }

    /// Writes the current weights as a Hugging Face folder (`out` must be absent or empty), in
    /// the base checkpoint's dtype (f32 for a model trained from scratch).
    pub fn save_model(&self, out: &Path) -> Result<()> {
        let dtype = match self.state.export_dtype.as_str() {
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            _ => DType::F32,
        };
        self.save_model_as(out, dtype)
    }

    /// [`Self::save_model`] in `dtype`.
    pub fn save_model_as(&self, out: &Path, dtype: DType) -> Result<()> {
        let weights = self
            .weights()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(dtype)?.to_device(&Device::Cpu)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(distill_models::checkpoint::save_hf_folder(
            out,
            &self.model_config,
            &self.generation,
            self.tokenizer.as_ref(),
            weights,
            MAX_SHARD_BYTES,
        )?)
    }

    /// The next `n` rows of the epoch-by-epoch shuffled stream, advancing nothing (the caller
    /// moves the cursor once the step succeeded).
    fn next_rows(&mut self, rows: &(impl Rows + ?Sized), n: usize) -> Vec<PackedRow> {
        (0..n as u64)
            .map(|i| {
                let index = self.stream_index(self.state.rows_consumed + i, rows.count());
                rows.row(index)
            })
            .collect()
    }

    /// The item at place `g` of the epoch-by-epoch shuffled stream over `len` items (rows, or
    /// an on-policy run's prompts).
    fn stream_index(&mut self, g: u64, len: usize) -> usize {
        let n = len as u64;
        self.epoch_order(g / n, len)[(g % n) as usize]
    }

    fn epoch_order(&mut self, epoch: u64, len: usize) -> &[usize] {
        let stale = !matches!(&self.order, Some((e, o)) if *e == epoch && o.len() == len);
        if stale {
            let mut order: Vec<usize> = (0..len).collect();
            if self.config.shuffle {
                // One ChaCha stream per epoch: the order depends only on (seed, epoch), so the
                // data cursor is the whole RNG state a checkpoint needs.
                let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
                rng.set_stream(epoch);
                order.shuffle(&mut rng);
            }
            self.order = Some((epoch, order));
        }
        self.order
            .as_ref()
            .map(|(_, o)| o.as_slice())
            .unwrap_or(&[])
    }
}

/// Row and token counts plus a hash of every id, position and label.
pub fn fingerprint<'a>(rows: impl IntoIterator<Item = &'a PackedRow>) -> DatasetFingerprint {
    let mut f = Fingerprinter::new();
    rows.into_iter().for_each(|r| f.add(r));
    f.finish()
}

/// [`fingerprint`] one row at a time, for rows streamed from a token cache.
pub struct Fingerprinter {
    hash: twox_hash::XxHash3_64,
    rows: u64,
    tokens: u64,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    pub fn new() -> Self {
        Self {
            hash: twox_hash::XxHash3_64::new(),
            rows: 0,
            tokens: 0,
        }
    }

    pub fn add(&mut self, r: &PackedRow) {
        self.rows += 1;
        self.tokens += r.len() as u64;
        let h = &mut self.hash;
        h.write_u64(r.len() as u64);
        r.input_ids.iter().for_each(|&x| h.write_u32(x));
        r.position_ids.iter().for_each(|&x| h.write_u32(x));
        r.labels.iter().for_each(|&x| h.write_i64(x));
    }

    pub fn finish(self) -> DatasetFingerprint {
        DatasetFingerprint {
            rows: self.rows,
            tokens: self.tokens,
            hash: self.hash.finish(),
        }
    }
}
