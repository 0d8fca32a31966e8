//! `distill generate` end to end on the tiny GGUF fixture: a run killed with SIGKILL (or stopped
//! with Ctrl-C) and resumed yields the same corpus, row for row, as an uninterrupted run at a
//! different batch size, also when its shards closed by age rather than size; a different
//! config is refused by name; bad input fails before any work.

mod common;
use common::run_ok;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distill_corpus::record::{records_from_batch, Record};
use distill_corpus::shards::{Manifest, ShardReader};

const PROBLEMS: usize = 40;
const SAMPLES: usize = 2;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill"))
}

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-llama.gguf")
}

fn write_problems(dir: &Path) -> PathBuf {
    let path = dir.join("problems.jsonl");
    let lines: Vec<String> = (0..PROBLEMS)
        .map(|i| {
            serde_json::json!({
                "id": format!("q/{i}"),
                "problem": format!("Tom has {i} apples and buys {} more. How many now?", i % 7),
                "answer": (i + i % 7).to_string(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// The generate command; sampled (T = 0.9) so the check covers per-sample random streams.
fn generate(problems: &Path, out: &Path, batch: usize) -> Command {
    generate_sharded(problems, out, batch, &["--shard-rows", "3"])
}

/// [`generate`] with its own shard settings.
fn generate_sharded(problems: &Path, out: &Path, batch: usize, shards: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("--threads").arg("1").arg("generate");
    cmd.arg("--problems").arg(problems);
    cmd.arg("--out").arg(out);
    cmd.arg("--model").arg(model());
    cmd.args(["--samples", &SAMPLES.to_string(), "--seed", "7"]);
    cmd.args(["--temperature", "0.9", "--max-new-tokens", "48"]);
    cmd.args(shards).args(["--batch", &batch.to_string()]);
    cmd
}

fn rows(dir: &Path) -> Vec<Record> {
    let reader = ShardReader::open(&[dir.to_path_buf()]).unwrap();
    let mut rows = Vec::new();
    for batch in reader.batches() {
        rows.extend(records_from_batch(&batch.unwrap()).unwrap());
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

fn finished_rows(dir: &Path) -> u64 {
    Manifest::read(dir).ok().flatten().map_or(0, |m| m.rows())
}

/// Starts a run and interrupts it (`signal`: `KILL` or `INT`) once a shard is finished.
fn interrupted_run(problems: &Path, out: &Path, signal: &str) -> std::process::ExitStatus {
    interrupted(&mut generate(problems, out, 1), out, signal)
}

/// Starts `command` and interrupts it with `signal` once a shard in `out` is finished.
fn interrupted(command: &mut Command, out: &Path, signal: &str) -> std::process::ExitStatus {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while finished_rows(out) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no shard appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait().unwrap()
}

fn assert_resumes_to(reference: &[Record], problems: &Path, out: &Path) {
    let partial = finished_rows(out) as usize;
    assert!(
        partial > 0 && partial < PROBLEMS * SAMPLES,
        "interrupted with {partial} rows: not mid-way"
    );
    let resumed = run_ok(&mut generate(problems, out, 1));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        stderr.contains(&format!("({partial} already done)")),
        "{stderr}"
    );
    let got = rows(out);
    assert_eq!(got.len(), reference.len());
    for (a, b) in got.iter().zip(reference) {
        assert_eq!(a, b, "row {}", a.id);
    }
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let full = tmp.path().join("full");
    run_ok(&mut generate(&problems, &full, 8));
    let reference = rows(&full);
    assert_eq!(reference.len(), PROBLEMS * SAMPLES);
    let ids: std::collections::HashSet<_> = reference.iter().map(|r| &r.id).collect();
    assert_eq!(ids.len(), reference.len(), "every sample exactly once");
    let r = &reference[0];
    assert_eq!(r.teacher, "tiny-llama.gguf");
    assert_eq!(r.temperature, 0.9);
    assert!(r.messages[0].content.ends_with("within \\boxed{}."));
    assert!(["stop", "length"].contains(&r.finish_reason.as_str()));
    assert!(r.correct.is_some(), "a reference answer gives a verdict");
    let distinct: std::collections::HashSet<_> = reference.iter().map(|r| &r.reasoning).collect();
    assert!(distinct.len() > reference.len() / 2, "samples differ");
    // The local backend makes no remote attempts: the manifest's counts are all zero.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("generation.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["errors"]["total"], 0);
    assert_eq!(
        manifest["errors"]["failed_attempts"],
        serde_json::json!({"http_429": 0, "http_5xx": 0, "timeout": 0, "connection": 0,
            "malformed": 0, "http_4xx": 0, "auth": 0})
    );

    // Rerunning a finished corpus does nothing.
    let again = run_ok(&mut generate(&problems, &full, 8));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"));
    assert_eq!(rows(&full), reference);

    // SIGKILL after the first shard, then resume (at batch 1: batch size must not matter).
    let killed = tmp.path().join("killed");
    let status = interrupted_run(&problems, &killed, "KILL");
    assert!(!status.success());
    assert_resumes_to(&reference, &problems, &killed);

    // Ctrl-C: flushes complete rows into a final shard and exits with an error message.
    let stopped = tmp.path().join("stopped");
    let status = interrupted_run(&problems, &stopped, "INT");
    assert!(!status.success(), "an interrupted run is not a success");
    assert!(!std::fs::read_dir(&stopped).unwrap().any(|e| e
        .unwrap()
        .path()
        .to_string_lossy()
        .ends_with(".tmp")));
    assert_resumes_to(&reference, &problems, &stopped);

    // Shards far larger than the run, closed by age (`--shard-minutes`, here 0.15 s): a
    // SIGKILL once the first has closed keeps its rows, and the run resumes from them.
    let aged = tmp.path().join("aged");
    let shards = ["--shard-rows", "1000", "--shard-minutes", "0.0025"];
    let status = interrupted(
        &mut generate_sharded(&problems, &aged, 1, &shards),
        &aged,
        "KILL",
    );
    assert!(!status.success());
    assert_resumes_to(&reference, &problems, &aged);
}

#[test]
fn different_config_is_refused_by_name_and_force_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let limit = ["--limit", "4"];
    run_ok(generate(&problems, &out, 4).args(limit));
    let refused = generate(&problems, &out, 4)
        .args(limit)
        .args(["--top-p", "0.5", "--top-k", "5"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`top_k`") && stderr.contains("`top_p`") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!stderr.contains("`temperature`"), "{stderr}");
    // More samples or problems are not a different config: they extend the corpus.
    run_ok(generate(&problems, &out, 4).args(["--limit", "6"]));
    assert_eq!(rows(&out).len(), 6 * SAMPLES);
    run_ok(
        generate(&problems, &out, 4)
            .args(limit)
            .args(["--top-p", "0.5", "--force"]),
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 4 * SAMPLES);
    assert!(rows.iter().all(|r| r.top_p == 0.5));
}

#[test]
fn bad_input_fails_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let out = tmp.path().join("out");
    let fail = |cmd: &mut Command, needle: &str| {
        let o = cmd.output().unwrap();
        assert!(!o.status.success());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        assert!(!out.exists(), "nothing is written on bad input");
    };
    fail(
        &mut generate(&tmp.path().join("missing.jsonl"), &out, 1),
        "missing.jsonl",
    );
    fail(
        generate(&problems, &out, 1).args(["--prompt-col", "question_text"]),
        "question_text",
    );
    fail(
        generate(&problems, &out, 1).arg("--kv-cache-gib=-1"),
        "`--kv-cache-gib` must be a size in GiB",
    );
    fail(
        generate(&problems, &out, 1).arg("--shard-minutes=-1"),
        "`shard_minutes` must be a number of minutes",
    );
    let mut no_model = bin();
    no_model.args(["generate", "--model", "no/such.gguf", "--out"]);
    no_model.arg(&out).arg("--problems").arg(&problems);
    fail(&mut no_model, "no/such.gguf");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"problem\": \"fine\"}\nnot json\n").unwrap();
    fail(&mut generate(&bad, &out, 1), "bad.jsonl");
    // A server asked to require a key the environment does not hold stops before loading.
    let mut serve = bin();
    serve.arg("serve").arg(model()).args(["--port", "0"]);
    serve.args(["--api-key-env", "DISTILL_TEST_NO_SUCH_KEY"]);
    serve.env_remove("DISTILL_TEST_NO_SUCH_KEY");
    let o = serve.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("`DISTILL_TEST_NO_SUCH_KEY`"), "{stderr}");
    assert!(!stderr.contains("Loading"), "{stderr}");
}

/// `--logprobs K` stores the teacher's top-K log-probabilities of every generated token
/// beside the sample, without changing the sample; the row's tokens decode to its text;
/// adding the option to an existing corpus is a different config; `corpus` passes keep the
/// columns.
#[test]
fn logprobs_are_stored_beside_the_samples() {
    use distill_corpus::logprobs;
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path());
    let (plain, with) = (tmp.path().join("plain"), tmp.path().join("with"));
    let limit = ["--limit", "5"];
    run_ok(generate(&problems, &plain, 4).args(limit));
    run_ok(
        generate(&problems, &with, 4)
            .args(limit)
            .args(["--logprobs", "3"]),
    );
    assert_eq!(rows(&plain), rows(&with), "the samples do not change");
    let reader = ShardReader::open(std::slice::from_ref(&with)).unwrap();
    assert!(logprobs::present(reader.schema()));
    assert!(!logprobs::present(
        ShardReader::open(std::slice::from_ref(&plain))
            .unwrap()
            .schema()
    ));
    let tokenizer = distill_models::Checkpoint::open(&model())
        .unwrap()
        .tokenizer()
        .unwrap();
    let mut checked = 0;
    for batch in reader.batches() {
        let batch = batch.unwrap();
        let records = records_from_batch(&batch).unwrap();
        for (record, lp) in records.iter().zip(logprobs::read(&batch).unwrap()) {
            let lp = lp.expect("every local sample has log-probabilities");
            assert_eq!(lp.k(), 3);
            assert_eq!(lp.len(), record.completion_tokens as usize);
            let text = tokenizer.decode(lp.token_ids(), false).unwrap();
            let assistant = &record.messages.last().unwrap().content;
            assert!(
                format!("<think>\n{text}").starts_with(assistant.trim_end())
                    || text.contains(record.completion.trim()),
                "{text:?} vs {assistant:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * SAMPLES);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(with.join("generation.json")).unwrap())
            .unwrap();
    assert_eq!(report["config"]["logprobs"], 3);
    assert!(report["last_run"]["logprob_tokens"].as_u64().unwrap() > 0);
    let refused = generate(&problems, &plain, 4)
        .args(limit)
        .args(["--logprobs", "3"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`logprobs`"));
    // A curation pass carries the columns through.
    let filtered = tmp.path().join("filtered");
    run_ok(
        bin()
            .args(["corpus", "filter"])
            .arg(&with)
            .arg("-o")
            .arg(&filtered),
    );
    let reader = ShardReader::open(&[filtered]).unwrap();
    assert!(logprobs::present(reader.schema()));
}

/// Samples end at the model's context (vLLM's `max_model_len`): with the 128-position Qwen3
/// fixture (YaRN, 32 × 4) a prompt that fills it is a failed sample, and the command's one-line
/// error gives the reason; the other samples are still written.
#[test]
fn a_prompt_longer_than_the_context_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems.jsonl");
    let lines = [
        serde_json::json!({"id": "short", "problem": "2+2?", "answer": "4"}),
        serde_json::json!({"id": "long", "problem": "Tom has apples. ".repeat(12), "answer": "1"}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&problems, text.join("\n")).unwrap();
    let out = dir.path().join("out");
    let model = model().with_file_name("tiny-qwen3.gguf");
    let output = bin()
        .args(["--threads", "1", "generate", "--user-template", "{problem}"])
        .args([
            "--prefill",
            "",
            "--max-new-tokens",
            "1000",
            "--temperature",
            "0",
        ])
        .arg("--problems")
        .arg(&problems)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr.lines().last().unwrap();
    assert!(
        error.contains("1 sample failed (the last, ")
            && error.contains("leaves no room to generate in the model's context of 128 positions")
            && error.ends_with(
                "a rerun would fail them again: drop those problems or change the settings"
            ),
        "{stderr}"
    );
    let written = rows(&out);
    assert_eq!(written.len(), 1, "{stderr}");
    let short = &written[0];
    assert!(short.prompt.starts_with("2+2?"), "{short:?}");
    assert!(
        short.finish_reason == "length" && short.prompt_tokens + short.completion_tokens == 128
            || short.finish_reason == "stop",
        "{short:?}"
    );
}

/// The warning before a run whose sequences could outgrow the KV cache counts the prompt's
/// positions too: two samples of a long problem with 2 new tokens each need ~1,600 positions
/// apiece, more than a 1 MiB cache (~2,000 positions) holds for both, and the run does pause
/// one (the warning was right); with the prompt left out it said nothing.
#[test]
fn the_kv_cache_warning_counts_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("long.jsonl");
    let problem = vec!["word"; 300].join(" ");
    std::fs::write(
        &problems,
        serde_json::json!({"prompt": problem, "reference_answer": "1"}).to_string(),
    )
    .unwrap();
    let out = bin()
        .args(["--threads", "1", "generate", "--problems"])
        .arg(&problems)
        .arg("--model")
        .arg(model())
        .args(["--max-new-tokens", "2", "--samples", "2", "--batch", "2"])
        .args(["--kv-cache-gib", "0.001", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: 2 sequences of up to "))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    let positions: usize = warning["warning: 2 sequences of up to ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The byte-level tokenizer: ~1,500 prompt tokens with the template, plus the 2 new ones.
    assert!((1500..1700).contains(&positions), "{warning}");
    assert!(stderr.contains("The KV cache was full"), "{stderr}");
}
