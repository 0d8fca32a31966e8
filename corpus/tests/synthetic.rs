//! The built-in arithmetic task: determinism, exact answers within bounds, solutions that
//! verify, and prompts that state the operands the solution uses.

use std::collections::HashSet;

use distill_corpus::answer::verify;
use distill_corpus::synthetic::ArithmeticTask;

/// One parsed solution line `a op o = r`.
fn parse_steps(solution: &str) -> Vec<(u64, char, u64, u64)> {
    let body = solution
        .split("The answer is")
        .next()
        .expect("split yields at least one part");
    body.split(". ")
        .map(|eq| eq.trim().trim_end_matches('.'))
        .filter(|eq| !eq.is_empty())
        .map(|eq| {
            let parts: Vec<&str> = eq.split(' ').collect();
            assert_eq!(parts.len(), 5, "{eq:?}");
            assert_eq!(parts[3], "=", "{eq:?}");
            let op = parts[1].chars().next().expect("an operator");
            (
                parts[0].parse().expect("a number"),
                op,
                parts[2].parse().expect("a number"),
                parts[4].parse().expect("a number"),
            )
        })
        .collect()
}

fn check_task(task: &ArithmeticTask, n: usize, seed: u64) -> HashSet<char> {
    let mut ops = HashSet::new();
    let problems = task.generate(n, seed);
    assert_eq!(problems.len(), n);
    for (i, p) in problems.iter().enumerate() {
        assert_eq!(p.id, format!("arith-{seed}-{i}"));
        assert_eq!(p.source, "arithmetic");
        let solution = p.solution.as_deref().expect("a worked solution");
        let reference = p.reference_answer.as_deref().expect("an exact answer");
        let steps = parse_steps(solution);
        assert!(
            task.steps.contains(&steps.len()),
            "{} steps in {solution:?}",
            steps.len()
        );
        let start = steps[0].0;
        assert!(task.start.contains(&(start as u32)), "{start}");
        assert!(
            p.prompt.contains(&format!(" {start} ")),
            "{:?} does not state {start}",
            p.prompt
        );
        let mut value = start;
        for &(a, op, o, r) in &steps {
            assert_eq!(a, value, "steps chain in {solution:?}");
            assert!(task.operand.contains(&(o as u32)), "{o} in {solution:?}");
            assert!(
                p.prompt.contains(&format!(" {o} ")) || p.prompt.contains(&format!(" {o}.")),
                "{:?} lacks {o}",
                p.prompt
            );
            let exact = match op {
                '+' => a + o,
                '-' => a.checked_sub(o).expect("no negative values"),
                '*' => a * o,
                '/' => {
                    assert_eq!(a % o, 0, "inexact division in {solution:?}");
                    a / o
                }
                other => panic!("unknown operator {other}"),
            };
            assert_eq!(r, exact, "{solution:?}");
            assert!(
                (1..=u64::from(task.max_value)).contains(&r),
                "{r} out of range in {solution:?}"
            );
            ops.insert(op);
            value = r;
        }
        assert_eq!(reference, value.to_string());
        assert!(
            solution.ends_with(&format!("\\boxed{{{value}}}.")),
            "{solution:?}"
        );
        assert_eq!(
            verify(solution, Some(reference)),
            (Some(reference.to_string()), Some(true))
        );
        // A wrong answer must not verify.
        assert_eq!(
            verify(solution, Some(&(value + 1).to_string())).1,
            Some(false)
        );
        assert!(p.prompt.ends_with('?'), "{:?}", p.prompt);
    }
    ops
}

#[test]
fn demo_task_answers_are_exact_and_bounded() {
    let ops = check_task(&ArithmeticTask::default(), 2000, 7);
    assert_eq!(ops.len(), 4, "all four operations occur: {ops:?}");
}

#[test]
fn level_zero_is_exact_and_bounded() {
    let ops = check_task(&ArithmeticTask::with_difficulty(0), 2000, 3);
    assert_eq!(ops.len(), 4, "all four operations occur: {ops:?}");
}

#[test]
fn harder_levels_are_exact_and_bounded() {
    for level in [2, 3, 5] {
        let task = ArithmeticTask::with_difficulty(level);
        check_task(&task, 300, u64::from(level));
        let longest = task
            .generate(300, 1)
            .iter()
            .map(|p| parse_steps(p.solution.as_deref().unwrap_or("")).len())
            .max();
        assert_eq!(longest, Some(*task.steps.end()));
    }
}

#[test]
fn same_seed_same_problems() {
    let task = ArithmeticTask::default();
    assert_eq!(task.generate(200, 42), task.generate(200, 42));
    // Problem i does not depend on how many are generated.
    assert_eq!(task.generate(50, 42)[..], task.generate(200, 42)[..50]);
    assert_eq!(task.problem(42, 17), task.generate(20, 42)[17]);
}

#[test]
fn different_seeds_differ() {
    let task = ArithmeticTask::default();
    let a: Vec<String> = task
        .generate(200, 1)
        .into_iter()
        .map(|p| p.prompt)
        .collect();
    let b: Vec<String> = task
        .generate(200, 2)
        .into_iter()
        .map(|p| p.prompt)
        .collect();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(same < 5, "{same} of 200 prompts coincide across seeds");
    // Within one seed, problems are varied rather than repeated.
    let distinct: HashSet<&String> = a.iter().collect();
    assert!(distinct.len() > 190, "{} distinct of 200", distinct.len());
}

#[test]
fn default_is_difficulty_one_and_round_trips_through_serde() {
    let task = ArithmeticTask::default();
    assert_eq!(task, ArithmeticTask::with_difficulty(1));
    let json = serde_json::to_string(&task).expect("serializable");
    let back: ArithmeticTask = serde_json::from_str(&json).expect("deserializable");
    assert_eq!(back, task);
}
