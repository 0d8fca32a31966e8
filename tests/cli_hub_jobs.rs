//! Hub models in jobs, against the stand-in hub of `hub_support`: a pipeline fetches its hub
//! models before the first stage (and a dry run checks them from the cache), and a TRL job
//! fetches only the config and tokenizer (TRL fetches the weights on the cluster).

mod hub_support;
use hub_support::*;

use std::path::{Path, PathBuf};

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};

#[test]
fn a_pipeline_fetches_its_hub_models_before_the_first_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let server = Server::start(vec![(
        "tiny/llama",
        repo('e', &[("tiny-llama.gguf", fixture("tiny-llama.gguf"))]),
    )]);
    let out = tmp.path().join("run");
    let corpus = write_corpus(tmp.path());
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nout = {out:?}\n\n[problems]\ncount = 2\nseed = 1\n\n[train]\n\
             base = \"tiny/llama\"\ncorpus = {corpus:?}\nmax_seq_len = 128\nmax_steps = 1\n\
             micro_batch_size = 2\neval_fraction = 0.0\nquiet = true\n",
            out = out.display().to_string(),
            corpus = corpus.display().to_string(),
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--threads", "1", "run", pipeline.to_str().unwrap()];
        args.extend_from_slice(extra);
        distill(&home, &server.endpoint, &[], &args)
    };

    // A dry run downloads nothing and says so.
    let (stdout, _) = succeed(run(&["--dry-run"]));
    assert!(
        stdout.contains(
            "stage `train`: `base` `tiny/llama` not checked: no such local path, and no hub \
             model of that name in the Hugging Face cache yet"
        ),
        "{stdout}"
    );
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    let (_, stderr) = succeed(run(&[]));
    let download = stderr.find("Downloading `tiny/llama`").expect(&stderr);
    let first_stage = stderr.find("[1/2] problems: running").expect(&stderr);
    assert!(download < first_stage, "{stderr}");
    assert_eq!(
        stderr.matches("Downloaded 1 file of `tiny/llama`").count(),
        1,
        "{stderr}"
    );
    assert!(out.join("student/model/config.json").is_file());
    let config = std::fs::read_to_string(out.join("student/train_config.toml")).unwrap();
    assert!(config.contains("base = \"tiny/llama\""), "{config}");

    // Cached now: the dry run checks it from the cache.
    let (stdout, _) = succeed(run(&["--dry-run"]));
    assert!(!stdout.contains("not checked"), "{stdout}");
}

/// Four short verified samples, as a corpus folder.
fn write_corpus(dir: &Path) -> PathBuf {
    let records: Vec<Record> = (0..4)
        .map(|i| {
            let prompt = format!("What is {i} + 2?");
            let reasoning = format!("{i} + 2 = {}", i + 2);
            let completion = format!("\\boxed{{{}}}", i + 2);
            Record {
                final_answer: Some((i + 2).to_string()),
                reference_answer: Some((i + 2).to_string()),
                correct: Some(true),
                teacher: "test".into(),
                seed: i,
                ..Record::sample(&format!("q{i}"), 0, &prompt, &reasoning, &completion)
            }
        })
        .collect();
    let out = dir.join("corpus");
    let mut w = ShardWriter::create(&out, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&records).unwrap())
        .unwrap();
    w.finish().unwrap();
    out
}

/// A TRL job trains on the cluster, where TRL fetches the weights: distill fetches only what it
/// reads (config, generation config, tokenizer), also offline from the cache, and the recipe
/// names the hub model.
#[test]
fn a_trl_job_fetches_the_config_and_tokenizer_only() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let corpus = write_corpus(tmp.path());
    // A tiny model with a tokenizer to serve: distill trains one from scratch for one step.
    let base = tmp.path().join("base");
    let (_, _) = succeed(distill(
        &home,
        "http://127.0.0.1:9",
        &[],
        &[
            "--threads",
            "1",
            "train",
            "--from-scratch",
            "--quiet",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            base.to_str().unwrap(),
            "--vocab-size",
            "60",
            "--hidden-size",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--intermediate-size",
            "32",
            "--max-seq-len",
            "128",
            "--max-steps",
            "1",
        ],
    ));
    let model = base.join("model");
    let files: Vec<(&str, PathBuf)> = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ]
    .into_iter()
    .map(|f| (f, model.join(f)))
    .collect();
    let server = Server::start(vec![("tiny/student", repo('f', &files))]);
    let job = tmp.path().join("job");
    let args = [
        "train",
        "--engine",
        "trl",
        "--dry-run",
        "--quiet",
        "--base",
        "tiny/student",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        job.to_str().unwrap(),
        "--max-seq-len",
        "128",
    ];
    succeed(distill(&home, &server.endpoint, &[], &args));
    assert!(server.requests_for("model.safetensors").is_empty());
    assert!(!server.requests_for("tokenizer.json").is_empty());
    let snapshot = home
        .join("hub/models--tiny--student/snapshots")
        .join("f".repeat(40));
    assert_eq!(
        files_under(&snapshot),
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let recipe = std::fs::read_to_string(job.join("recipe.yaml")).unwrap();
    assert!(
        recipe.contains("\nmodel_name_or_path: \"tiny/student\"\n"),
        "{recipe}"
    );
    // Offline, the cache holds all the job needs.
    succeed(distill(
        &home,
        &server.endpoint,
        &[("HF_HUB_OFFLINE", "1")],
        &args,
    ));
    assert_eq!(server.requests_for("model.safetensors").len(), 0);
}
