//! Shared helpers of the corpus integration tests: crafted records, writing them as shards,
//! reading outputs and side files back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use distill_corpus::pass::PassIo;
use distill_corpus::record::{self, col, Columns, Record};
use distill_corpus::shards::{ShardReader, ShardWriter, WriterOptions};

/// A correct, readable sample of `problem` with reasoning `reasoning`.
pub fn rec(problem: &str, index: i32, reasoning: &str) -> Record {
    let completion = "So the answer is \\boxed{42}.".to_string();
    let prompt = format!("Problem {problem}: what is six times seven?");
    Record {
        id: record::record_id(problem, index),
        problem_id: problem.to_string(),
        sample_index: index,
        source: "test".into(),
        messages: record::conversation(&prompt, reasoning, &completion),
        prompt,
        reasoning: reasoning.to_string(),
        completion,
        final_answer: Some("42".into()),
        reference_answer: Some("42".into()),
        correct: Some(true),
        finish_reason: "stop".into(),
        prompt_tokens: 12,
        completion_tokens: 40,
        teacher: "tiny".into(),
        temperature: 0.6,
        top_p: 0.95,
        seed: 7,
    }
}

/// Writes records as shards of `rows_per_shard` rows into `dir`.
pub fn write_records(dir: &Path, records: &[Record], rows_per_shard: usize) {
    let opts = WriterOptions {
        rows_per_shard,
        ..WriterOptions::default()
    };
    let mut w = ShardWriter::create(dir, record::schema(), opts).unwrap();
    for chunk in records.chunks(3) {
        w.write(&record::records_to_batch(chunk).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// Every record of a folder (or file), in order.
pub fn read_records(path: &Path) -> Vec<Record> {
    let reader = ShardReader::open(&[path.to_path_buf()]).unwrap();
    let mut out = Vec::new();
    for batch in reader.batches() {
        out.extend(record::records_from_batch(&batch.unwrap()).unwrap());
    }
    out
}

/// `id → drop_reason` of a pass output's `dropped/` folder.
pub fn read_dropped(out: &Path) -> BTreeMap<String, String> {
    let reader = ShardReader::open(&[out.join("dropped")]).unwrap();
    let mut map = BTreeMap::new();
    for batch in reader.batches() {
        let batch = batch.unwrap();
        let c = Columns::new(&batch);
        let (ids, reasons) = (c.str(col::ID).unwrap(), c.str(col::DROP_REASON).unwrap());
        for i in 0..batch.num_rows() {
            map.insert(ids.value(i).to_string(), reasons.value(i).to_string());
        }
    }
    map
}

pub fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

pub fn io(input: &Path, output: &Path) -> PassIo {
    let mut io = PassIo::new(vec![input.to_path_buf()], output);
    io.batch_rows = 4;
    io
}

pub fn shared_data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel)
}

/// Entries of a folder other than the listed ones (to prove nothing was left behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
