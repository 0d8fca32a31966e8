//! The curation passes on crafted corpora: exact kept rows, exact drop reasons, exact counts.

mod corpus_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use corpus_support::*;
use distill_corpus::decontaminate::{self, DecontaminateConfig};
use distill_corpus::dedup::{self, estimate_jaccard, DedupConfig, MinHasher};
use distill_corpus::export::{self, ExportConfig, ExportFormat};
use distill_corpus::filter::{self, reason, FilterConfig};
use distill_corpus::record::{self, Record};
use distill_corpus::split::{self, SplitConfig};
use distill_corpus::stats::{self, StatsConfig};
use distill_corpus::verify::{self, VerifyConfig};

fn reasons(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn verify_fills_answers_and_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut right = rec("p1", 0, "think");
    right.completion = "Thus \\boxed{\\frac{3}{4}}.".into();
    right.reference_answer = Some("0.75".into());
    let mut wrong = rec("p1", 1, "think");
    wrong.completion = "The answer is \\boxed{7}.".into();
    let mut unjudged = rec("p2", 0, "think");
    unjudged.reference_answer = None;
    let mut empty = rec("p3", 0, "cut off");
    empty.completion = String::new();
    for r in [&mut right, &mut wrong, &mut unjudged, &mut empty] {
        r.final_answer = None;
        r.correct = None;
    }
    let input = dir.path().join("in");
    write_records(&input, &[right, wrong, unjudged, empty], 10);
    let out = dir.path().join("out");
    let s = verify::run(&io(&input, &out), &VerifyConfig::default()).unwrap();
    assert_eq!((s.counts.rows_in, s.counts.rows_out), (4, 4));
    assert_eq!(
        (s.correct, s.incorrect, s.no_reference, s.no_answer),
        (1, 2, 1, 1)
    );
    let got: Vec<(Option<String>, Option<bool>)> = read_records(&out)
        .into_iter()
        .map(|r| (r.final_answer, r.correct))
        .collect();
    assert_eq!(
        got,
        [
            (Some("\\frac{3}{4}".into()), Some(true)),
            (Some("7".into()), Some(false)),
            (Some("42".into()), None),
            (None, Some(false)),
        ]
    );
    assert!(out.join("summary.json").is_file() && out.join("config.json").is_file());
}

/// One row per filter, each failing exactly that check, plus two clean rows.
fn filter_corpus() -> Vec<Record> {
    let clean = "First, 6 times 7 is 42.\n\nCheck: 42 / 7 = 6. Good.";
    let mut rows = vec![rec("keep", 0, clean), rec("keep", 1, clean)];
    let mut add = |id: &str, f: &dyn Fn(&mut Record)| {
        let mut r = rec(id, 0, clean);
        f(&mut r);
        rows.push(r);
    };
    add("truncated", &|r| r.finish_reason = "length".into());
    add("filtered", &|r| r.finish_reason = "content_filter".into());
    add("aborted", &|r| r.finish_reason = "abort".into());
    add("unclosed", &|r| {
        r.completion = String::new();
        r.messages[1].content = format!("<think>\n{}", r.reasoning);
    });
    add("incorrect", &|r| r.correct = Some(false));
    add("unverified", &|r| r.correct = None);
    add("short", &|r| r.completion_tokens = 3);
    add("long", &|r| r.completion_tokens = 90_000);
    add("mixing", &|r| {
        r.reasoning = format!("{clean} 所以答案是四十二。")
    });
    add("code", &|r| {
        r.reasoning = format!("{clean}\n```python\nprint(6*7)\n```")
    });
    add("paragraph", &|r| {
        r.reasoning = (0..700)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    add("loop", &|r| {
        r.reasoning = "Wait, let me recompute six times seven to be sure it is right. ".repeat(12)
    });
    rows
}

fn filter_config() -> FilterConfig {
    FilterConfig {
        min_tokens: Some(5),
        max_tokens: Some(50_000),
        ..FilterConfig::default()
    }
}

#[test]
fn each_filter_drops_its_row_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_records(&input, &filter_corpus(), 5);
    let out = dir.path().join("out");
    let s = filter::run(&io(&input, &out), &filter_config()).unwrap();
    assert_eq!(ids(&read_records(&out)), ["keep/0", "keep/1"]);
    let expected = reasons(&[
        ("truncated/0", reason::TRUNCATED),
        ("filtered/0", reason::UNFINISHED),
        ("aborted/0", reason::UNFINISHED),
        ("unclosed/0", reason::UNCLOSED_THINK),
        ("incorrect/0", reason::INCORRECT),
        ("unverified/0", reason::UNVERIFIED),
        ("short/0", reason::TOO_SHORT),
        ("long/0", reason::TOO_LONG),
        ("mixing/0", reason::LANGUAGE_MIXING),
        ("code/0", reason::CODE_BLOCK),
        ("paragraph/0", reason::LONG_PARAGRAPH),
        ("loop/0", reason::REPETITION),
    ]);
    assert_eq!(read_dropped(&out), expected);
    assert_eq!((s.counts.rows_in, s.counts.rows_out), (14, 2));
    assert_eq!(s.counts.dropped.values().sum::<u64>(), 12);
    assert_eq!(s.counts.dropped.get(reason::UNFINISHED), Some(&2));
    assert_eq!(s.problems_kept, 1);
    // The side file keeps every input column plus the reason and its detail.
    let dropped = distill_corpus::shards::ShardReader::open(&[out.join("dropped")]).unwrap();
    let names: Vec<String> = dropped
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names.len(), record::all_columns().len() + 2);
    assert_eq!(&names[names.len() - 2..], ["drop_reason", "drop_detail"]);
}

