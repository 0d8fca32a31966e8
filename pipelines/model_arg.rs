//! Every model argument goes through here (`inspect`, `convert`, `train --base`, `generate
//! --model`, `serve`, `compare --models`, and the pipeline tables that hold them), and so do the
//! hub datasets `corpus import` reads (same cache, settings and progress): a local path
//! stays that path; `owner/name` (see [`distill_models::hub`]) is fetched from the Hugging Face
//! hub into its cache, with a progress bar per file, before any expensive work, and opened from
//! there. A `distill train` output folder stands for the model it holds (`OUT/model`), so a
//! user can pass the folder they named with `--out`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use distill_models::hub::{self, DownloadProgress, HubRef, HubSettings, ModelRef};

use crate::progress::Progress;

/// A model argument made local.
#[derive(Debug, Clone)]
pub struct ModelPath {
    /// A checkpoint folder or a `.gguf` file.
    pub path: PathBuf,
    /// The name recorded as provenance and shown: the file or folder name of a local model, the
    /// argument itself for a hub model.
    pub name: String,
    /// For a hub model: `owner/name@commit`.
    pub hub: Option<String>,
}

/// The hub model an argument names, or `None` for a local path (existing or not).
pub fn hub_ref(arg: &Path) -> Option<HubRef> {
    match ModelRef::parse(arg.to_str()?) {
        ModelRef::Hub(model) => Some(model),
        ModelRef::Local(_) => None,
    }
}

/// Resolves a model argument, downloading a hub model's missing files. A local path is
/// returned as is (whether it exists is for the caller to say), or the model of a training run
/// folder (see [`local`]).
pub fn resolve(arg: &Path) -> anyhow::Result<ModelPath> {
    match hub_ref(arg) {
        Some(model) => resolve_hub(&model),
        None => Ok(ModelPath {
            path: local(arg),
            name: distill_teacher::local::model_name(arg),
            hub: None,
        }),
    }
}

/// A local model argument as the checkpoint to open: a training run's output folder (no
/// `config.json` of its own, a finished model in `model/`) becomes that `model/` folder, said on
/// stderr; anything else stays as given.
pub fn local(arg: &Path) -> PathBuf {
    match trained_model(arg) {
        Some(model) => {
            eprintln!(
                "`{}` is a training run: using its model `{}`",
                arg.display(),
                model.display()
            );
            model
        }
        None => arg.to_path_buf(),
    }
}

/// The finished model inside a training run's output folder, if `dir` is one.
fn trained_model(dir: &Path) -> Option<PathBuf> {
    let model = dir.join("model");
    (dir.is_dir()
        && !dir.join(distill_models::hf::CONFIG).exists()
        && model.join(distill_models::hf::CONFIG).is_file())
    .then_some(model)
}

/// [`resolve`], failing in one line when a local path does not exist: "the `role` `PATH` does
/// not exist" (`role`: "model", "base model", "teacher").
pub fn resolve_existing(arg: &Path, role: &str) -> anyhow::Result<ModelPath> {
    let model = resolve(arg)?;
    anyhow::ensure!(
        model.path.exists(),
        "the {role} `{}` does not exist",
        model.path.display()
    );
    Ok(model)
}

/// Fetches a hub model (what is missing from the cache) and says where it is.
pub fn resolve_hub(model: &HubRef) -> anyhow::Result<ModelPath> {
    let settings = HubSettings::from_env()?;
    let mut bars = Bars::new(&settings);
    let found = hub::resolve(model, &settings, &mut bars).map_err(|e| {
        // `dir/sub/file.gguf` is also a local path: a typo or a file not fetched yet lands here.
        match (&model.gguf, &model.revision) {
            (Some(hub::GgufPick::File(_)), None) => {
                anyhow::anyhow!("{e} (read as a hub file: no local file `{model}` exists either)")
            }
            _ => e.into(),
        }
    })?;
    if let Some(warning) = &found.warning {
        eprintln!("Warning: {warning}");
    }
    if found.downloaded > 0 {
        eprintln!(
            "Downloaded {} file{} of `{model}` into `{}`",
            found.downloaded,
            crate::plural(found.downloaded as u64),
            found.path.display()
        );
    }
    Ok(hub_path(model, found))
}

/// A model argument made local without its weights: a local path as is; a hub model's
/// config, tokenizer and chat template fetched into the cache (for jobs that another program
/// trains and that fetch the weights themselves: the TRL engine).
pub fn resolve_metadata(arg: &Path) -> anyhow::Result<ModelPath> {
    match hub_ref(arg) {
        Some(model) => resolve_hub_metadata(&model),
        None => resolve(arg),
    }
}

/// [`resolve_hub`] without the weights (see [`resolve_metadata`]).
pub fn resolve_hub_metadata(model: &HubRef) -> anyhow::Result<ModelPath> {
    let settings = HubSettings::from_env()?;
    let mut bars = Bars::new(&settings);
    let found = hub::resolve_metadata(model, &settings, &mut bars)?;
    if let Some(warning) = &found.warning {
        eprintln!("Warning: {warning}");
    }
    Ok(hub_path(model, found))
}

/// A model argument's tokenizer (`train --tokenizer`, `corpus import --tokenizer`): of a hub
/// checkpoint folder only its tokenizer files are fetched; a GGUF is fetched whole, the
/// tokenizer being inside it.
pub fn open_tokenizer(arg: &Path) -> anyhow::Result<distill_models::tokenizer::TextTokenizer> {
    let mut model = resolve_metadata(arg)?;
    if !model.path.exists() {
        // A hub GGUF: metadata names the file without fetching it.
        model = resolve(arg)?;
    }
    distill_models::Checkpoint::open(&model.path)
        .and_then(|c| c.tokenizer())
        .with_context(|| format!("cannot read the tokenizer of `{}`", model.path.display()))
}

