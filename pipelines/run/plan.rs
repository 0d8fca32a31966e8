//! From a pipeline file to resolved stages: each TOML table becomes the argument list of its
//! `distill` subcommand, with the paths that connect the stages filled in, every key checked
//! against the subcommand's flags (typos are named with their table), and each stage's inputs
//! and outputs known for the manifest and the preflight check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

use super::exec::{Resume, StagePlan};
use crate::cli::Cli;

/// Stages in the order they run, with the subcommand each one is.
const STAGES: &[(&str, &[&str])] = &[
    ("problems", &["problems"]),
    ("eval_problems", &["problems"]),
    ("teacher", &["train"]),
    ("generate", &["generate"]),
    // A corpus made by others, instead of (or beside) `generate`'s.
    ("import", &["corpus", "import"]),
    ("verify", &["corpus", "verify"]),
    ("filter", &["corpus", "filter"]),
    ("dedup", &["corpus", "dedup"]),
    ("decontaminate", &["corpus", "decontaminate"]),
    ("split", &["corpus", "split"]),
    ("train", &["train"]),
    ("opd", &["train"]),
    // Before `compare`, so the report's laptop table can hold the exported file.
    ("export", &["export"]),
    ("compare", &["compare"]),
];

/// Keys of the `[pipeline]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    out: Option<PathBuf>,
    /// `device` and `dtype` for every model stage (a stage's own key wins).
    device: Option<String>,
    dtype: Option<String>,
}

/// A parsed pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub out: PathBuf,
    pub file: PathBuf,
    text: String,
    tables: BTreeMap<String, toml::Table>,
    /// `[pipeline]`'s `device` and `dtype`, given to every model stage.
    placement: toml::Table,
}

/// One resolved stage: the subcommand's arguments and the paths it reads and writes.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: &'static str,
    pub argv: Vec<String>,
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
    /// Training stages continue from their last checkpoint when resumed.
    resumable_with_flag: bool,
}

impl Pipeline {
    pub fn parse(text: &str, file: &Path, out_override: Option<&Path>) -> anyhow::Result<Self> {
        let mut doc: toml::Table = toml::from_str(text)
            .with_context(|| format!("cannot parse pipeline `{}`", file.display()))?;
        let header: Header = match doc.remove("pipeline") {
            Some(v) => v
                .try_into()
                .with_context(|| format!("in table `[pipeline]` of `{}`", file.display()))?,
            None => Header {
                name: None,
                description: None,
                out: None,
                device: None,
                dtype: None,
            },
        };
        let mut tables = BTreeMap::new();
        for (key, value) in doc {
            if !STAGES.iter().any(|(name, _)| *name == key) {
                let known: Vec<&str> = STAGES.iter().map(|(n, _)| *n).collect();
                bail!(
                    "unknown table `[{key}]` in `{}` (tables: pipeline, {})",
                    file.display(),
                    known.join(", ")
                );
            }
            let toml::Value::Table(table) = value else {
                bail!(
                    "`{key}` in `{}` must be a table (`[{key}]`)",
                    file.display()
                );
            };
            tables.insert(key, table);
        }
        if tables.contains_key("generate") && tables.contains_key("import") {
            // The passes read one corpus: `[import]`'s would silently replace `[generate]`'s.
            bail!(
                "`{}` has both `[generate]` and `[import]`: a pipeline's corpus comes from one \
                 (run the other as its own pipeline or command)",
                file.display()
            );
        }
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        let name = header.name.or(stem).unwrap_or_else(|| "pipeline".into());
        let out = out_override
            .map(Path::to_path_buf)
            .or(header.out)
            .unwrap_or_else(|| PathBuf::from("runs").join(&name));
        let mut placement = toml::Table::new();
        for (key, value) in [("device", header.device), ("dtype", header.dtype)] {
            if let Some(v) = value {
                placement.insert(key.into(), toml::Value::String(v));
            }
        }
        let pipeline = Self {
            name,
            out,
            file: file.to_path_buf(),
            text: text.to_string(),
            tables,
            placement,
        };
        pipeline.stages()?; // every key checked now, before any work
        Ok(pipeline)
    }