#[test]
fn relaxed_options_keep_what_they_allow() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_records(&input, &filter_corpus(), 100);
    let out = dir.path().join("out");
    let cfg = FilterConfig {
        keep_truncated: true,
        keep_incorrect: true,
        keep_unverified: true,
        allow_code_blocks: true,
        max_paragraph_chars: 10_000,
        max_ngram_repeats: 100,
        max_foreign_letters: 50,
        ..FilterConfig::default()
    };
    filter::run(&io(&input, &out), &cfg).unwrap();
    // Keeping truncated rows does not keep answers the endpoint filtered or aborted.
    assert_eq!(
        read_dropped(&out),
        reasons(&[
            ("filtered/0", reason::UNFINISHED),
            ("aborted/0", reason::UNFINISHED),
            ("unclosed/0", reason::UNCLOSED_THINK)
        ])
    );
}

#[test]
fn at_most_k_per_problem_keeps_the_shortest() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for (i, tokens) in [30, 10, 20, 40].into_iter().enumerate() {
        let mut r = rec("p", i as i32, "ok");
        r.completion_tokens = tokens;
        rows.push(r);
    }
    let mut wrong = rec("p", 4, "ok");
    wrong.completion_tokens = 1;
    wrong.correct = Some(false);
    rows.push(wrong);
    rows.push(rec("q", 0, "ok"));
    let input = dir.path().join("in");
    write_records(&input, &rows, 2);
    let out = dir.path().join("out");
    let cfg = FilterConfig {
        max_per_problem: Some(2),
        ..FilterConfig::default()
    };
    filter::run(&io(&input, &out), &cfg).unwrap();
    assert_eq!(ids(&read_records(&out)), ["p/1", "p/2", "q/0"]);
    assert_eq!(
        read_dropped(&out),
        reasons(&[
            ("p/0", reason::OVER_PER_PROBLEM),
            ("p/3", reason::OVER_PER_PROBLEM),
            ("p/4", reason::INCORRECT),
        ])
    );
}

const GSM_LIKE: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half \
    as many clips in May. How many clips did Natalia sell altogether in April and May? Show \
    your work and put the final answer in a box.";

#[test]
fn minhash_finds_a_one_word_change_and_misses_unrelated_text() {
    let h = MinHasher::new(128, 3);
    let a = h.signature(GSM_LIKE);
    let b = h.signature(&GSM_LIKE.replace("friends", "cousins"));
    let c = h.signature(
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts \
         in total does it take to make three robes for the winter market?",
    );
    assert!(
        estimate_jaccard(&a, &b) >= 0.8,
        "{}",
        estimate_jaccard(&a, &b)
    );
    assert!(
        estimate_jaccard(&a, &c) < 0.2,
        "{}",
        estimate_jaccard(&a, &c)
    );
}

