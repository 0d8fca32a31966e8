//! Record round trips through shards, writer crash safety, and bad inputs: every failure is a
//! clear error and leaves no output behind.

mod corpus_support;

use std::fs;
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use corpus_support::*;
use distill_corpus::decontaminate::{self, DecontaminateConfig};
use distill_corpus::filter::{self, FilterConfig};
use distill_corpus::record::{self, Message};
use distill_corpus::shards::{Manifest, ShardReader, ShardWriter, WriterOptions};
use distill_corpus::Error;
use parquet::arrow::ArrowWriter;

fn crafted() -> Vec<distill_corpus::record::Record> {
    let mut a = rec("p1", 0, "Six times seven: 6 × 7 = 42. 日本語 ok");
    a.final_answer = None;
    a.reference_answer = None;
    a.correct = None;
    let mut b = rec("p1", 1, "");
    b.messages = Vec::new();
    b.correct = Some(false);
    b.seed = u64::MAX;
    b.temperature = 0.0;
    let mut c = rec("p2", 0, "line one\n\nline two");
    c.messages.insert(0, Message::new("system", "Be brief."));
    c.finish_reason = "length".into();
    c.prompt_tokens = i32::MAX;
    c.completion_tokens = 0;
    let d = rec("p3", 4, "x");
    let e = rec("p4", 0, "y");
    vec![a, b, c, d, e]
}

#[test]
fn records_round_trip_through_shards_with_nulls_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let records = crafted();
    write_records(dir.path(), &records, 2);
    let manifest = Manifest::read(dir.path()).unwrap().unwrap();
    let files: Vec<_> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    assert_eq!(
        manifest.shards.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let back = read_records(dir.path());
    assert_eq!(back, records);
    // The schema on disk is the corpus schema.
    let reader = ShardReader::open(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(reader.schema().fields(), record::schema().fields());
    assert_eq!(reader.num_rows(), 5);
}

#[test]
fn crashed_writer_leaves_only_complete_shards_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let records = crafted();
    let opts = WriterOptions {
        rows_per_shard: 2,
        ..WriterOptions::default()
    };
    let mut w = ShardWriter::create(dir.path(), record::schema(), opts.clone()).unwrap();
    w.write(&record::records_to_batch(&records[..3]).unwrap())
        .unwrap();
    // A crash: the writer never finishes and no destructor runs.
    std::mem::forget(w);
    fs::write(dir.path().join("part-00007.parquet.tmp"), b"half a shard").unwrap();
    let names = entries(dir.path());
    assert!(
        names.contains(&"part-00001.parquet.tmp".to_string()),
        "{names:?}"
    );
    let manifest = Manifest::read(dir.path()).unwrap().unwrap();
    assert_eq!(manifest.shards.len(), 1);
    assert_eq!(manifest.rows(), 2);
    // Readers see only the finished shard.
    assert_eq!(ids(&read_records(dir.path())), ["p1/0", "p1/1"]);

    // Reopening cleans the leftovers and continues numbering.
    let mut w = ShardWriter::create(dir.path(), record::schema(), opts).unwrap();
    assert_eq!(
        entries(dir.path()),
        ["manifest.json", "part-00000.parquet"],
        "temporary files must be removed"
    );
    w.write(&record::records_to_batch(&records[2..]).unwrap())
        .unwrap();
    let manifest = w.finish().unwrap();
    let files: Vec<_> = manifest.shards.iter().map(|s| s.file.clone()).collect();
    assert_eq!(
        files,
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    assert_eq!(read_records(dir.path()), records);
    let done = distill_corpus::shards::completed_samples(dir.path()).unwrap();
    let expected: std::collections::HashSet<(String, i32)> = records
        .iter()
        .map(|r| (r.problem_id.clone(), r.sample_index))
        .collect();
    assert_eq!(done, expected);
    assert!(
        distill_corpus::shards::completed_samples(&dir.path().join("none"))
            .unwrap()
            .is_empty()
    );
}

/// A writer that closes shards by age: rows that trickle in (a CPU teacher's few a minute)
/// reach a finished shard once the open one is old enough, so a crash after that loses none
/// of them, though the shard is far from full.
#[test]
fn shards_close_by_age_so_a_crash_keeps_slow_rows() {
    let dir = tempfile::tempdir().unwrap();
    let records = crafted();
    let opts = WriterOptions {
        rows_per_shard: 1000,
        ..WriterOptions::default()
    };
    let age = std::time::Duration::from_millis(300);
    let mut w = ShardWriter::create(dir.path(), record::schema(), opts)
        .unwrap()
        .close_after(age);
    w.write(&record::records_to_batch(&records[..1]).unwrap())
        .unwrap();
    w.write(&record::records_to_batch(&records[1..2]).unwrap())
        .unwrap();
    assert!(Manifest::read(dir.path()).unwrap().is_none(), "still open");
    std::thread::sleep(age);
    // The next write finds the shard old: it goes in, and the shard closes.
    w.write(&record::records_to_batch(&records[2..3]).unwrap())
        .unwrap();
    w.write(&record::records_to_batch(&records[3..4]).unwrap())
        .unwrap();
    std::mem::forget(w);
    let manifest = Manifest::read(dir.path()).unwrap().unwrap();
    assert_eq!(manifest.shards.len(), 1);
    assert_eq!(manifest.rows(), 3);
    assert_eq!(ids(&read_records(dir.path())), ["p1/0", "p1/1", "p2/0"]);
}

#[test]
fn an_empty_output_still_carries_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let w = ShardWriter::create(dir.path(), record::schema(), WriterOptions::default()).unwrap();
    let manifest = w.finish().unwrap();
    assert_eq!(manifest.shards.len(), 1);
    assert_eq!(manifest.rows(), 0);
    let reader = ShardReader::open(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(reader.num_rows(), 0);
    assert_eq!(reader.batches().count(), 0);
}

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    let file = fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn assert_no_output(parent: &std::path::Path, out_name: &str) {
    let left: Vec<String> = entries(parent)
        .into_iter()
        .filter(|n| n.contains(out_name))
        .collect();
    assert!(left.is_empty(), "output left behind: {left:?}");
}

#[test]
fn missing_columns_are_named_with_the_columns_present() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.parquet");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("problem_id", DataType::Utf8, false),
            Field::new("reasoning", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["p"])) as ArrayRef,
            Arc::new(StringArray::from(vec!["r"])) as ArrayRef,
        ],
    )
    .unwrap();
    write_parquet(&input, &batch);
    let err = filter::run(
        &io(&input, &dir.path().join("out")),
        &FilterConfig::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingColumns { .. }), "{msg}");
    assert!(
        msg.contains("`completion`, `correct`, `finish_reason`, `completion_tokens`"),
        "{msg}"
    );
    assert!(
        msg.contains("columns present: `problem_id`, `reasoning`"),
        "{msg}"
    );
    assert_no_output(dir.path(), "out");
}

