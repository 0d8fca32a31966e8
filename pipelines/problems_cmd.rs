//! `distill problems`: writes a seeded synthetic problem set (the built-in arithmetic word
//! problems) as jsonl, and optionally its worked solutions as a corpus, which is what the demo
//! uses to bootstrap a small teacher from scratch.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use distill_corpus::problems::Problem;
use distill_corpus::record::{conversation, record_id, records_to_batch, schema, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_corpus::synthetic::ArithmeticTask;

/// The user message used when the problems are shown to a model; `{problem}` is replaced.
pub const DEFAULT_USER_TEMPLATE: &str = distill_teacher::generate::R1_USER_TEMPLATE;

#[derive(Debug, clap::Args)]
pub struct ProblemsArgs {
    /// How many problems to write.
    #[arg(long)]
    pub count: usize,
    /// Seed of the generator; the same seed gives the same problems.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Difficulty level (0 = the demo's 2–3 operations on values ≤ 20; 1 = 2–3 operations on
    /// values ≤ 99; higher levels add steps and larger values).
    #[arg(long, default_value_t = 1)]
    pub difficulty: u32,
    /// Output `.jsonl` file: `id`, `source`, `prompt`, `answer`, `solution` per line.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the worked solutions as a corpus folder (the record schema, one correct
    /// sample per problem), for bootstrapping a teacher.
    #[arg(long)]
    pub solutions_corpus: Option<PathBuf>,
    /// User message template of the solutions corpus; `{problem}` is replaced. Use the same
    /// template as `distill generate --user-template` so the teacher sees the prompts it learned.
    #[arg(long, default_value = DEFAULT_USER_TEMPLATE)]
    pub user_template: String,
}

pub fn problems(args: ProblemsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "`--count` must be at least 1");
    anyhow::ensure!(
        args.user_template.contains("{problem}"),
        "`--user-template` must contain `{{problem}}`"
    );
    let task = ArithmeticTask::with_difficulty(args.difficulty);
    let problems = task.generate(args.count, args.seed);
    write_jsonl(&args.out, &problems)?;
    if let Some(dir) = &args.solutions_corpus {
        write_solutions(dir, &problems, &args.user_template)?;
    }
    println!(
        "wrote {} problems to {}{}",
        problems.len(),
        args.out.display(),
        args.solutions_corpus
            .as_ref()
            .map(|d| format!(" and their worked solutions to {}", d.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_jsonl(path: &std::path::Path, problems: &[Problem]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot write `{}`", tmp.display()))?,
    );
    for p in problems {
        let line = serde_json::json!({
            "id": p.id,
            "source": p.source,
            "prompt": p.prompt,
            "answer": p.reference_answer,
            "solution": p.solution,
        });
        writeln!(file, "{line}").with_context(|| format!("cannot write `{}`", tmp.display()))?;
    }
    file.flush()
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))
}

/// Splits a worked solution into reasoning (the steps) and completion (the final sentence with
/// the boxed answer), the shape a teacher's `<think>` trace has.
fn split_solution(solution: &str) -> (String, String) {
    match solution.rfind("The answer is") {
        Some(i) => (
            solution[..i].trim().to_string(),
            solution[i..].trim().to_string(),
        ),
        None => (String::new(), solution.trim().to_string()),
    }
}

fn write_solutions(
    dir: &std::path::Path,
    problems: &[Problem],
    template: &str,
) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot replace `{}`", dir.display()))?;
    }
    let mut writer = ShardWriter::create(dir, schema(), WriterOptions::default())?;
    for chunk in problems.chunks(4096) {
        let records: Vec<Record> = chunk
            .iter()
            .map(|p| {
                let prompt = template.replace("{problem}", &p.prompt);
                let (reasoning, completion) =
                    split_solution(p.solution.as_deref().unwrap_or_default());
                Record {
                    id: record_id(&p.id, 0),
                    problem_id: p.id.clone(),
                    sample_index: 0,
                    source: p.source.clone(),
                    messages: conversation(&prompt, &reasoning, &completion),
                    prompt,
                    reasoning,
                    completion,
                    final_answer: p.reference_answer.clone(),
                    reference_answer: p.reference_answer.clone(),
                    correct: p.reference_answer.as_ref().map(|_| true),
                    finish_reason: "stop".into(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    teacher: "worked-solution".into(),
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: 0,
                }
            })
            .collect();
        writer.write(&records_to_batch(&records)?)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solutions_split_into_steps_and_answer() {
        let (r, c) = split_solution("12 + 5 = 17. 17 - 3 = 14. The answer is \\boxed{14}.");
        assert_eq!(r, "12 + 5 = 17. 17 - 3 = 14.");
        assert_eq!(c, "The answer is \\boxed{14}.");
    }
}
