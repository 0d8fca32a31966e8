//! The comparison report: `report.json` (every number, machine-readable) and `report.md` (a
//! table, the charts and a one-sentence summary; with GGUF files among the models, a laptop
//! table of what each quantization costs and keeps).
//!
//! `report.json` schema (version 1); a number that cannot be computed is `null`:
//!
//! | field | meaning |
//! |---|---|
//! | `schema_version` | `1` |
//! | `problems` | `{path, preset, count}`: the evaluation set |
//! | `protocol` | `{samples, k, temperature, top_p, max_new_tokens, seed, user_template, prefill}` |
//! | `teacher` | label of the first model |
//! | `models[]` | one object per model, teacher first (below) |
//! | `charts` | `{accuracy, reasoning_lengths, speed_size}`: PNG file names beside the report |
//!
//! Each `models[]` entry: `label`, `role` (`teacher`/`student`), `spec` (as given), `backend`
//! (`local`/`openai`), `parameters`, `bytes_on_disk`, `weights` (a GGUF file's type as llama.cpp
//! names it, `Q4_K_M`, or a folder's dtype, `bf16`), `gguf` (a GGUF file); the metrics of
//! [`super::metrics::Metrics`] (`problems`, `samples`, `scored_problems`, `pass_at_1`,
//! `pass_at_1_se`, `k`, `cons_at_k`, `agreement_with_teacher`, `mean_reasoning_tokens`,
//! `mean_completion_tokens`, `truncation_rate`); `pass_at_1_vs_teacher` (this pass@1 ÷ the
//! teacher's); `reasoning_tokens_method` (`tokenizer`/`byte-share`); `tokens_per_second`,
//! `generated_tokens`, `generate_seconds`, `load_seconds`; `peak_rss_bytes`,
//! `baseline_rss_bytes`, `peak_rss_method` (`vmhwm-reset`/`vmhwm-process`, see
//! [`super::memory`]); `cache` = `{dir, generated_now, cached, missing, cleared}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::memory::PeakMethod;
use super::metrics::{self, Metrics};
use super::run::{CompareConfig, ModelRun, ReasoningCount};

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub problems: ProblemsInfo,
    pub protocol: Protocol,
    pub teacher: String,
    /// The `--note` given to the comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub models: Vec<ModelReport>,
    pub charts: Charts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProblemsInfo {
    pub path: PathBuf,
    pub preset: Option<String>,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Protocol {
    pub samples: u32,
    pub k: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub user_template: String,
    pub prefill: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charts {
    pub accuracy: String,
    pub reasoning_lengths: String,
    pub speed_size: String,
}

impl Default for Charts {
    fn default() -> Self {
        Self {
            accuracy: "accuracy.png".into(),
            reasoning_lengths: "reasoning_lengths.png".into(),
            speed_size: "speed_size.png".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheInfo {
    pub dir: PathBuf,
    pub generated_now: u64,
    pub cached: u64,
    pub missing: u64,
    pub cleared: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelReport {
    pub label: String,
    pub role: String,
    pub spec: String,
    pub backend: String,
    pub parameters: Option<u64>,
    pub bytes_on_disk: Option<u64>,
    /// How the weights are stored: `Q4_K_M` (a GGUF file's type), `bf16` (a folder's dtype).
    #[serde(default)]
    pub weights: Option<String>,
    /// A GGUF file (what llama.cpp, ollama and LM Studio run).
    #[serde(default)]
    pub gguf: bool,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub pass_at_1_vs_teacher: Option<f64>,
    pub reasoning_tokens_method: ReasoningCount,
    pub tokens_per_second: Option<f64>,
    pub generated_tokens: u64,
    pub generate_seconds: f64,
    pub load_seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub baseline_rss_bytes: Option<u64>,
    pub peak_rss_method: Option<PeakMethod>,
    pub cache: CacheInfo,
}

/// The numbers of a comparison; `runs[0]` is the teacher.
pub fn build(config: &CompareConfig, runs: &[ModelRun]) -> Report {
    let teacher_majority = runs
        .first()
        .map(|t| metrics::majority_answers(&t.samples))
        .unwrap_or_default();
    let mut models: Vec<ModelReport> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| ModelReport {
            label: run.model.label.clone(),
            role: if i == 0 { "teacher" } else { "student" }.into(),
            spec: run.model.spec.clone(),
            backend: run.model.backend_kind().into(),
            parameters: run.model.parameters,
            bytes_on_disk: run.model.bytes_on_disk,
            weights: run.model.weights.clone(),
            gguf: run.model.gguf,
            metrics: metrics::compute(&run.samples, config.k, &teacher_majority),
            pass_at_1_vs_teacher: None,
            reasoning_tokens_method: run.reasoning_count,
            tokens_per_second: run.stats.tokens_per_second(),
            generated_tokens: run.stats.generated_tokens,
            generate_seconds: run.stats.generate_seconds,
            load_seconds: run.stats.load_seconds,
            peak_rss_bytes: run.stats.peak_rss_bytes,
            baseline_rss_bytes: run.stats.baseline_rss_bytes,
            peak_rss_method: run.stats.peak_method,
            cache: CacheInfo {
                dir: run.cache_dir.clone(),
                generated_now: run.generated_now,
                cached: run.cached,
                missing: run.missing,
                cleared: run.cleared,
            },
        })
        .collect();
    let teacher_pass = models.first().and_then(|m| m.metrics.pass_at_1);
    for m in &mut models {
        m.pass_at_1_vs_teacher = match (m.metrics.pass_at_1, teacher_pass) {
            (Some(p), Some(t)) if t > 0.0 => Some(p / t),
            _ => None,
        };
    }
    Report {
        schema_version: 1,
        problems: ProblemsInfo {
            path: config.problems.path.clone(),
            preset: config.problems.preset.map(|p| p.name().to_string()),
            count: config.problem_list.len(),
        },
        protocol: Protocol {
            samples: config.samples,
            k: config.k,
            temperature: config.sampling.temperature,
            top_p: config.sampling.top_p,
            max_new_tokens: config.sampling.max_new_tokens,
            seed: config.seed,
            user_template: config.prompt.user_template.clone(),
            prefill: config.prompt.prefill.clone(),
        },
        teacher: models.first().map(|m| m.label.clone()).unwrap_or_default(),
        note: config.note.clone(),
        models,
        charts: Charts::default(),
    }
}

/// What follows the name of model `index` in tables and charts: the teacher (index 0) is
/// marked, unless its label already says so.
pub fn role_suffix(index: usize, label: &str) -> &'static str {
    if index == 0 && label != "teacher" {
        " (teacher)"
    } else {
        ""
    }
}

/// `1.2M`, `437k`, `950`.
pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// `1.4 GiB`, `241 KiB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", units[unit])
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("–".into(), f)
}

/// The one-sentence summary: how much of the teacher's pass@1 each student recovers.
pub fn summary(report: &Report) -> String {
    let Some(teacher) = report.models.first() else {
        return "No models were evaluated.".into();
    };
    let problems = report.problems.count;
    let n = report.protocol.samples;
    let mut text = format!(
        "On {problems} held-out problems ({n} sample{} each), the teacher `{}` scores pass@1 {}",
        crate::plural(n as u64),
        teacher.label,
        pct(teacher.metrics.pass_at_1)
    );
    if let Some(se) = teacher.metrics.pass_at_1_se {
        let _ = write!(text, " ± {:.1}", 100.0 * se);
    }
    text.push('.');
    for s in report.models.iter().skip(1) {
        let _ = write!(
            text,
            " Student `{}` scores {}",
            s.label,
            pct(s.metrics.pass_at_1)
        );
        match (s.pass_at_1_vs_teacher, s.parameters, teacher.parameters) {
            (Some(r), Some(sp), Some(tp)) if sp > 0 => {
                let _ = write!(
                    text,
                    ", {:.0}% of the teacher's pass@1 with {:.1}× fewer parameters.",
                    100.0 * r,
                    tp as f64 / sp as f64
                );
            }
            (Some(r), _, _) => {
                let _ = write!(text, ", {:.0}% of the teacher's pass@1.", 100.0 * r);
            }
            (None, _, _) => text.push_str(
                " (no ratio to the teacher: the teacher solved nothing, so there is nothing to \
                 recover).",
            ),
        }
    }
    if teacher.metrics.pass_at_1 == Some(0.0) && report.models.len() == 1 {
        text.push_str(" The teacher solved none of the problems.");
    }
    text
}

/// When GGUF files are compared (a student exported with `distill export`), what running each on
/// a laptop costs and keeps: weights, bits per weight, file size, peak memory, speed and pass@1,
/// with pass@1 against the model of the same size stored with the most bits (the unquantized
/// reference). Nothing when no GGUF file is compared.
fn laptop_table(md: &mut String, report: &Report) {
    if !report.models.iter().any(|m| m.gguf) {
        return;
    }
    let bits = |m: &ModelReport| match (m.bytes_on_disk, m.parameters) {
        (Some(b), Some(p)) if p > 0 => Some(b as f64 * 8.0 / p as f64),
        _ => None,
    };
    let _ = writeln!(
        md,
        "\n### On a laptop (GGUF files run by llama.cpp, ollama, LM Studio)\n"
    );
    let _ = writeln!(
        md,
        "| model | weights | bits/weight | file | peak memory | tokens/s | pass@1 | vs reference |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|");
    let sizes: Vec<(Option<u64>, Option<f64>)> = report
        .models
        .iter()
        .map(|m| (m.parameters, bits(m)))
        .collect();
    for (i, m) in report.models.iter().enumerate() {
        if m.parameters.is_none() {
            continue;
        }
        let versus = match reference(&sizes, i) {
            Reference::Itself => "reference".to_string(),
            Reference::Row(j) => {
                let r = &report.models[j];
                match (m.metrics.pass_at_1, r.metrics.pass_at_1) {
                    (Some(v), Some(rv)) => {
                        format!("{:+.1} points vs `{}`", 100.0 * (v - rv), r.label)
                    }
                    _ => "n/a".into(),
                }
            }
            Reference::Several(n) => format!("n/a ({n} models of this size with the most bits)"),
            Reference::Unknown => "n/a".into(),
        };
        let _ = writeln!(
            md,
            "| **{}** | {} | {} | {} | {} | {} | {} | {versus} |",
            m.label,
            m.weights.as_deref().unwrap_or("n/a"),
            opt(bits(m), |v| format!("{v:.1}")),
            opt(m.bytes_on_disk, human_bytes),
            opt(m.peak_rss_bytes, human_bytes),
            opt(m.tokens_per_second, |v| format!("{v:.1}")),
            pct(m.metrics.pass_at_1),
        );
    }
}

/// What a laptop-table row is measured against.
#[derive(Debug, PartialEq)]
enum Reference {
    /// The row is the reference of its size.
    Itself,
    /// The row at this index.
    Row(usize),
    /// This many models of the row's parameter count share the most bits per weight: distinct
    /// models (an SFT and an on-policy student of one architecture), not quantizations of one
    /// another, so none is the reference.
    Several(usize),
    /// No model of the row's size has a known file size (no bits per weight to compare).
    Unknown,
}

/// The reference of row `i` among `(parameters, bits per weight)`: the one model of the same
/// parameter count stored with the most bits.
fn reference(sizes: &[(Option<u64>, Option<f64>)], i: usize) -> Reference {
    let same: Vec<usize> = (0..sizes.len())
        .filter(|&j| sizes[j].0 == sizes[i].0)
        .collect();
    let most = same
        .iter()
        .filter_map(|&j| sizes[j].1)
        .fold(f64::NEG_INFINITY, f64::max);
    let top: Vec<usize> = same
        .into_iter()
        .filter(|&j| sizes[j].1.is_some_and(|b| (b - most).abs() < 0.05))
        .collect();
    match top.as_slice() {
        [j] if *j == i => Reference::Itself,
        [j] => Reference::Row(*j),
        [] => Reference::Unknown,
        _ => Reference::Several(top.len()),
    }
}

/// The markdown report.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let p = &report.protocol;
    let _ = writeln!(md, "# distill compare\n");
    let _ = writeln!(md, "{}\n", summary(report));
    if let Some(note) = &report.note {
        let _ = writeln!(md, "{note}\n");
    }
    let _ = writeln!(
        md,
        "| model | params | size | pass@1 ± se | cons@{} | agrees with teacher | reasoning tokens | \
         truncated | tokens/s | peak memory |",
        p.k
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, m) in report.models.iter().enumerate() {
        let name = format!("**{}**{}", m.label, role_suffix(i, &m.label));
        let pass = match (m.metrics.pass_at_1, m.metrics.pass_at_1_se) {
            (Some(v), Some(se)) => format!("{:.1}% ± {:.1}", 100.0 * v, 100.0 * se),
            (v, _) => pct(v),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {pass} | {} | {} | {} | {} | {} | {} |",
            opt(m.parameters, human_count),
            opt(m.bytes_on_disk, human_bytes),
            pct(m.metrics.cons_at_k),
            pct(m.metrics.agreement_with_teacher),
            opt(m.metrics.mean_reasoning_tokens, |v| format!("{v:.0}")),
            pct(m.metrics.truncation_rate),
            opt(m.tokens_per_second, |v| format!("{v:.1}")),
            opt(m.peak_rss_bytes, human_bytes),
        );
    }
    laptop_table(&mut md, report);
    let c = &report.charts;
    let _ = writeln!(md, "\n![pass@1 and cons@k]({})\n", c.accuracy);
    let _ = writeln!(md, "![reasoning lengths]({})\n", c.reasoning_lengths);
    let _ = writeln!(md, "![speed against size]({})\n", c.speed_size);
    let _ = writeln!(md, "## How these numbers were made\n");
    let _ = writeln!(
        md,
        "- {} problems from `{}`; {} samples per problem at temperature {}, top-p {}, at most {} \
         new tokens, seed {}; the prompt `{}`, {}.",
        report.problems.count,
        report.problems.path.display(),
        p.samples,
        p.temperature,
        p.top_p,
        p.max_new_tokens,
        p.seed,
        p.user_template.replace('\n', "\\n"),
        match p.prefill.as_str() {
            // `--prefill ""`: an instruct model that does not reason in a think block.
            "" => "the assistant turn not prefilled".to_string(),
            prefill => format!(
                "the assistant turn prefilled with `{}` (R1's protocol)",
                prefill.replace('\n', "\\n")
            ),
        },
    );
    let _ = writeln!(
        md,
        "- **pass@1**: mean over problems of the share of correct samples; ± one standard error \
         across problems. **cons@{k}**: majority vote over the first {k} samples' answers \
         (equivalent answers vote together, ties go to the answer seen first). **Agrees with \
         teacher**: share of samples whose answer matches the teacher's majority answer.",
        k = p.k
    );
    let _ = writeln!(
        md,
        "- **Reasoning tokens**: mean tokens inside `<think>`. **Truncated**: share of samples \
         cut at the token limit. **Tokens/s**: generated tokens over generation wall time (all \
         samples in flight together, model loading excluded). **Peak memory**: the process's \
         resident-set high-water mark (`VmHWM`), reset before the model loads.",
    );
    let cached: Vec<&str> = report
        .models
        .iter()
        .filter(|m| m.cache.generated_now == 0)
        .map(|m| m.label.as_str())
        .collect();
    if !cached.is_empty() {
        let _ = writeln!(
            md,
            "- Generations of {} came from the cache (`generations/`); their speed and memory \
             are those measured when they were generated.",
            cached
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let missing: u64 = report.models.iter().map(|m| m.cache.missing).sum();
    if missing > 0 {
        let what = if missing == 1 {
            "sample is missing (its request failed)"
        } else {
            "samples are missing (their requests failed)"
        };
        let _ = writeln!(md, "- {missing} {what}; the metrics use the rest.");
    }
    md
}

/// Writes `report.json` and `report.md` into `out`.
pub fn write(out: &Path, report: &Report) -> anyhow::Result<()> {
    let json = out.join(REPORT_JSON);
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(&json, text + "\n")
        .with_context(|| format!("cannot write `{}`", json.display()))?;
    let md = out.join(REPORT_MD);
    std::fs::write(&md, markdown(report))
        .with_context(|| format!("cannot write `{}`", md.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f32 student and its Q8_0 export: the export is measured against the student. Two
    /// f32 students of one architecture (SFT and on-policy) are two models: an export beside
    /// them has no single reference, and neither is the other's.
    #[test]
    fn the_laptop_reference_is_the_one_model_with_the_most_bits() {
        let (f32, q8, teacher) = (Some(32.0), Some(8.5), Some(6.2));
        let one = [(Some(10), f32), (Some(10), q8), (Some(20), teacher)];
        assert_eq!(reference(&one, 0), Reference::Itself);
        assert_eq!(reference(&one, 1), Reference::Row(0));
        assert_eq!(reference(&one, 2), Reference::Itself);
        let two = [
            (Some(20), teacher),
            (Some(10), f32),
            (Some(10), f32),
            (Some(10), q8),
        ];
        assert_eq!(reference(&two, 0), Reference::Itself);
        assert_eq!(reference(&two, 1), Reference::Several(2));
        assert_eq!(reference(&two, 2), Reference::Several(2));
        assert_eq!(reference(&two, 3), Reference::Several(2));
        assert_eq!(reference(&[(Some(10), None)], 0), Reference::Unknown);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(437_000), "437k");
        assert_eq!(human_count(1_540_000_000), "1.5B");
        assert_eq!(human_count(950), "950");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(246_720), "241 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
