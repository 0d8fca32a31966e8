//! The token cache gives exactly the rows, report and fingerprint of the in-memory data path,
//! is reused while its inputs are unchanged, is rebuilt when they change or it is damaged, and
//! takes its held-out rows from a separate eval corpus when there is one.

use std::path::{Path, PathBuf};

use distill_corpus::record::{self, Record};
use distill_corpus::shards::{ShardWriter, WriterOptions};
use distill_models::chat::ChatTemplate;
use distill_student::batch::{PackedRow, Rows};
use distill_student::data::token_cache::{Sources, TokenCache};
use distill_student::data::{self, DataConfig, Overlong, Renderer};
use distill_student::tokenizer_train::{self, TokenizerTrainConfig};
use distill_student::trainer::fingerprint;

fn record(i: usize) -> Record {
    let (a, b) = (3 + i % 40, 2 + i % 13);
    // Reasoning of varied length, so packing has something to do and some rows are too long.
    let steps: Vec<String> = (0..1 + i % 9)
        .map(|k| format!("{a} + {k} = {}", a + k))
        .collect();
    let prompt = format!("Ann has {a} pens and gets {b} more. How many pens?");
    let reasoning = steps.join("\n");
    let completion = format!("\\boxed{{{}}}", a + b);
    Record {
        // Every 11th row hit the teacher's token limit: dropped unless kept.
        finish_reason: if i % 11 == 10 { "length" } else { "stop" }.into(),
        ..Record::sample(
            &format!("p{}", i / 2),
            (i % 2) as i32,
            &prompt,
            &reasoning,
            &completion,
        )
    }
}

fn write_corpus(dir: &Path, rows: std::ops::Range<usize>) -> PathBuf {
    let records: Vec<Record> = rows.map(record).collect();
    let mut w = ShardWriter::create(dir, record::schema(), WriterOptions::default()).unwrap();
    // Several record batches, so the cache is built batch by batch.
    for chunk in records.chunks(7) {
        w.write(&record::records_to_batch(chunk).unwrap()).unwrap();
    }
    w.finish().unwrap();
    dir.to_path_buf()
}

fn renderer() -> Renderer {
    let texts: Vec<String> = (0..120)
        .filter_map(|i| {
            let r = record(i);
            ChatTemplate::chatml()
                .render(&data::chat_messages(&r.messages), false)
                .ok()
        })
        .collect();
    let config = TokenizerTrainConfig {
        vocab_size: 200,
        ..TokenizerTrainConfig::default()
    };
    let tokenizer = tokenizer_train::train(&texts, &config).unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    Renderer::new(tokenizer, template, &[]).unwrap()
}

fn all_rows(rows: &dyn Rows) -> Vec<PackedRow> {
    (0..rows.count()).map(|i| rows.row(i)).collect()
}

fn config(packing: bool) -> DataConfig {
    DataConfig {
        max_seq_len: 96,
        packing,
        eval_fraction: 0.2,
        ..DataConfig::default()
    }
}

fn open(root: &Path, corpus: &Path, r: &Renderer, config: &DataConfig) -> TokenCache {
    let inputs = [corpus.to_path_buf()];
    let sources = Sources {
        corpus: &inputs,
        eval_corpus: None,
    };
    let mut calls = 0;
    let cache =
        TokenCache::open_or_build(root, sources, r, config, &mut |_, _| calls += 1).unwrap();
    assert!(calls > 0 || cache.reused());
    cache
}

#[test]
fn cached_rows_equal_the_in_memory_rows() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(&dir.path().join("corpus"), 0..120);
    let r = renderer();
    for packing in [true, false] {
        for overlong in [Overlong::Drop, Overlong::Truncate] {
            let config = DataConfig {
                overlong,
                ..config(packing)
            };
            let conversations = data::read_corpus(std::slice::from_ref(&corpus)).unwrap();
            let memory = data::build(&conversations, &r, &config).unwrap();
            let cache = open(&dir.path().join("cache"), &corpus, &r, &config);
            let cached = cache.dataset(&config).unwrap();
            let label = format!("packing {packing}, {overlong:?}");
            assert_eq!(all_rows(&cached.train), memory.train, "{label}");
            assert_eq!(all_rows(&cached.eval), memory.eval, "{label}");
            assert_eq!(cached.report, memory.report, "{label}");
            assert_eq!(
                cached.train.fingerprint(),
                fingerprint(&memory.train),
                "{label}"
            );
            assert_eq!(cached.train.max_len(), memory.train.max_len(), "{label}");
            // The corpus has drops of both kinds and held-out problems to compare.
            assert!(memory.report.dropped.contains_key("teacher_truncated"));
            assert!(memory.report.eval_documents > 0 && memory.report.train_documents > 0);
        }
    }
    // Truncation and dropping tokenise differently: two caches, not one overwritten.
    let folders = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
    assert_eq!(folders, 2);
}