    /// The stages present in the file, in order, with their wiring resolved.
    pub fn stages(&self) -> anyhow::Result<Vec<Stage>> {
        let out = &self.out;
        let mut w = Wiring::default();
        let mut stages = Vec::new();
        for (name, command) in STAGES {
            let Some(table) = self.tables.get(*name) else {
                continue;
            };
            let path = |p: PathBuf| toml::Value::String(p.display().to_string());
            let mut defaults = toml::Table::new();
            let (inputs, outputs): (&[&str], &[&str]);
            match *name {
                "problems" => {
                    defaults.insert("out".into(), path(out.join("problems/train.jsonl")));
                    defaults.insert(
                        "solutions_corpus".into(),
                        path(out.join("problems/solutions")),
                    );
                    (inputs, outputs) = (&[], &["out", "solutions_corpus"]);
                }
                "eval_problems" => {
                    defaults.insert("out".into(), path(out.join("problems/eval.jsonl")));
                    (inputs, outputs) = (&[], &["out"]);
                }
                "teacher" | "train" => {
                    let corpus = if *name == "teacher" {
                        w.solutions.clone()
                    } else {
                        w.corpus.clone()
                    };
                    if let Some(c) = corpus {
                        defaults.insert("corpus".into(), path(c));
                    }
                    if *name == "train" {
                        if let Some(e) = &w.eval_corpus {
                            defaults.insert("eval_corpus".into(), path(e.clone()));
                        }
                    }
                    if !table.contains_key("base") {
                        defaults.insert("from_scratch".into(), toml::Value::Boolean(true));
                    }
                    let dir = if *name == "teacher" {
                        "teacher"
                    } else {
                        "student"
                    };
                    defaults.insert("out".into(), path(out.join(dir)));
                    (inputs, outputs) = (&["corpus", "eval_corpus", "base", "tokenizer"], &["out"]);
                }
                "opd" => {
                    // On-policy distillation of the trained student, from the pipeline's
                    // teacher, on the prompts of the corpus the student trained on.
                    if let Some(c) = &w.corpus {
                        defaults.insert("corpus".into(), path(c.clone()));
                    }
                    if let Some(e) = &w.eval_corpus {
                        defaults.insert("eval_corpus".into(), path(e.clone()));
                    }
                    if let Some(s) = &w.student {
                        defaults.insert("base".into(), path(s.clone()));
                    }
                    if let Some(t) = &w.teacher {
                        defaults.insert("kd_teacher".into(), path(t.clone()));
                    } else if let Some(e) = &w.endpoint_teacher {
                        // The endpoint `generate` sampled: it must also score prompts (vLLM,
                        // `distill serve`), with `kd_top_k` set in the table.
                        defaults.insert("kd_teacher".into(), e.url.clone().into());
                        if let Some(m) = &e.model {
                            defaults.insert("kd_teacher_model".into(), m.clone().into());
                        }
                        if let Some(k) = &e.api_key_env {
                            defaults.insert("kd_teacher_api_key_env".into(), k.clone().into());
                        }
                    }
                    defaults.insert("method".into(), "opd".into());
                    defaults.insert("out".into(), path(out.join("student-opd")));
                    (inputs, outputs) =
                        (&["corpus", "eval_corpus", "base", "kd_teacher"], &["out"]);
                }
                "generate" => {
                    if let Some(p) = &w.train_problems {
                        defaults.insert("problems".into(), path(p.clone()));
                    }
                    let remote = table.get("backend").and_then(|b| b.as_str()) == Some("openai");
                    if let (Some(m), false) = (&w.teacher, remote) {
                        defaults.insert("model".into(), path(m.clone()));
                    }
                    defaults.insert("out".into(), path(out.join("corpus/generated")));
                    (inputs, outputs) = (&["problems", "model"], &["out"]);
                }
                "compare" => {
                    // The exported file's label is its name (`student.q8_0`).
                    let export_label = w
                        .export
                        .as_ref()
                        .and_then(|g| g.file_stem().map(|s| s.to_string_lossy().into_owned()));
                    let candidates = [
                        (Some("teacher".to_string()), &w.teacher),
                        (Some("student".to_string()), &w.student),
                        (Some("student-opd".to_string()), &w.opd_student),
                        (export_label, &w.export),
                    ];
                    let models: Vec<toml::Value> = candidates
                        .iter()
                        .filter_map(|(_, m)| m.as_ref().map(|m| path(m.clone())))
                        .collect();
                    let labels: Vec<toml::Value> = candidates
                        .iter()
                        .filter_map(|(label, m)| {
                            Some(format!("{}={}", label.as_ref()?, m.as_ref()?.display()).into())
                        })
                        .collect();
                    defaults.insert("models".into(), toml::Value::Array(models));
                    defaults.insert("labels".into(), toml::Value::Array(labels));
                    if let Some(p) = w.eval_problems.clone().or(w.train_problems.clone()) {
                        defaults.insert("problems".into(), path(p));
                    }
                    defaults.insert("out".into(), path(out.join("report")));
                    (inputs, outputs) = (&["models", "problems"], &["out"]);
                }
                "export" => {
                    // The last student: the distilled one when the pipeline distils on-policy.
                    if let Some(m) = w.opd_student.as_ref().or(w.student.as_ref()) {
                        defaults.insert("model".into(), path(m.clone()));
                    }
                    let quant = table
                        .get("quant")
                        .and_then(|q| q.as_str())
                        .unwrap_or("q8_0")
                        .to_string();
                    defaults.insert(
                        "gguf".into(),
                        path(out.join(format!("export/student.{quant}.gguf"))),
                    );
                    (inputs, outputs) = (&["model"], &["gguf"]);
                }
                "import" => {
                    defaults.insert("output".into(), path(out.join("corpus/import")));
                    // Token counts in the student's tokens, so `[filter]`'s token limits and
                    // `stats` mean what `[train]` will see (0 without a tokenizer).
                    if let Some(base) = self.tables.get("train").and_then(|t| t.get("base")) {
                        defaults.insert("tokenizer".into(), base.clone());
                    }
                    (inputs, outputs) = (&["inputs"], &["output"]);
                }
                pass => {
                    if let Some(c) = &w.corpus {
                        defaults.insert("inputs".into(), toml::Value::Array(vec![path(c.clone())]));
                    }
                    defaults.insert("output".into(), path(out.join("corpus").join(pass)));
                    (inputs, outputs) = (&["inputs", "evals"], &["output"]);
                }
            }
            let local_generate = *name == "generate"
                && table.get("backend").and_then(|b| b.as_str()) != Some("openai");
            if matches!(*name, "teacher" | "train" | "opd" | "compare") || local_generate {
                defaults.extend(self.placement.clone());
            }
            let mut merged = defaults;
            merged.extend(table.clone());
            let argv = to_argv(name, command, &merged, &self.file)?;
            // A hub model (`owner/name`) is no file to wait for: the run fetches it before the
            // first stage. A path an earlier stage writes stays an input, whatever its shape.
            let mut stage_inputs = paths(&merged, inputs);
            stage_inputs.retain(|p| {
                let produced = stages
                    .iter()
                    .any(|s: &Stage| s.outputs.iter().any(|o| p.starts_with(o)));
                let hub_model = is_model_key(&merged, p) && crate::model_arg::hub_ref(p).is_some();
                // Datasets by name (`[import]`'s inputs, problem sets) are fetched by the
                // stage itself, as its command does.
                let hub_dataset = dataset_values(name, &merged).contains(p)
                    && crate::model_arg::dataset_ref(p).is_some();
                produced || !(hub_model || hub_dataset)
            });
            let stage = Stage {
                name,
                argv,
                inputs: stage_inputs,
                outputs: paths(&merged, outputs),
                resumable_with_flag: command == &["train"],
            };
            w.advance(name, &merged);
            stages.push(stage);
        }
        if stages.is_empty() {
            bail!("`{}` defines no stages", self.file.display());
        }
        Ok(stages)
    }