#[test]
fn dedup_drops_exact_and_near_duplicates_first_occurrence_wins() {
    let dir = tempfile::tempdir().unwrap();
    let with_prompt = |problem: &str, i: i32, prompt: &str, reasoning: &str| {
        let mut r = rec(problem, i, reasoning);
        r.prompt = prompt.to_string();
        r
    };
    let near = GSM_LIKE.replace("friends", "cousins");
    let rows = vec![
        with_prompt("a", 0, GSM_LIKE, "48 + 24 = 72"),
        with_prompt("a", 1, GSM_LIKE, "48 / 2 = 24, 48 + 24 = 72"),
        // Same text as a/0 up to case and spacing.
        with_prompt("a", 2, GSM_LIKE, "48  +  24 =\n72"),
        with_prompt("b", 0, &near, "something else entirely"),
        with_prompt("b", 1, &near, "another attempt"),
        with_prompt(
            "c",
            0,
            "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?",
            "3",
        ),
    ];
    let input = dir.path().join("in");
    write_records(&input, &rows, 4);
    let out = dir.path().join("out");
    let s = dedup::run(&io(&input, &out), &DedupConfig::default()).unwrap();
    assert_eq!(ids(&read_records(&out)), ["a/0", "a/1", "c/0"]);
    assert_eq!(
        read_dropped(&out),
        reasons(&[
            ("a/2", dedup::reason::DUPLICATE),
            ("b/0", dedup::reason::NEAR_DUPLICATE_PROMPT),
            ("b/1", dedup::reason::NEAR_DUPLICATE_PROMPT),
        ])
    );
    assert_eq!((s.problems, s.near_duplicate_problems), (3, 1));
}

#[test]
fn decontamination_catches_a_pasted_gsm8k_test_question() {
    let eval = shared_data("gsm8k/test.jsonl");
    let first_line = fs::read_to_string(&eval)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let question = serde_json::from_str::<serde_json::Value>(&first_line).unwrap()["question"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut pasted = rec("pasted", 0, "r");
    pasted.prompt = format!("Solve this carefully.\n\n{question}\n\nThink step by step.");
    let mut clean = rec("clean", 0, "r");
    clean.prompt =
        "Janet has 16 marbles and gives 3 to each of her two brothers. How many remain?".into();
    let input = dir.path().join("in");
    write_records(&input, &[pasted, clean], 10);
    let out = dir.path().join("out");
    let cfg = DecontaminateConfig {
        evals: vec![eval],
        ..DecontaminateConfig::default()
    };
    let s = decontaminate::run(&io(&input, &out), &cfg).unwrap();
    assert_eq!(ids(&read_records(&out)), ["clean/0"]);
    assert_eq!(
        read_dropped(&out),
        reasons(&[("pasted/0", decontaminate::CONTAMINATED)])
    );
    assert_eq!(s.eval_problems, 1319);
    assert_eq!(s.hits_per_eval.values().sum::<u64>(), 1);
}

#[test]
fn split_is_deterministic_and_keeps_problems_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for p in 0..200 {
        for i in 0..3 {
            rows.push(rec(&format!("prob-{p}"), i, "r"));
        }
    }
    let input = dir.path().join("in");
    write_records(&input, &rows, 100);
    let cfg = SplitConfig {
        eval_fraction: 0.2,
        ..SplitConfig::default()
    };
    let problems_of = |dir: &std::path::Path| -> BTreeSet<String> {
        read_records(dir)
            .into_iter()
            .map(|r| r.problem_id)
            .collect()
    };
    let mut sides = Vec::new();
    for run in 0..2 {
        let out = dir.path().join(format!("out{run}"));
        let s = split::run(&io(&input, &out), &cfg).unwrap();
        assert_eq!(s.train_rows + s.eval_rows, 600);
        assert_eq!(s.train_problems + s.eval_problems, 200);
        assert_eq!(s.eval_rows, 3 * s.eval_problems);
        assert!((20..=60).contains(&s.eval_problems), "{}", s.eval_problems);
        let (train, eval) = (
            problems_of(&out.join("train")),
            problems_of(&out.join("eval")),
        );
        assert!(train.is_disjoint(&eval));
        assert_eq!(train.len() + eval.len(), 200);
        sides.push((train, eval));
    }
    assert_eq!(sides[0], sides[1]);
}

