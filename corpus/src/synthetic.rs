//! The built-in synthetic task: seeded multi-step arithmetic word problems with exact answers,
//! so the demo pipeline needs no download.
//!
//! A problem starts from a number of items and applies 2–3 operations (`+`, `-`, `*`, `/`), each
//! chosen so that every intermediate value stays within `1..=max_value` and every division is
//! exact. Prompts use a handful of names, items and sentence templates (a small vocabulary, so
//! a tiny word-level model can learn the task); the worked solution writes one equation per step
//! and ends with `The answer is \boxed{N}.`.
//!
//! Problem `i` of seed `s` depends only on `(s, i)` (its own ChaCha8 stream), so
//! `generate(n, s)` is a prefix of `generate(m, s)` for `n < m`, and ids `arith-{s}-{i}` name
//! the same problem in every run.

use std::ops::RangeInclusive;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::problems::Problem;

/// Source name of generated problems.
pub const ARITHMETIC_SOURCE: &str = "arithmetic";

/// Multi-step arithmetic word problems. [`Default`] is difficulty 1; the demo pipeline uses the
/// smaller-number level 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithmeticTask {
    /// Number of operations applied to the starting value.
    pub steps: RangeInclusive<usize>,
    /// Starting value.
    pub start: RangeInclusive<u32>,
    /// Right-hand operand of every operation.
    pub operand: RangeInclusive<u32>,
    /// Every intermediate value, and so the answer, is at most this.
    pub max_value: u32,
}

impl Default for ArithmeticTask {
    fn default() -> Self {
        ArithmeticTask::with_difficulty(1)
    }
}

/// The four operations, in the order the solution writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    /// `value op operand` when it is an exact result within `0..=max`.
    pub fn apply(self, value: u32, operand: u32, max: u32) -> Option<u32> {
        let r = match self {
            Op::Add => value.checked_add(operand)?,
            Op::Sub => value.checked_sub(operand)?,
            Op::Mul => value.checked_mul(operand)?,
            Op::Div => {
                if operand == 0 || !value.is_multiple_of(operand) {
                    return None;
                }
                value / operand
            }
        };
        (r <= max).then_some(r)
    }
}

const NAMES: [&str; 4] = ["Ava", "Ben", "Mia", "Sam"];
const ITEMS: [&str; 4] = ["apples", "coins", "books", "cards"];
const OPENERS: [&str; 2] = ["{N} has {V} {I}.", "{N} starts with {V} {I}."];
const QUESTIONS: [&str; 2] = [
    "How many {I} does {N} have now?",
    "How many {I} does {N} have at the end?",
];

fn step_templates(op: Op) -> [&'static str; 2] {
    match op {
        Op::Add => ["{N} gets {V} more.", "Then {N} finds {V} more."],
        Op::Sub => ["{N} gives away {V}.", "Then {N} loses {V}."],
        Op::Mul => [
            "{N} ends up with {V} times as many.",
            "Then {N} has {V} times as many.",
        ],
        Op::Div => [
            "{N} splits them into {V} equal groups and keeps one group.",
            "Then {N} keeps one of {V} equal shares.",
        ],
    }
}

fn fill(template: &str, name: &str, value: u32, items: &str) -> String {
    template
        .replace("{N}", name)
        .replace("{V}", &value.to_string())
        .replace("{I}", items)
}

/// One operation of a generated problem: `before op operand = after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub before: u32,
    pub op: Op,
    pub operand: u32,
    pub after: u32,
}

impl ArithmeticTask {
    /// The difficulty knob. Level 0 is the demo's task: 2–3 steps on small numbers (start
    /// 2–12, operands 2–6, values ≤ 20), which a tiny model trained from scratch learns in a few
    /// minutes of CPU. Level `d` in `1..=8` (larger levels are clamped to 8) means `d+1 ..= d+2`
    /// steps, values up to `10^(d+1) - 1`, a start in `5·10^(d-1) ..= 4·10^d` and operands in
    /// `2 ..= 2·10^d`: level 1 has 2–3 steps, start 5–40, operands 2–20, values ≤ 99; level 2
    /// has 3–4 steps with values ≤ 999, level 3 has 4–5 steps with values ≤ 9999.
    pub fn with_difficulty(level: u32) -> Self {
        if level == 0 {
            return ArithmeticTask {
                steps: 2..=3,
                start: 2..=12,
                operand: 2..=6,
                max_value: 20,
            };
        }
        let d = level.min(8);
        let p = 10u32.pow(d - 1);
        ArithmeticTask {
            steps: (d as usize + 1)..=(d as usize + 2),
            start: 5 * p..=40 * p,
            operand: 2..=20 * p,
            max_value: 100 * p - 1,
        }
    }

    /// `n` problems for `seed`, with ids `arith-{seed}-{index}`.
    pub fn generate(&self, n: usize, seed: u64) -> Vec<Problem> {
        (0..n).map(|i| self.problem(seed, i)).collect()
    }

    /// Problem `index` of `seed`, independent of any other index.
    pub fn problem(&self, seed: u64, index: usize) -> Problem {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index as u64);
        let name = *NAMES.choose(&mut rng).unwrap_or(&NAMES[0]);
        let items = *ITEMS.choose(&mut rng).unwrap_or(&ITEMS[0]);
        let (start, steps) = self.steps_for(&mut rng);