#[test]
fn the_cache_is_reused_until_its_inputs_change() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(&dir.path().join("corpus"), 0..60);
    let root = dir.path().join("cache");
    let r = renderer();
    let config = config(true);
    let first = open(&root, &corpus, &r, &config);
    assert!(!first.reused());
    let rows = all_rows(&first.dataset(&config).unwrap().train);
    let fp = first.dataset(&config).unwrap().train.fingerprint();
    assert!(first.dir().join("fingerprint-packed.json").is_file());

    // Same inputs (packing is applied on open, not cached): no tokenising.
    let again = open(&root, &corpus, &r, &config);
    assert!(again.reused());
    assert_eq!(again.dir(), first.dir());
    assert_eq!(all_rows(&again.dataset(&config).unwrap().train), rows);
    assert_eq!(again.dataset(&config).unwrap().train.fingerprint(), fp);
    let unpacked = config_with(&config, |c| c.packing = false);
    assert!(open(&root, &corpus, &r, &unpacked).reused());

    // Another max_seq_len, another template or a changed corpus: a new cache.
    let longer = config_with(&config, |c| c.max_seq_len = 128);
    assert!(!open(&root, &corpus, &r, &longer).reused());
    let other = Renderer::new(r.tokenizer().clone(), ChatTemplate::chatml(), &[7]).unwrap();
    assert!(!open(&root, &corpus, &other, &config).reused());
    std::fs::remove_dir_all(&corpus).unwrap();
    write_corpus(&corpus, 0..61);
    let grown = open(&root, &corpus, &r, &config);
    assert!(!grown.reused());
    assert_ne!(grown.dir(), first.dir());
    assert!(grown.dataset(&config).unwrap().report.rows == 61);
}

fn config_with(base: &DataConfig, change: impl Fn(&mut DataConfig)) -> DataConfig {
    let mut c = base.clone();
    change(&mut c);
    c
}

#[test]
fn a_damaged_cache_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(&dir.path().join("corpus"), 0..40);
    let root = dir.path().join("cache");
    let r = renderer();
    let config = config(true);
    let first = open(&root, &corpus, &r, &config);
    let rows = all_rows(&first.dataset(&config).unwrap().train);
    let tokens = first.dir().join("tokens.u32");
    let len = std::fs::metadata(&tokens).unwrap().len();
    drop(first);
    // A cut-off token file (a full disk, a copy interrupted).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tokens)
        .unwrap();
    f.set_len(len - 8).unwrap();
    let rebuilt = open(&root, &corpus, &r, &config);
    assert!(!rebuilt.reused());
    assert_eq!(all_rows(&rebuilt.dataset(&config).unwrap().train), rows);
    // Nothing of the build is left behind.
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_separate_eval_corpus_gives_the_held_out_rows() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(&dir.path().join("corpus"), 0..60);
    let eval = write_corpus(&dir.path().join("eval"), 200..220);
    let r = renderer();
    let config = config(true);
    let (inputs, eval_inputs) = ([corpus.clone()], [eval.clone()]);
    let sources = Sources {
        corpus: &inputs,
        eval_corpus: Some(&eval_inputs),
    };
    let cache = TokenCache::open_or_build(
        &dir.path().join("cache"),
        sources,
        &r,
        &config,
        &mut |_, _| {},
    )
    .unwrap();
    let cached = cache.dataset(&config).unwrap();
    // What `distill train --eval-corpus` did in memory: no split of the training corpus.
    let no_split = config_with(&config, |c| c.eval_fraction = 0.0);
    let train = data::build(&data::read_corpus(&inputs).unwrap(), &r, &no_split).unwrap();
    let held_out = data::build(&data::read_corpus(&eval_inputs).unwrap(), &r, &no_split).unwrap();
    assert_eq!(all_rows(&cached.train), train.train);
    assert_eq!(all_rows(&cached.eval), held_out.train);
    assert_eq!(cached.report.rows, 60);
    assert_eq!(
        cached.report.eval_documents,
        held_out.report.train_documents
    );

    // An eval corpus with nothing usable fails, naming it.
    let bad = write_corpus(&dir.path().join("bad"), 10..11);
    let bad_inputs = [bad];
    let sources = Sources {
        corpus: &inputs,
        eval_corpus: Some(&bad_inputs),
    };
    let err = TokenCache::open_or_build(
        &dir.path().join("cache"),
        sources,
        &r,
        &config,
        &mut |_, _| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("the eval corpus is unusable"), "{err}");
}
