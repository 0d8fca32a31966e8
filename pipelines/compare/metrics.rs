//! The numbers of a comparison, computed from one model's generations: pass@1 with its standard
//! error, cons@k (majority vote), agreement with the teacher's majority answer, token counts and
//! the truncation rate. Pure functions over [`Sample`]s, so every definition is unit-tested on
//! crafted data.
//!
//! Definitions (also in `report.json`'s documentation):
//! - **pass@1**: per problem, the share of its samples judged correct; then the mean over
//!   problems. Problems without a reference answer are left out. The standard error is the
//!   sample standard deviation of the per-problem shares divided by √problems (undefined with
//!   fewer than two problems), i.e. the uncertainty from the choice of problems, which dominates
//!   with n samples per problem averaged first.
//! - **cons@k**: per problem, the majority answer among the first `k` samples (sample index
//!   `< k`); answers are grouped by [`answers_equivalent`] (so `0.5` and `\frac12` vote
//!   together), samples with no extracted answer abstain, and a tie goes to the group whose first
//!   member came first in sample order. The problem counts as solved when the majority answer is
//!   equivalent to the reference.
//! - **agreement with the teacher**: over problems where the teacher has a majority answer (over
//!   all its samples), the share of this model's samples whose answer is equivalent to it (a
//!   sample with no answer disagrees).

use std::collections::BTreeMap;

use distill_corpus::answer::answers_equivalent;
use serde::{Deserialize, Serialize};

/// One generation, reduced to what the metrics read.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub problem_id: String,
    pub sample_index: u32,
    /// Extracted final answer (`None` when none could be extracted).
    pub answer: Option<String>,
    /// Ground truth of the problem, when it has one.
    pub reference: Option<String>,
    /// Verifier verdict; `None` where the problem has no reference.
    pub correct: Option<bool>,
    /// `finish_reason = length`.
    pub truncated: bool,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Everything computed for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Problems with at least one sample.
    pub problems: usize,
    pub samples: usize,
    /// Problems with a reference answer (the denominator of pass@1 and cons@k).
    pub scored_problems: usize,
    pub pass_at_1: Option<f64>,
    pub pass_at_1_se: Option<f64>,
    pub k: u32,
    pub cons_at_k: Option<f64>,
    pub agreement_with_teacher: Option<f64>,
    pub mean_reasoning_tokens: Option<f64>,
    pub mean_completion_tokens: Option<f64>,
    pub truncation_rate: Option<f64>,
}

/// Samples grouped by problem (problems in id order), each group in sample order.
pub fn by_problem(samples: &[Sample]) -> BTreeMap<&str, Vec<&Sample>> {
    let mut groups: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups.entry(s.problem_id.as_str()).or_default().push(s);
    }
    for group in groups.values_mut() {
        group.sort_by_key(|s| s.sample_index);
    }
    groups
}

/// pass@1 and its standard error across problems; `(None, None)` when no problem has a
/// reference, and no standard error with a single scored problem.
pub fn pass_at_1(samples: &[Sample]) -> (Option<f64>, Option<f64>) {
    let shares: Vec<f64> = by_problem(samples)
        .values()
        .filter_map(|group| {
            let judged: Vec<bool> = group.iter().filter_map(|s| s.correct).collect();
            (!judged.is_empty())
                .then(|| judged.iter().filter(|&&c| c).count() as f64 / judged.len() as f64)
        })
        .collect();
    if shares.is_empty() {
        return (None, None);
    }
    let n = shares.len() as f64;
    let mean = shares.iter().sum::<f64>() / n;
    let se = (shares.len() > 1).then(|| {
        let var = shares.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    });
    (Some(mean), se)
}

