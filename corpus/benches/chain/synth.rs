//! A seeded generator of a realistic-looking teacher corpus for the bench: R1-shaped traces
//! (reasoning 2–16 KB, median ~6 KB, in paragraphs), four samples per problem, and the defects
//! the passes exist for, at fixed rates: wrong answers, truncations, language mixing, code
//! blocks, long paragraphs, repetition loops, duplicate samples, near-duplicate prompts and
//! prompts copied from the evaluation set.

use std::fmt::Write;

use distill_corpus::record::{self, Record};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SAMPLES_PER_PROBLEM: u64 = 4;

const NAMES: [&str; 16] = [
    "Natalia", "James", "Maria", "Tom", "Aisha", "Kenji", "Olga", "Pedro", "Lena", "Omar", "Grace",
    "Ravi", "Sofia", "Liam", "Mei", "Jonas",
];
const ITEMS: [&str; 12] = [
    "apples", "marbles", "clips", "books", "eggs", "cookies", "stamps", "coins", "pencils",
    "tickets", "shells", "cards",
];
const PLACES: [&str; 6] = [
    "market",
    "school fair",
    "bakery",
    "library sale",
    "garage sale",
    "shop",
];

fn rng_for(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(32))
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// A word problem and its numeric answer. Family 0 is the corpus, any other the evaluation
/// set, worded differently so that only copied problems share 8-grams with it.
pub fn problem(seed: u64, p: u64, family: u64) -> (String, i64) {
    let mut rng = rng_for(seed, p, 1 + family);
    let (name, other) = (pick(&mut rng, &NAMES), pick(&mut rng, &NAMES));
    let (item, place) = (pick(&mut rng, &ITEMS), pick(&mut rng, &PLACES));
    let a: i64 = rng.random_range(20..500);
    let b: i64 = rng.random_range(2..60);
    let c: i64 = rng.random_range(1..20);
    let d: i64 = rng.random_range(2..12);
    if family != 0 {
        return match rng.random_range(0..2) {
            0 => (
                format!(
                    "A {place} ordered {a} crates of {item}; every crate weighs {d} kilograms. \
                     The driver unloads {b} crates before lunch. What weight in kilograms \
                     remains on the truck for {name}?"
                ),
                (a - b) * d,
            ),
            _ => (
                format!(
                    "During a charity drive, {name} and {other} together raised ${a}. {other} \
                     raised {c} dollars less than twice what {name} raised. Ignoring cents, \
                     compute the amount {name} contributed plus {b}."
                ),
                (a + c) / 3 + b,
            ),
        };
    }
    match rng.random_range(0..4) {
        0 => (
            format!(
                "{name} has {a} {item}. {other} gives {name} {b} more {item}, and then {name} \
                 sells {c} of them at the {place} for ${d} each. How many {item} does {name} have \
                 left after the sale?"
            ),
            a + b - c,
        ),
        1 => (
            format!(
                "At the {place}, {name} packs {item} into {d} boxes with {b} {item} in each box. \
                 {other} brings another {a} {item}. How many {item} are there in total?"
            ),
            d * b + a,
        ),
        2 => (
            format!(
                "{name} earns ${b} per hour working at the {place} and works {d} hours a day for \
                 {c} days. {name} then spends ${a} on {item}. How much money does {name} have left?"
            ),
            b * d * c - a,
        ),
        _ => (
            format!(
                "{other} collected {a} {item} in the first week and {c} times as many in the second \
                 week. {name} took {b} of them for the {place}. How many {item} does {other} still \
                 have?"
            ),
            a + c * a - b,
        ),
    }
}

/// One reasoning sentence.
fn sentence(rng: &mut ChaCha8Rng, out: &mut String) {
    let (x, y): (i64, i64) = (rng.random_range(2..999), rng.random_range(2..99));
    let item = pick(rng, &ITEMS);
    let _ = match rng.random_range(0..14) {
        0 => write!(
            out,
            "First, let me figure out how many {item} there are: {x} plus {y} gives {}.",
            x + y
        ),
        1 => write!(out, "Then I multiply {x} by {y}, which is {}.", x * y),
        2 => write!(
            out,
            "Wait, I should double-check that step, because {x} minus {y} is {}, not {}.",
            x - y,
            x - y + 1
        ),
        3 => write!(
            out,
            "So far we have {x} {item}, and the problem says we lose {y} of them."
        ),
        4 => write!(
            out,
            "Hmm, let me re-read the part about the {y} {item} to make sure I understand it."
        ),
        5 => write!(
            out,
            "If each box holds {y} {item}, then {x} boxes hold {} {item} in total.",
            x * y
        ),
        6 => write!(
            out,
            "Let me verify: {} divided by {y} should give back {x}.",
            x * y
        ),
        7 => write!(
            out,
            "Alternatively, I could think of it as {x} groups of {y} {item}."
        ),
        8 => write!(out, "Okay, so the intermediate total is {}.", x + 2 * y),
        9 => write!(
            out,
            "Now subtract the {y} {item} that were given away: {x} - {y} = {}.",
            x - y
        ),
        10 => write!(
            out,
            "That seems right for {x}, but are the money and the {y} {item} counted separately?"
        ),
        11 => write!(
            out,
            "Adding the two weeks together, {x} + {} = {}.",
            y * 3,
            x + y * 3
        ),
        12 => write!(
            out,
            "So the price per item is ${y}, and {x} items cost ${}.",
            x * y
        ),
        _ => write!(
            out,
            "I think I have the pieces now: {x}, {y} and the {item}."
        ),
    };
}