    /// Saves the pipeline file as given and every stage's resolved command beside the outputs.
    pub fn save_resolved(&self, stages: &[Stage]) -> anyhow::Result<()> {
        let copy = self.out.join("pipeline.toml");
        std::fs::write(&copy, &self.text)
            .with_context(|| format!("cannot write `{}`", copy.display()))?;
        let resolved: Vec<serde_json::Value> = stages
            .iter()
            .map(|s| serde_json::json!({ "stage": s.name, "argv": s.argv, "inputs": s.inputs, "outputs": s.outputs }))
            .collect();
        let path = self.out.join("pipeline.resolved.json");
        std::fs::write(&path, serde_json::to_string_pretty(&resolved)? + "\n")
            .with_context(|| format!("cannot write `{}`", path.display()))
    }
}

impl Stage {
    pub fn to_plan(&self) -> StagePlan<'_> {
        StagePlan {
            name: self.name,
            config: serde_json::json!({ "argv": self.argv }),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            run: Box::new(move |resume| {
                let mut argv = vec!["distill".to_string()];
                argv.extend(self.argv.iter().cloned());
                if resume == Resume::Continue && self.resumable_with_flag {
                    argv.push("--resume".into());
                }
                let cli = Cli::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("{e}"))?;
                crate::cli::dispatch(cli.command)?;
                // A stage stopped by Ctrl-C returns cleanly with partial output: leave it
                // marked running so the next `distill run` resumes it.
                if crate::interrupt::requested() {
                    anyhow::bail!("interrupted; run the pipeline again to resume");
                }
                Ok(())
            }),
        }
    }
}