#[test]
fn empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.parquet");
    fs::write(&input, b"").unwrap();
    let err = filter::run(
        &io(&input, &dir.path().join("out")),
        &FilterConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::EmptyFile { .. }), "{err}");
    assert!(err.to_string().contains("empty.parquet"), "{err}");
    assert_no_output(dir.path(), "out");
}

#[test]
fn mixed_schemas_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    fs::create_dir(&shards).unwrap();
    let good = record::records_to_batch(&crafted()).unwrap();
    write_parquet(&shards.join("a.parquet"), &good);
    let fewer = good.project(&[0, 1, 2, 3]).unwrap();
    write_parquet(&shards.join("b.parquet"), &fewer);
    let err = filter::run(
        &io(&shards, &dir.path().join("out")),
        &FilterConfig::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MixedSchemas { .. }), "{msg}");
    assert!(
        msg.contains("a.parquet") && msg.contains("b.parquet"),
        "{msg}"
    );
    assert!(msg.contains("only the first has column `prompt`"), "{msg}");
    assert_no_output(dir.path(), "out");
}

#[test]
fn non_utf8_text_column_is_a_type_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bytes.parquet");
    let good = record::records_to_batch(&crafted()[..1]).unwrap();
    // `reasoning` stored as raw bytes holding invalid UTF-8.
    let at = good.schema().index_of("reasoning").unwrap();
    let mut fields: Vec<Field> = good
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[at] = Field::new("reasoning", DataType::Binary, false);
    let mut columns = good.columns().to_vec();
    columns[at] = Arc::new(BinaryArray::from(vec![&b"caf\xe9"[..]]));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write_parquet(&input, &batch);
    let err = filter::run(
        &io(&input, &dir.path().join("out")),
        &FilterConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ColumnType { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "Column `reasoning` of `{}` has type `Binary`, expected `Utf8`",
            input.display()
        )
    );
    assert_no_output(dir.path(), "out");
}

#[test]
fn missing_eval_file_fails_before_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_records(&input, &crafted(), 10);
    let cfg = DecontaminateConfig {
        evals: vec![dir.path().join("no-such-eval.jsonl")],
        ..DecontaminateConfig::default()
    };
    let err = decontaminate::run(&io(&input, &dir.path().join("out")), &cfg).unwrap_err();
    assert!(err.to_string().contains("no-such-eval.jsonl"), "{err}");
    assert_no_output(dir.path(), "out");
    // The input is untouched.
    assert_eq!(read_records(&input), crafted());
}

#[test]
fn existing_output_is_refused_and_input_as_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_records(&input, &crafted(), 10);
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let err = filter::run(&io(&input, &out), &FilterConfig::default()).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    let mut same = io(&input, &input);
    same.overwrite = true;
    let err = filter::run(&same, &FilterConfig::default()).unwrap_err();
    assert!(err.to_string().contains("would replace input"), "{err}");
    assert_eq!(read_records(&input), crafted());
}
