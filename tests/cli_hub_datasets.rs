//! Datasets by name (`distill corpus import owner/name[/PATH]`) against the stand-in hub on
//! 127.0.0.1 (`/api/datasets/{repo}/revision/{rev}`, `/datasets/{repo}/resolve/{rev}/{file}`):
//! the data files land in the standard cache layout (`datasets--owner--name`), only those under
//! the path asked for; a dataset whose configs are folders must be told which; a rerun works
//! with the hub gone (`HF_HUB_OFFLINE=1`); an unknown dataset is a one-line error.

mod hub_support;
use hub_support::*;

use std::path::{Path, PathBuf};

use distill_corpus::record::{records_from_batch, Record};
use distill_corpus::shards::ShardReader;

fn import_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/tests/fixtures/import")
        .join(name)
}

fn records(dir: &Path) -> Vec<Record> {
    let reader = ShardReader::open(&[dir.to_path_buf()]).unwrap();
    reader
        .batches()
        .flat_map(|b| records_from_batch(&b.unwrap()).unwrap())
        .collect()
}

#[test]
fn a_hub_dataset_is_fetched_by_folder_and_imported_offline_later() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let stratos = import_fixture("bespoke-stratos.parquet");
    let mixture = import_fixture("mixture-of-thoughts.parquet");
    let mut server = Server::start(vec![
        (
            "datasets/bespokelabs/Bespoke-Stratos-17k",
            repo(
                'b',
                &[
                    ("README.md", stratos.clone()),
                    ("data/train-00000-of-00001.parquet", stratos.clone()),
                ],
            ),
        ),
        (
            "datasets/open-r1/Mixture-of-Thoughts",
            repo(
                'c',
                &[
                    ("README.md", mixture.clone()),
                    ("all/train-00000-of-00001.parquet", mixture.clone()),
                    ("math/train-00000-of-00001.parquet", mixture.clone()),
                    ("code/train-00000-of-00001.parquet", stratos.clone()),
                ],
            ),
        ),
    ]);
    let out = tmp.path().join("stratos");
    let args = [
        "corpus",
        "import",
        "bespokelabs/Bespoke-Stratos-17k",
        "-o",
        out.to_str().unwrap(),
        "--system",
        "drop",
    ];
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert!(
        stdout.contains("dataset `bespokelabs/Bespoke-Stratos-17k` at commit bbbbbbbbbbbb: 1 file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("import: 3 rows from 1 file, 2 samples"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Downloaded 1 file of dataset `bespokelabs/Bespoke-Stratos-17k`"),
        "{stderr}"
    );
    // `huggingface_hub`'s layout for datasets, only the data file fetched (not the README).
    let snapshot = home
        .join("hub/datasets--bespokelabs--Bespoke-Stratos-17k/snapshots")
        .join("b".repeat(40));
    assert_eq!(files_under(&snapshot), ["data"]);
    assert!(is_blob_link(
        &snapshot.join("data/train-00000-of-00001.parquet")
    ));
    let rows = records(&out);
    assert_eq!(rows.len(), 2);
    // Rows that name no source take the dataset's name.
    assert_eq!(rows[0].source, "bespokelabs/Bespoke-Stratos-17k");
    assert!(rows[0]
        .problem_id
        .starts_with("bespokelabs/Bespoke-Stratos-17k-"));

    // An output in the way fails before the hub is asked anything.
    let asked = server.seen().len();
    let err = one_line_error(distill(&home, &server.endpoint, &[], &args));
    assert!(
        err.contains("already exists (`--overwrite` replaces it)"),
        "{err}"
    );
    assert_eq!(server.seen().len(), asked);

    // Configs as folders: `all` repeats the others, so the user names one.
    let mixed = tmp.path().join("mixed");
    let args = [
        "corpus",
        "import",
        "open-r1/Mixture-of-Thoughts",
        "-o",
        mixed.to_str().unwrap(),
    ];
    let err = one_line_error(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(
        err,
        "error: dataset `open-r1/Mixture-of-Thoughts` has data files in several folders (all, \
         code, math); name one as `open-r1/Mixture-of-Thoughts/FOLDER`"
    );
    let args = [
        "corpus",
        "import",
        "open-r1/Mixture-of-Thoughts/math",
        "-o",
        mixed.to_str().unwrap(),
    ];
    let (stdout, _) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert!(
        stdout.contains("import: 4 rows from 1 file, 3 samples"),
        "{stdout}"
    );
    let cached = home
        .join("hub/datasets--open-r1--Mixture-of-Thoughts/snapshots")
        .join("c".repeat(40));
    assert_eq!(files_under(&cached), ["math"]);

    // `train --corpus` takes a folder of `messages` shards by name, as TRL's `--dataset_name`
    // (open-r1 writes its items `{content, role}`; distill reads them by name).
    let tiny =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-llama.gguf");
    let student = tmp.path().join("student");
    let args = [
        "--threads",
        "1",
        "train",
        "--quiet",
        "--max-steps",
        "1",
        "--max-seq-len",
        "256",
        "--eval-fraction",
        "0",
        "--base",
        tiny.to_str().unwrap(),
        "--corpus",
        "open-r1/Mixture-of-Thoughts/math",
        "--out",
        student.to_str().unwrap(),
    ];
    succeed(distill(&home, &server.endpoint, &[], &args));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(student.join("data_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"], 4, "{report}");
    assert_eq!(report["train_documents"], 3, "{report}");

    // A pipeline's `[import]` takes the same names (the cached dataset, no new download).
    let run = tmp.path().join("run");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nout = \"{}\"\n\n[import]\ninputs = [\"open-r1/Mixture-of-Thoughts/math\"]\n\n[split]\n",
            run.display()
        ),
    )
    .unwrap();
    let (stdout, stderr) = succeed(distill(
        &home,
        &server.endpoint,
        &[],
        &["run", pipeline.to_str().unwrap()],
    ));
    assert!(
        stdout.contains("import: 4 rows from 1 file, 3 samples"),
        "{stdout}"
    );
    assert!(!stderr.contains("Downloaded"), "{stderr}");
    assert!(run.join("corpus/split/train").is_dir());

    // The hub gone: offline, the cache serves; a dataset never fetched is named.
    server.stop();
    let again = tmp.path().join("again");
    let offline = [("HF_HUB_OFFLINE", "1")];
    let args = [
        "corpus",
        "import",
        "open-r1/Mixture-of-Thoughts/math",
        "-o",
        again.to_str().unwrap(),
    ];
    let (stdout, _) = succeed(distill(&home, "http://127.0.0.1:9", &offline, &args));
    assert!(
        stdout.contains("import: 4 rows from 1 file, 3 samples"),
        "{stdout}"
    );
    assert_eq!(records(&again).len(), 3);
    let never = tmp.path().join("never");
    let args = [
        "corpus",
        "import",
        "nobody/nothing",
        "-o",
        never.to_str().unwrap(),
    ];
    let err = one_line_error(distill(&home, "http://127.0.0.1:9", &offline, &args));
    assert!(
        err.contains("HF_HUB_OFFLINE is set and dataset `nobody/nothing` (revision `main`) is not in the Hugging Face cache"),
        "{err}"
    );
}