/// What earlier stages produced, for the defaults of later ones.
#[derive(Default)]
struct Wiring {
    train_problems: Option<PathBuf>,
    eval_problems: Option<PathBuf>,
    solutions: Option<PathBuf>,
    teacher: Option<PathBuf>,
    corpus: Option<PathBuf>,
    eval_corpus: Option<PathBuf>,
    student: Option<PathBuf>,
    /// The student after on-policy distillation.
    opd_student: Option<PathBuf>,
    /// The last student exported to GGUF.
    export: Option<PathBuf>,
    /// The endpoint `generate` sampled from (`backend = "openai"`).
    endpoint_teacher: Option<EndpointTeacher>,
}

/// A teacher behind an OpenAI-compatible endpoint: its first base URL, model and key variable.
struct EndpointTeacher {
    url: String,
    model: Option<String>,
    api_key_env: Option<String>,
}

impl Wiring {
    fn advance(&mut self, stage: &str, t: &toml::Table) {
        let get = |k: &str| t.get(k).and_then(|v| v.as_str()).map(PathBuf::from);
        match stage {
            "problems" => {
                self.train_problems = get("out");
                self.solutions = get("solutions_corpus");
            }
            "eval_problems" => self.eval_problems = get("out"),
            "teacher" => self.teacher = get("out").map(|o| o.join("model")),
            "generate" => {
                self.corpus = get("out");
                self.teacher = self.teacher.take().or_else(|| get("model"));
                let text = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let first_url = match t.get("base_urls").or_else(|| t.get("base_url")) {
                    Some(toml::Value::Array(urls)) => urls.first().and_then(|u| u.as_str()),
                    Some(url) => url.as_str(),
                    None => None,
                };
                if text("backend").as_deref() == Some("openai") {
                    self.endpoint_teacher = first_url.map(|url| EndpointTeacher {
                        url: url.to_string(),
                        model: text("model_name"),
                        api_key_env: text("api_key_env"),
                    });
                }
            }
            "train" => self.student = get("out").map(|o| o.join("model")),
            "opd" => self.opd_student = get("out").map(|o| o.join("model")),
            "split" => {
                self.corpus = get("output").map(|o| o.join("train"));
                self.eval_corpus = get("output").map(|o| o.join("eval"));
            }
            "export" => self.export = get("gguf"),
            "compare" => {}
            _ => self.corpus = get("output"),
        }
    }
}