/// The majority among `answers` (in sample order; `None` abstains), grouped by equivalence; a
/// tie goes to the group whose first member came first. Returns the group's first answer as
/// written and its vote count.
pub fn majority<'a>(
    answers: impl IntoIterator<Item = Option<&'a str>>,
) -> Option<(&'a str, usize)> {
    // (representative, votes) in order of first appearance.
    let mut groups: Vec<(&'a str, usize)> = Vec::new();
    for answer in answers.into_iter().flatten() {
        match groups
            .iter_mut()
            .find(|(repr, _)| answers_equivalent(answer, repr))
        {
            Some(group) => group.1 += 1,
            None => groups.push((answer, 1)),
        }
    }
    // `max_by_key` keeps the last maximum; scanning for a strictly larger count keeps the first.
    let mut best: Option<(&'a str, usize)> = None;
    for group in groups {
        if best.is_none_or(|b| group.1 > b.1) {
            best = Some(group);
        }
    }
    best
}

/// cons@k: the share of scored problems whose majority answer over the first `k` samples is
/// equivalent to the reference.
pub fn cons_at_k(samples: &[Sample], k: u32) -> Option<f64> {
    let mut scored = 0usize;
    let mut solved = 0usize;
    for group in by_problem(samples).values() {
        let Some(reference) = group.iter().find_map(|s| s.reference.as_deref()) else {
            continue;
        };
        scored += 1;
        let votes = group
            .iter()
            .filter(|s| s.sample_index < k)
            .map(|s| s.answer.as_deref());
        if majority(votes).is_some_and(|(answer, _)| answers_equivalent(answer, reference)) {
            solved += 1;
        }
    }
    (scored > 0).then(|| solved as f64 / scored as f64)
}

/// The teacher's majority answer per problem, over all its samples.
pub fn majority_answers(samples: &[Sample]) -> BTreeMap<String, String> {
    by_problem(samples)
        .into_iter()
        .filter_map(|(id, group)| {
            majority(group.iter().map(|s| s.answer.as_deref()))
                .map(|(answer, _)| (id.to_string(), answer.to_string()))
        })
        .collect()
}

/// Share of `samples` (on problems where the teacher has a majority answer) that agree with it.
pub fn agreement(samples: &[Sample], teacher_majority: &BTreeMap<String, String>) -> Option<f64> {
    let mut total = 0usize;
    let mut agree = 0usize;
    for s in samples {
        let Some(target) = teacher_majority.get(&s.problem_id) else {
            continue;
        };
        total += 1;
        if s.answer
            .as_deref()
            .is_some_and(|a| answers_equivalent(a, target))
        {
            agree += 1;
        }
    }
    (total > 0).then(|| agree as f64 / total as f64)
}

/// Share of samples cut at the token limit.
pub fn truncation_rate(samples: &[Sample]) -> Option<f64> {
    mean(samples.iter().map(|s| if s.truncated { 1.0 } else { 0.0 }))
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Every metric of one model; `teacher_majority` comes from [`majority_answers`] of the first
/// model.
pub fn compute(samples: &[Sample], k: u32, teacher_majority: &BTreeMap<String, String>) -> Metrics {
    let groups = by_problem(samples);
    let scored_problems = groups
        .values()
        .filter(|g| g.iter().any(|s| s.correct.is_some()))
        .count();
    let (pass, se) = pass_at_1(samples);
    Metrics {
        problems: groups.len(),
        samples: samples.len(),
        scored_problems,
        pass_at_1: pass,
        pass_at_1_se: se,
        k,
        cons_at_k: cons_at_k(samples, k),
        agreement_with_teacher: agreement(samples, teacher_majority),
        mean_reasoning_tokens: mean(samples.iter().map(|s| s.reasoning_tokens as f64)),
        mean_completion_tokens: mean(samples.iter().map(|s| s.completion_tokens as f64)),
        truncation_rate: truncation_rate(samples),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(problem: &str, index: u32, answer: Option<&str>, reference: Option<&str>) -> Sample {
        let correct = reference.map(|r| answer.is_some_and(|a| answers_equivalent(a, r)));
        Sample {
            problem_id: problem.into(),
            sample_index: index,
            answer: answer.map(str::to_string),
            reference: reference.map(str::to_string),
            correct,
            truncated: false,
            completion_tokens: 10,
            reasoning_tokens: 4,
        }
    }

    /// p1: 4/4 correct, p2: 2/4, p3: 0/4 (one abstains), p4: 1/4.
    fn crafted() -> Vec<Sample> {
        let mut v = Vec::new();
        for (i, a) in ["7", "7", "7.0", "\\frac{14}{2}"].iter().enumerate() {
            v.push(sample("p1", i as u32, Some(a), Some("7")));
        }
        for (i, a) in ["3", "5", "3", "5"].iter().enumerate() {
            v.push(sample("p2", i as u32, Some(a), Some("3")));
        }
        for (i, a) in [Some("1"), None, Some("2"), Some("2")].iter().enumerate() {
            v.push(sample("p3", i as u32, *a, Some("9")));
        }
        for (i, a) in ["8", "6", "6", "4"].iter().enumerate() {
            v.push(sample("p4", i as u32, Some(a), Some("4")));
        }
        v
    }

    #[test]
    fn pass_at_1_and_standard_error() {
        let (pass, se) = pass_at_1(&crafted());
        // shares 1, 0.5, 0, 0.25: mean 0.4375; squared deviations sum to 0.546875;
        // se = sqrt(0.546875 / 3 / 4) = 0.2134781409…
        assert_eq!(pass, Some(0.4375));
        let se = se.unwrap();
        assert!((se - 0.213_478_140_957_5).abs() < 1e-12, "{se}");
    }

    #[test]
    fn pass_at_1_ignores_unreferenced_problems_and_needs_two_for_se() {
        let v = vec![
            sample("a", 0, Some("1"), Some("1")),
            sample("a", 1, Some("2"), Some("1")),
            sample("b", 0, Some("1"), None),
        ];
        assert_eq!(pass_at_1(&v), (Some(0.5), None));
        assert_eq!(pass_at_1(&v[2..]), (None, None));
    }

    #[test]
    fn majority_groups_equivalent_answers_and_breaks_ties_by_first_appearance() {
        // `0.5` and `\frac12` vote together (2) against `3` (2): tie, `3` came first.
        let votes = [Some("3"), Some("0.5"), None, Some("\\frac12"), Some("3")];
        assert_eq!(majority(votes), Some(("3", 2)));
        let votes = [Some("0.5"), Some("3"), Some("\\frac{1}{2}"), Some("3")];
        assert_eq!(majority(votes), Some(("0.5", 2)));
        assert_eq!(majority([None, None]), None);
        assert_eq!(majority([Some("4"), Some("5"), Some("5")]), Some(("5", 2)));
    }

    #[test]
    fn cons_at_k_with_ties_and_k() {
        let v = crafted();
        // k=4: p1 7 ✓; p2 tie 3/5 → 3 (first) ✓; p3 2 (2 votes) ✗; p4 6 ✗ → 2/4.
        assert_eq!(cons_at_k(&v, 4), Some(0.5));
        // k=2: p1 ✓; p2 tie 3/5 → 3 ✓; p3 only `1` votes ✗; p4 tie 8/6 → 8 ✗ → 2/4.
        assert_eq!(cons_at_k(&v, 2), Some(0.5));
        // k=1: p1 ✓, p2 ✓ (3), p3 ✗, p4 ✗.
        assert_eq!(cons_at_k(&v, 1), Some(0.5));
        // Flip p2's order: k=2 now ties with 5 first → ✗.
        let mut w = v.clone();
        w[4].answer = Some("5".into());
        w[5].answer = Some("3".into());
        assert_eq!(cons_at_k(&w, 2), Some(0.25));
    }

    #[test]
    fn agreement_with_the_teacher_majority() {
        let teacher = crafted();
        let majority = majority_answers(&teacher);
        assert_eq!(majority.get("p1").map(String::as_str), Some("7"));
        assert_eq!(majority.get("p2").map(String::as_str), Some("3"));
        assert_eq!(majority.get("p3").map(String::as_str), Some("2"));
        assert_eq!(majority.get("p4").map(String::as_str), Some("6"));
        // Teacher against itself: p1 4, p2 2, p3 2, p4 2 → 10/16.
        assert_eq!(agreement(&teacher, &majority), Some(10.0 / 16.0));
        // A student on p1 (2 agree, 1 no answer) and on an unknown problem (ignored).
        let student = vec![
            sample("p1", 0, Some("7"), Some("7")),
            sample("p1", 1, None, Some("7")),
            sample("p1", 2, Some("7.0"), Some("7")),
            sample("zz", 0, Some("7"), None),
        ];
        assert_eq!(agreement(&student, &majority), Some(2.0 / 3.0));
        assert_eq!(agreement(&student[3..], &majority), None);
    }

    #[test]
    fn truncation_and_token_means() {
        let mut v = crafted();
        v[0].truncated = true;
        v[5].truncated = true;
        v[9].truncated = true;
        v[1].reasoning_tokens = 20;
        v[1].completion_tokens = 26;
        assert_eq!(truncation_rate(&v), Some(3.0 / 16.0));
        let m = compute(&v, 4, &majority_answers(&v));
        assert_eq!(m.truncation_rate, Some(0.1875));
        assert_eq!(m.mean_reasoning_tokens, Some((15.0 * 4.0 + 20.0) / 16.0));
        assert_eq!(m.mean_completion_tokens, Some(11.0));
        assert_eq!(
            (m.problems, m.samples, m.scored_problems, m.k),
            (4, 16, 4, 4)
        );
        assert_eq!(m.pass_at_1, Some(0.4375));
        assert_eq!(m.cons_at_k, Some(0.5));
        assert_eq!(truncation_rate(&[]), None);
    }
}