#[test]
fn stats_on_a_crafted_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for (i, (source, correct, chars)) in [
        ("gsm8k", Some(true), 10),
        ("gsm8k", Some(false), 20),
        ("gsm8k", Some(true), 30),
        ("math", Some(false), 40),
        ("math", None, 50),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rec(&format!("p{}", i / 2), i as i32, &"é".repeat(chars));
        r.source = source.into();
        r.correct = correct;
        r.completion_tokens = 100 * (i as i32 + 1);
        if i == 4 {
            r.finish_reason = "length".into();
        }
        rows.push(r);
    }
    let input = dir.path().join("in");
    write_records(&input, &rows, 2);
    // A filter output to take drop reasons from.
    let filtered = dir.path().join("filtered");
    filter::run(&io(&input, &filtered), &FilterConfig::default()).unwrap();
    let out = dir.path().join("stats");
    let cfg = StatsConfig {
        dropped: vec![filtered.clone()],
        ..StatsConfig::default()
    };
    let s = stats::run(&io(&input, &out), &cfg).unwrap();
    assert_eq!((s.rows, s.problems), (5, 3));
    assert_eq!((s.correct, s.incorrect, s.unverified), (2, 2, 1));
    let gsm = &s.sources["gsm8k"];
    assert_eq!((gsm.rows, gsm.verified, gsm.correct), (3, 3, 2));
    assert!((gsm.pass_rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    let math = &s.sources["math"];
    assert_eq!(
        (math.rows, math.verified, math.correct, math.pass_rate),
        (2, 1, 0, Some(0.0))
    );
    assert_eq!(
        s.finish_reasons,
        BTreeMap::from([("length".into(), 1), ("stop".into(), 4)])
    );
    // Characters, not bytes: "é" is two bytes.
    assert_eq!(
        (
            s.reasoning_chars.min,
            s.reasoning_chars.median,
            s.reasoning_chars.max
        ),
        (10, 30, 50)
    );
    assert_eq!(s.reasoning_chars.mean, 30.0);
    assert_eq!(
        (s.completion_tokens.median, s.completion_tokens.p90),
        (300, 500)
    );
    assert_eq!(
        s.dropped,
        BTreeMap::from([("incorrect".into(), 2), ("truncated".into(), 1)])
    );
    assert_eq!(s.charts.len(), 3);
    for chart in &s.charts {
        let bytes = fs::read(chart).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", chart.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(json["rows"], 5);
}

#[test]
fn export_writes_trl_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = rec("p1", 0, "6 × 7 = 42");
    stored.prompt = "What is 6 × 7?".into();
    stored.messages = record::conversation(&stored.prompt, &stored.reasoning, &stored.completion);
    let mut bare = rec("p2", 0, "think");
    bare.prompt = "Say 42.".into();
    bare.messages = Vec::new();
    let input = dir.path().join("in");
    write_records(&input, &[stored, bare], 10);
    let out = dir.path().join("train.jsonl");
    let s = export::run(&io(&input, &out), &ExportConfig::default()).unwrap();
    assert_eq!((s.rows, s.rebuilt), (2, 1));
    let text = fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0]["messages"],
        serde_json::json!([
            {"role": "user", "content": "What is 6 × 7?"},
            {"role": "assistant", "content": "<think>\n6 × 7 = 42\n</think>\n\nSo the answer is \\boxed{42}."}
        ])
    );
    assert_eq!(
        lines[1]["messages"],
        serde_json::json!([
            {"role": "user", "content": "Say 42."},
            {"role": "assistant", "content": "<think>\nthink\n</think>\n\nSo the answer is \\boxed{42}."}
        ])
    );
    assert_eq!(lines[0]["id"], "p1/0");
    assert_eq!(lines[1]["problem_id"], "p2");

    // Parquet: the same conversations in a list<struct<role, content>> column.
    let pq = dir.path().join("train.parquet");
    let cfg = ExportConfig {
        format: ExportFormat::Parquet,
        ..ExportConfig::default()
    };
    export::run(&io(&input, &pq), &cfg).unwrap();
    let reader = distill_corpus::shards::ShardReader::open(&[pq]).unwrap();
    assert_eq!(
        reader
            .schema()
            .field_with_name("messages")
            .unwrap()
            .data_type(),
        &record::messages_type()
    );
    let batch = reader.batches().next().unwrap().unwrap();
    let list = distill_corpus::record::Columns::new(&batch)
        .list("messages")
        .unwrap();
    let turns = record::messages_at(list, 1).unwrap();
    assert_eq!(
        turns[1].content,
        "<think>\nthink\n</think>\n\nSo the answer is \\boxed{42}."
    );
    assert_eq!(entries(dir.path()), ["in", "train.jsonl", "train.parquet"]);
}

#[test]
fn option_structs_have_defaults() {
    assert_eq!(FilterConfig::default().max_paragraph_chars, 3000);
    assert_eq!(DecontaminateConfig::default().ngram, 8);
    assert_eq!(DecontaminateConfig::default().columns, ["prompt"]);
    assert_eq!(DedupConfig::default().num_perm, 64);
    assert_eq!(SplitConfig::default().eval_fraction, 0.05);
    assert_eq!(StatsConfig::default().bins, 40);
    assert_eq!(ExportConfig::default().format, ExportFormat::Jsonl);
    assert!(!VerifyConfig::default().answer_from_reasoning);
    let parsed: FilterConfig = serde_json::from_str(r#"{"max_per_problem": 3}"#).unwrap();
    assert_eq!(parsed.max_per_problem, Some(3));
    assert_eq!(parsed.max_foreign_letters, 4);
}