/// Reasoning of about `target` bytes in paragraphs of 3–7 sentences.
fn reasoning(rng: &mut ChaCha8Rng, target: usize, out: &mut String) {
    let mut in_paragraph = 0;
    let mut limit = rng.random_range(3..8);
    while out.len() < target {
        if in_paragraph == limit {
            out.push_str("\n\n");
            in_paragraph = 0;
            limit = rng.random_range(3..8);
        } else if in_paragraph > 0 {
            out.push(' ');
        }
        sentence(rng, out);
        in_paragraph += 1;
    }
}

/// Reasoning length: log-normal around 6 KB, clipped to 2–16 KB.
fn reasoning_bytes(rng: &mut ChaCha8Rng) -> usize {
    // Box–Muller from two uniforms.
    let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (6000.0 * (0.45 * z).exp()).clamp(2048.0, 16384.0) as usize
}

/// The corpus row number `row` (problem `row / 4`, sample `row % 4`).
pub fn row(seed: u64, row: u64, eval: &[(String, i64)]) -> Record {
    let (p, s) = (row / SAMPLES_PER_PROBLEM, row % SAMPLES_PER_PROBLEM);
    let mut prng = rng_for(seed, p, 0);
    let kind: f64 = prng.random();
    let (prompt, answer) = if kind < 0.02 && p > 0 {
        // Near duplicate of the previous problem: one name swapped.
        let (text, answer) = problem(seed, p - 1, 0);
        let word = text.split(' ').next().unwrap_or("").to_string();
        (text.replacen(&word, "Someone", 1), answer)
    } else if kind < 0.025 && !eval.is_empty() {
        eval[(p as usize) % eval.len()].clone()
    } else {
        problem(seed, p, 0)
    };
    let mut rng = rng_for(seed, p, 100 + s);
    // An exact duplicate repeats sample 0's text.
    let text_sample = if s > 0 && rng.random::<f64>() < 0.01 {
        0
    } else {
        s
    };
    let mut trng = rng_for(seed, p, 1000 + text_sample);
    let mut thinking = String::with_capacity(17_000);
    let target = reasoning_bytes(&mut trng);
    let defect: f64 = trng.random();
    reasoning(&mut trng, target, &mut thinking);
    if defect < 0.01 {
        thinking.push_str("\n\n让我再检查一下这个计算，确保答案是正确的。");
    } else if defect < 0.02 {
        thinking.push_str("\n\n```python\nprint(48 + 24)\n```");
    } else if defect < 0.03 {
        let mut long = String::new();
        while long.len() < 3500 {
            sentence(&mut trng, &mut long);
            long.push(' ');
        }
        thinking.push_str("\n\n");
        thinking.push_str(long.trim_end());
    } else if defect < 0.04 {
        for _ in 0..30 {
            thinking.push_str(
                " Wait, let me recompute the total number of items once more to be sure.",
            );
        }
    }
    let truncated = trng.random::<f64>() < 0.03;
    let wrong = trng.random::<f64>() < 0.2;
    let given = if wrong {
        answer + trng.random_range(1..9)
    } else {
        answer
    };
    let completion = if truncated {
        String::new()
    } else {
        format!("The final count is {given}.\n\nTherefore, the answer is \\boxed{{{given}}}.")
    };
    let assistant = if truncated {
        format!("<think>\n{thinking}")
    } else {
        record::assistant_content(&thinking, &completion)
    };
    let problem_id = format!("synth-{p}");
    Record {
        id: record::record_id(&problem_id, s as i32),
        sample_index: s as i32,
        source: if p % 3 == 0 {
            "synthetic-hard"
        } else {
            "synthetic"
        }
        .into(),
        messages: vec![
            record::Message::new("user", prompt.clone()),
            record::Message::new("assistant", assistant),
        ],
        prompt_tokens: (prompt.len() / 4) as i32,
        completion_tokens: ((thinking.len() + completion.len()) / 4) as i32,
        prompt,
        reasoning: thinking,
        completion,
        final_answer: None,
        reference_answer: Some(answer.to_string()),
        correct: None,
        finish_reason: if truncated { "length" } else { "stop" }.into(),
        problem_id,
        teacher: "bench-teacher".into(),
        temperature: 0.6,
        top_p: 0.95,
        seed: seed ^ row,
    }
}

/// Evaluation problems (GSM8K layout) from a different seed.
pub fn eval_set(seed: u64, n: u64) -> Vec<(String, i64)> {
    (0..n).map(|i| problem(seed ^ 0xe7a1, i, 7)).collect()
}