/// Whether a model value is served elsewhere rather than a path: `compare`'s `openai:NAME@URL`
/// models and an endpoint teacher's URL.
fn is_remote(value: &str) -> bool {
    value.starts_with("openai:") || distill_student::kd::is_endpoint(value)
}

/// The values of a stage's keys that may name hub datasets: `[import]`'s inputs, the problem
/// sets of `generate` and `compare`, `decontaminate`'s evaluation sets, `[train]`'s corpora.
fn dataset_values(stage: &str, t: &toml::Table) -> Vec<PathBuf> {
    let keys: &[&str] = match stage {
        "import" => &["inputs"],
        "generate" | "compare" => &["problems"],
        "decontaminate" => &["evals"],
        "train" => &["corpus", "eval_corpus"],
        _ => return Vec::new(),
    };
    paths(t, keys)
}

/// Keys whose values name models (local paths or hub models).
const MODEL_KEYS: [&str; 4] = ["base", "model", "models", "kd_teacher"];

/// Whether `path` is the value (or one of the values) of a model key of `t`.
fn is_model_key(t: &toml::Table, path: &Path) -> bool {
    MODEL_KEYS.iter().any(|key| match t.get(*key) {
        Some(toml::Value::String(s)) => Path::new(s) == path,
        Some(toml::Value::Array(items)) => items
            .iter()
            .any(|v| v.as_str().is_some_and(|s| Path::new(s) == path)),
        _ => false,
    })
}

fn paths(t: &toml::Table, keys: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for key in keys {
        match t.get(*key) {
            Some(toml::Value::String(s)) if !is_remote(s) => out.push(PathBuf::from(s)),
            Some(toml::Value::Array(items)) => out.extend(
                items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !is_remote(s))
                    .map(PathBuf::from),
            ),
            _ => {}
        }
    }
    out
}

/// The subcommand's arguments for a table, checking every key against its flags.
fn to_argv(
    stage: &str,
    command: &[&str],
    table: &toml::Table,
    file: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut cmd = Cli::command();
    for word in command {
        cmd = cmd
            .find_subcommand(word)
            .cloned()
            .with_context(|| format!("no subcommand `{word}`"))?;
    }
    let mut flags = Vec::new();
    let mut positionals = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == key.as_str());
        let Some(arg) = arg else {
            let known: Vec<String> = cmd
                .get_arguments()
                .filter(|a| a.get_id() != "help" && !a.is_global_set())
                .map(|a| a.get_id().to_string())
                .collect();
            let hint = closest(key, &known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            bail!(
                "unknown key `{key}` in table `[{stage}]` of `{}`{hint}",
                file.display()
            );
        };
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Option<_>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .with_context(|| format!("key `{key}` in table `[{stage}]` must be a string, number, boolean or array of them"))?;
        match arg.get_long() {
            None => positionals.extend(values),
            Some(long) => match value {
                toml::Value::Boolean(true) => flags.push(format!("--{long}")),
                toml::Value::Boolean(false) => {}
                _ => {
                    for v in values {
                        flags.push(format!("--{long}"));
                        flags.push(v);
                    }
                }
            },
        }
    }
    let mut argv: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    argv.extend(flags);
    if !positionals.is_empty() {
        argv.push("--".into());
        argv.extend(positionals);
    }
    // Parse once now so a bad value (not just a bad key) fails before any stage runs.
    let mut full = vec!["distill".to_string()];
    full.extend(argv.iter().cloned());
    Cli::try_parse_from(&full).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!(
            "in table `[{stage}]` of `{}`: {}",
            file.display(),
            first.trim_start_matches("error: ")
        )
    })?;
    Ok(argv)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The known key nearest to a typo (edit distance ≤ 3).
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    };
    known
        .iter()
        .map(|k| (distance(key, k), k.as_str()))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}