        let mut prompt = Vec::with_capacity(steps.len() + 2);
        prompt.push(fill(pick(&OPENERS, &mut rng), name, start, items));
        let mut solution = Vec::with_capacity(steps.len() + 1);
        for s in &steps {
            prompt.push(fill(
                pick(&step_templates(s.op), &mut rng),
                name,
                s.operand,
                items,
            ));
            solution.push(format!(
                "{} {} {} = {}.",
                s.before,
                s.op.symbol(),
                s.operand,
                s.after
            ));
        }
        prompt.push(fill(pick(&QUESTIONS, &mut rng), name, 0, items));
        let answer = steps.last().map_or(start, |s| s.after);
        solution.push(format!("The answer is \\boxed{{{answer}}}."));
        Problem {
            id: format!("arith-{seed}-{index}"),
            source: ARITHMETIC_SOURCE.to_string(),
            prompt: prompt.join(" "),
            reference_answer: Some(answer.to_string()),
            solution: Some(solution.join(" ")),
        }
    }

    fn start_value(&self, rng: &mut ChaCha8Rng) -> u32 {
        let (lo, hi) = (*self.start.start(), *self.start.end());
        let hi = hi.min(self.max_value);
        if lo > hi {
            return hi;
        }
        rng.random_range(lo..=hi)
    }

    /// The starting value and the steps. Each step's operation is chosen uniformly among those
    /// with at least one valid operand, then the operand uniformly among the valid ones, so no
    /// step ever needs a retry. A step with no valid operation at all (only possible with
    /// degenerate ranges) ends the problem early.
    fn steps_for(&self, rng: &mut ChaCha8Rng) -> (u32, Vec<Step>) {
        let n_steps = if self.steps.is_empty() {
            0
        } else {
            rng.random_range(self.steps.clone())
        };
        let start = self.start_value(rng);
        let mut value = start;
        let mut steps = Vec::with_capacity(n_steps);
        for _ in 0..n_steps {
            let choices: Vec<(Op, Operands)> = Op::ALL
                .into_iter()
                .filter_map(|op| self.operands(op, value).map(|c| (op, c)))
                .collect();
            let Some((op, operands)) = choices.choose(rng) else {
                break;
            };
            let operand = match operands {
                Operands::Range(lo, hi) => rng.random_range(*lo..=*hi),
                Operands::List(list) => *list.choose(rng).unwrap_or(&list[0]),
            };
            let Some(after) = op.apply(value, operand, self.max_value) else {
                break;
            };
            steps.push(Step {
                before: value,
                op: *op,
                operand,
                after,
            });
            value = after;
        }
        (start, steps)
    }

    /// The operands that keep `value op operand` exact and within `1..=max_value`, or `None`
    /// when there are none. Computed directly rather than by trying every operand, so large
    /// difficulty levels stay cheap.
    fn operands(&self, op: Op, value: u32) -> Option<Operands> {
        let (lo, hi) = (*self.operand.start(), *self.operand.end());
        let range = |hi: u32| (lo <= hi).then_some(Operands::Range(lo, hi));
        match op {
            Op::Add => range(hi.min(self.max_value.checked_sub(value)?)),
            // Values stay positive: a zero would make every later step trivial.
            Op::Sub => range(hi.min(value.checked_sub(1)?)),
            Op::Mul if value == 0 => None,
            Op::Mul => range(hi.min(self.max_value / value)),
            Op::Div if value == 0 => None,
            Op::Div => {
                let mut divisors = Vec::new();
                let mut d = 1u32;
                while u64::from(d) * u64::from(d) <= u64::from(value) {
                    if value.is_multiple_of(d) {
                        for x in [d, value / d] {
                            if (lo..=hi).contains(&x) && !divisors.contains(&x) {
                                divisors.push(x);
                            }
                        }
                    }
                    d += 1;
                }
                // Sorted, so the choice depends only on the seed, not on discovery order.
                divisors.sort_unstable();
                (!divisors.is_empty()).then_some(Operands::List(divisors))
            }
        }
    }
}

enum Operands {
    Range(u32, u32),
    List(Vec<u32>),
}

fn pick<'a>(templates: &[&'a str], rng: &mut ChaCha8Rng) -> &'a str {
    templates.choose(rng).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_one_is_the_demo_task() {
        let t = ArithmeticTask::default();
        assert_eq!(t.steps, 2..=3);
        assert_eq!(t.start, 5..=40);
        assert_eq!(t.operand, 2..=20);
        assert_eq!(t.max_value, 99);
        let t3 = ArithmeticTask::with_difficulty(3);
        assert_eq!((t3.steps, t3.max_value), (4..=5, 9999));
        let t0 = ArithmeticTask::with_difficulty(0);
        assert_eq!((t0.steps, t0.operand, t0.max_value), (2..=3, 2..=6, 20));
        assert_eq!(ArithmeticTask::with_difficulty(99).max_value, 999_999_999);
    }

    #[test]
    fn ops_reject_out_of_range_and_inexact() {
        assert_eq!(Op::Sub.apply(3, 5, 99), None);
        assert_eq!(Op::Mul.apply(50, 2, 99), None);
        assert_eq!(Op::Div.apply(7, 2, 99), None);
        assert_eq!(Op::Div.apply(8, 2, 99), Some(4));
        assert_eq!(Op::Add.apply(u32::MAX, 1, u32::MAX), None);
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // empty ranges are the point of the test
    fn degenerate_ranges_do_not_panic() {
        let t = ArithmeticTask {
            steps: 3..=1,
            start: 50..=10,
            operand: 30..=2,
            max_value: 5,
        };
        for p in t.generate(5, 1) {
            assert!(p.reference_answer.is_some());
        }
    }
}