/// Fetches the data files of a hub dataset (`distill corpus import owner/name/PATH`), with the
/// same cache, settings and progress bars as models.
pub fn resolve_dataset(
    dataset: &hub::DatasetRef,
    take: hub::DataFiles,
) -> anyhow::Result<hub::ResolvedDataset> {
    let settings = HubSettings::from_env()?;
    let mut bars = Bars::new(&settings);
    let found = hub::resolve_dataset(dataset, take, &settings, &mut bars).map_err(|e| match e {
        // `dir/sub/file.jsonl` that is not there (a typo) reads as a dataset name too: say both.
        distill_models::Error::Hub(hub::HubError::Unreachable { .. }) => anyhow::anyhow!(
            "{e} (read as a hub dataset: no local file or folder `{dataset}` exists either)"
        ),
        e => e.into(),
    })?;
    if let Some(warning) = &found.snapshot.warning {
        eprintln!("Warning: {warning}");
    }
    if found.snapshot.downloaded > 0 {
        eprintln!(
            "Downloaded {} file{} of dataset `{dataset}` into `{}`",
            found.snapshot.downloaded,
            crate::plural(found.snapshot.downloaded as u64),
            found.snapshot.path.display()
        );
    }
    Ok(found)
}

/// The hub dataset a dataset argument names, or `None` for a local path: an existing path is
/// local, and so is one whose first folder exists here (`runs/demo/corpus`, not written yet, is
/// no dataset `runs/demo`); otherwise `owner/name[/PATH][@revision]` is a hub dataset.
pub fn dataset_ref(arg: &Path) -> Option<hub::DatasetRef> {
    if arg.exists() {
        return None;
    }
    let first = arg.components().next()?;
    if Path::new(first.as_os_str()).is_dir() {
        return None;
    }
    hub::DatasetRef::parse(arg.to_str()?)
}

/// A problem set argument (`generate --problems`, `compare --problems`, `corpus decontaminate
/// --eval`): a local path as it is; else a hub dataset name whose one data file is fetched
/// (`HuggingFaceH4/MATH-500`, `openai/gsm8k/main/test`).
pub fn resolve_problem_file(arg: &Path) -> anyhow::Result<PathBuf> {
    let Some(dataset) = dataset_ref(arg) else {
        return Ok(arg.to_path_buf());
    };
    let found = resolve_dataset(&dataset, hub::DataFiles::One)?;
    found
        .files
        .into_iter()
        .next()
        .with_context(|| format!("dataset `{dataset}` has no data file"))
}

/// A training corpus argument (`train --corpus`, `--eval-corpus`): a local path as it is;
/// else a hub dataset name covering one folder of parquet shards (`open-r1/Mixture-of-Thoughts/
/// math`), fetched, as that folder in the cache (TRL's `--dataset_name` for `messages` data).
pub fn resolve_corpus(arg: &Path) -> anyhow::Result<PathBuf> {
    let Some(dataset) = dataset_ref(arg) else {
        return Ok(arg.to_path_buf());
    };
    let found = resolve_dataset(&dataset, hub::DataFiles::Folder)?;
    found
        .files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .with_context(|| format!("dataset `{dataset}` has no data file"))
}

/// A hub model from the cache alone, for checks that must not download (`run --dry-run`):
/// `None` when it is not (completely) there yet.
pub fn cached(model: &HubRef) -> anyhow::Result<Option<ModelPath>> {
    cached_files(model, hub::Files::All)
}

/// [`cached`] for some files only: with [`hub::Files::Metadata`], whether the config and
/// tokenizer are there.
pub fn cached_files(model: &HubRef, files: hub::Files) -> anyhow::Result<Option<ModelPath>> {
    let settings = HubSettings::from_env()?;
    match hub::cached_files(model, &settings, files) {
        Ok(found) => Ok(Some(hub_path(model, found))),
        Err(distill_models::Error::Hub(
            hub::HubError::NotCached { .. } | hub::HubError::OfflineMissing { .. },
        )) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn hub_path(model: &HubRef, found: hub::Resolved) -> ModelPath {
    ModelPath {
        path: found.path,
        name: model.to_string(),
        hub: Some(format!("{}@{}", model.repo, found.commit)),
    }
}

/// One progress bar per file downloaded; a line saying where from and to before the first.
struct Bars {
    endpoint: String,
    cache: PathBuf,
    announced: bool,
    bar: Option<Progress>,
}

impl Bars {
    fn new(settings: &HubSettings) -> Self {
        Self {
            endpoint: settings.endpoint.clone(),
            cache: settings.cache.clone(),
            announced: false,
            bar: None,
        }
    }
}

impl DownloadProgress for Bars {
    fn start(&mut self, repo: &str, file: &str, bytes: u64) {
        if !self.announced {
            self.announced = true;
            eprintln!(
                "Downloading `{repo}` from {} into `{}`",
                self.endpoint,
                self.cache.display()
            );
        }
        let bar = Progress::new(
            bytes,
            "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} · {bytes_per_sec} · ETA {eta}",
            "bytes",
            true,
        );
        bar.set_prefix("download");
        bar.set_message(file.to_string());
        self.bar = Some(bar);
    }

    fn position(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