#[test]
fn an_unknown_dataset_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let server = Server::start(vec![]);
    let out = tmp.path().join("out");
    let args = [
        "corpus",
        "import",
        "nobody/nothing",
        "-o",
        out.to_str().unwrap(),
    ];
    let err = one_line_error(distill(&home, &server.endpoint, &[], &args));
    assert!(
        err.starts_with("error: dataset `nobody/nothing` was not found on http://127.0.0.1"),
        "{err}"
    );
    assert!(!out.exists());
    // A local path mistyped reads as a dataset name too: with the hub unreachable, both said.
    let args = [
        "corpus",
        "import",
        "data/mine/train.jsonl",
        "-o",
        out.to_str().unwrap(),
    ];
    let err = one_line_error(distill(&home, "http://127.0.0.1:9", &[], &args));
    assert!(
        err.starts_with("error: cannot reach http://127.0.0.1:9 for dataset `data/mine`")
            && err.ends_with(
                "(read as a hub dataset: no local file or folder `data/mine/train.jsonl` exists either)"
            ),
        "{err}"
    );
}

/// A relative symlink into the repo's `blobs/`, as `huggingface_hub` makes, that reads.
fn is_blob_link(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t.starts_with("../../../blobs"))
        && std::fs::read(path).is_ok()
}

fn shared_data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(path)
}

