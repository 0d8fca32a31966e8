//! End to end through the trainer: a tiny from-scratch student trained on a few conversations
//! learns to close its turn with `<|im_end|>` and stops by itself; the same run with the EOS
//! targets masked out (open-r1's bug) never stops. The exported folder lists the end-of-turn id
//! among its EOS ids.

use candle_core::{Device, IndexOp};
use distill_models::chat::{ChatTemplate, Message};
use distill_models::Model;
use distill_student::batch::{PackedRow, IGNORE};
use distill_student::data::{self, Conversation, DataConfig, Renderer};
use distill_student::init::{self, ScratchConfig};
use distill_student::schedule::ScheduleConfig;
use distill_student::tokenizer_train::{self, TokenizerTrainConfig};
use distill_student::{export, Control, Trainer, TrainerConfig};

const MAX_NEW: usize = 40;

fn conversations() -> Vec<Conversation> {
    [(2, 3), (4, 1), (3, 3), (1, 6), (5, 2), (2, 2)]
        .iter()
        .map(|&(a, b)| Conversation {
            id: format!("{a}+{b}"),
            problem_id: None,
            messages: vec![
                Message::user(format!("{a}+{b}")),
                Message::assistant(format!("<think>\n{a}+{b}={}\n</think>\n\n{}", a + b, a + b)),
            ],
            finish_reason: None,
            reference_answer: None,
            teacher_logprobs: None,
        })
        .collect()
}

/// Greedy continuation of the generation prompt for `user`, until a stop id or `MAX_NEW`.
fn generate(model: &Model, renderer: &Renderer, user: &str) -> (String, bool) {
    let prompt = renderer
        .template()
        .render(&[Message::user(user)], true)
        .unwrap();
    let mut tokens = renderer.tokenizer().encode(&prompt, false).unwrap();
    let mut cache = model.new_cache();
    let mut new = Vec::new();
    let mut feed = tokens.clone();
    for _ in 0..MAX_NEW {
        let logits = model.forward_cached(&feed, &mut cache).unwrap();
        let last = logits.i(logits.dim(0).unwrap() - 1).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        if renderer.stop_ids().contains(&next) {
            return (renderer.tokenizer().decode(&new, false).unwrap(), true);
        }
        new.push(next);
        tokens.push(next);
        feed = vec![next];
    }
    (renderer.tokenizer().decode(&new, false).unwrap(), false)
}

fn train(rows: &[PackedRow], renderer: &Renderer, out: Option<&std::path::Path>) -> Trainer {
    let scratch = ScratchConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        intermediate_size: 64,
        max_position_embeddings: 128,
        ..Default::default()
    };
    let mut student = init::from_scratch(&scratch, renderer.tokenizer().clone(), 7).unwrap();
    export::prepare(&mut student, renderer);
    let config = TrainerConfig {
        schedule: ScheduleConfig {
            lr: 1e-2,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
        },
        micro_batch_size: rows.len(),
        max_steps: Some(250),
        seed: 3,
        ..Default::default()
    };
    let mut trainer = Trainer::new(student, config, &Device::Cpu).unwrap();
    let summary = trainer
        .fit(rows, None, None, &mut |_| Control::Continue)
        .unwrap();
    assert!(summary.last_loss.unwrap() < 0.2, "{summary:?}");
    if let Some(out) = out {
        trainer.save_model(out).unwrap();
    }
    trainer
}

#[test]
fn a_tiny_student_learns_to_stop() {
    let convs = conversations();
    let rendered: Vec<String> = convs
        .iter()
        .map(|c| ChatTemplate::chatml().render(&c.messages, false).unwrap())
        .collect();
    let tokenizer = tokenizer_train::train(
        &rendered,
        &TokenizerTrainConfig {
            vocab_size: 40,
            split_digits: true,
            min_frequency: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let renderer = Renderer::new(tokenizer, template, &[]).unwrap();
    let eot = renderer.end_of_turn_id().unwrap();
    let config = DataConfig {
        max_seq_len: 64,
        packing: false,
        eval_fraction: 0.0,
        ..Default::default()
    };
    let ds = data::build(&convs, &renderer, &config).unwrap();
    assert!(ds.train.iter().all(|r| r.labels[r.len() - 2] == eot as i64));

    let dir = tempfile::tempdir().unwrap();
    // `DISTILL_KEEP_EXPORT=DIR` keeps the exported folder for `fixtures/check_export.py`.
    let out = std::env::var_os("DISTILL_KEEP_EXPORT")
        .map_or_else(|| dir.path().join("student"), std::path::PathBuf::from);
    let trainer = train(&ds.train, &renderer, Some(&out));
    for c in &convs {
        let (text, stopped) = generate(trainer.model(), &renderer, &c.messages[0].content);
        assert!(stopped, "no EOS after `{text}`");
        assert_eq!(text, c.messages[1].content);
    }
    let ckpt = export::check_folder(&out, Some(eot)).unwrap();
    let reloaded = ckpt.load_model(&Device::Cpu).unwrap();
    let (text, stopped) = generate(&reloaded, &renderer, "2+3");
    assert!(stopped && text.ends_with("\n\n5"), "{text}");

    // Control: the same data with EOS never a target. The student then never stops.
    let masked: Vec<PackedRow> = ds
        .train
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for l in r.labels.iter_mut().filter(|l| **l == eot as i64) {
                *l = IGNORE;
            }
            r
        })
        .collect();
    let control = train(&masked, &renderer, None);
    for c in &convs {
        let (text, stopped) = generate(control.model(), &renderer, &c.messages[0].content);
        assert!(!stopped, "stopped after `{text}` without ever seeing EOS");
    }
}