/// Problem sets by name: `compare --problems`, `generate --problems` and `corpus decontaminate
/// --eval` take a hub dataset's one data file (MATH-500's `test.jsonl`, GSM8K's `main/test`);
/// a name that covers several files says which there are.
#[test]
fn problem_sets_by_name_for_compare_generate_and_decontaminate() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let gsm8k_train = tmp.path().join("train.jsonl");
    let first_lines: String = std::fs::read_to_string(shared_data("gsm8k/test.jsonl"))
        .unwrap()
        .lines()
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&gsm8k_train, first_lines).unwrap();
    let server = Server::start(vec![
        (
            "datasets/HuggingFaceH4/MATH-500",
            repo(
                'd',
                &[
                    ("README.md", shared_data("math500/test.jsonl")),
                    ("test.jsonl", shared_data("math500/test.jsonl")),
                ],
            ),
        ),
        (
            "datasets/openai/gsm8k",
            repo(
                'e',
                &[
                    ("main/test.jsonl", shared_data("gsm8k/test.jsonl")),
                    ("main/train.jsonl", gsm8k_train),
                ],
            ),
        ),
    ]);
    let tiny =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/tiny-llama.gguf");
    let tiny = tiny.to_str().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let report = tmp.path().join("report");
    let args = [
        "--threads",
        "1",
        "compare",
        "--models",
        tiny,
        "--problems",
        "HuggingFaceH4/MATH-500",
        "--limit",
        "3",
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        &s(&report),
    ];
    succeed(distill(&home, &server.endpoint, &[], &args));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["problems"]["count"], 3, "{json}");
    // The file read, at its commit in the cache.
    assert!(json["problems"]["path"].as_str().unwrap().ends_with("datasets--HuggingFaceH4--MATH-500/snapshots/dddddddddddddddddddddddddddddddddddddddd/test.jsonl"));

    let corpus = tmp.path().join("gen");
    let args = [
        "--threads",
        "1",
        "generate",
        "--model",
        tiny,
        "--problems",
        "openai/gsm8k/main/test",
        "--limit",
        "2",
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        &s(&corpus),
    ];
    succeed(distill(&home, &server.endpoint, &[], &args));
    let rows = records(&corpus);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].source, "gsm8k");
    // GSM8K's first test problem, and its reference answer.
    assert!(rows
        .iter()
        .any(|r| r.prompt.contains("Janet") && r.reference_answer.as_deref() == Some("18")));

    let args = [
        "generate",
        "--model",
        tiny,
        "--problems",
        "openai/gsm8k/main",
        "--out",
        &s(&tmp.path().join("g2")),
    ];
    let err = one_line_error(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(
        err,
        "error: dataset `openai/gsm8k/main` has 2 data files (main/test.jsonl, main/train.jsonl): a \
         problem set is one of them, named as `openai/gsm8k/FILE` (or a prefix only it has, such as \
         its split)"
    );

    let clean = tmp.path().join("clean");
    let args = [
        "corpus",
        "decontaminate",
        &s(&corpus),
        "-o",
        &s(&clean),
        "--eval",
        "openai/gsm8k/main/test",
        "--eval",
        "HuggingFaceH4/MATH-500",
    ];
    let (stdout, _) = succeed(distill(&home, &server.endpoint, &[], &args));
    // The generated rows are GSM8K test problems: every one is caught.
    assert!(
        stdout.contains("decontaminate: 2 rows in, 0 kept, 2 dropped"),
        "{stdout}"
    );
    assert!(stdout.contains("evaluation problems: 1819"), "{stdout}");

    // Training reads whole folders of parquet shards: part of one is refused before download.
    let args = [
        "train",
        "--corpus",
        "openai/gsm8k/main/test",
        "--base",
        tiny,
        "--out",
        &s(&tmp.path().join("t")),
    ];
    let err = one_line_error(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(
        err,
        "error: dataset `openai/gsm8k/main/test` names part of its folder (`main/train.jsonl` is in \
         it too): `distill train` reads one folder of parquet files (name the folder, or bring the \
         files in with `distill corpus import`)"
    );

    // In a pipeline, a problem set's name is checked before the first stage runs.
    let run = tmp.path().join("run");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nout = \"{}\"\n\n[generate]\nmodel = \"{tiny}\"\nproblems = \"openai/gsm8k/main/test\"\nlimit = 1\nmax_new_tokens = 4\n\n[compare]\nproblems = \"HuggingFaceH4/MATH-5000\"\n",
            run.display()
        ),
    )
    .unwrap();
    let err = one_line_error(distill(
        &home,
        &server.endpoint,
        &[],
        &["run", &s(&pipeline)],
    ));
    assert!(
        err.starts_with("error: stage `compare`: `problems`: dataset `HuggingFaceH4/MATH-5000` was not found on"),
        "{err}"
    );
    assert!(!run.join("manifests").exists(), "no stage may start");
}
