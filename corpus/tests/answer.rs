//! Answer extraction, normalization and equivalence: hand-made tables of tricky cases, cases
//! that must stay different, and every MATH-500 reference answer from ../shared/data.

use std::path::PathBuf;

use distill_corpus::answer::{answers_equivalent, extract_answer, normalize_answer, verify};

fn shared_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

#[test]
fn extraction_table() {
    let cases: &[(&str, Option<&str>)] = &[
        ("so the answer is $\\boxed{42}$.", Some("42")),
        ("\\boxed{\\frac{1}{2}}", Some("\\frac{1}{2}")),
        // Nested braces.
        (
            "Thus $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
            Some("\\left( 3, \\frac{\\pi}{2} \\right)"),
        ),
        (
            "\\boxed{\\{1\\pm\\sqrt{5},-2\\}}",
            Some("\\{1\\pm\\sqrt{5},-2\\}"),
        ),
        // Multiple boxes: the last one wins.
        ("First \\boxed{3}, then corrected: \\boxed{4}.", Some("4")),
        // An empty box is skipped in favour of an earlier one...
        ("\\boxed{7} and then \\boxed{}", Some("7")),
        // ...and boxes that are all empty give no answer rather than a guess.
        ("I think 12 apples. \\boxed{}", None),
        // A box cut off by the length limit is skipped.
        ("\\boxed{5} so \\boxed{\\frac{1}{", Some("5")),
        // Without braces, and `\fbox`.
        ("the answer is \\boxed 5.", Some("5.")),
        ("$\\boxed 12$", Some("12")),
        ("\\fbox{-3}", Some("-3")),
        ("\\boxed{1} then \\fbox{2}", Some("2")),
        ("\\boxed{ 9 }", Some("9")),
        // Phrases when there is no box.
        ("So the final answer is 18.", Some("18")),
        (
            "The final answer is $\\frac{3}{4}$ cups.",
            Some("\\frac{3}{4}"),
        ),
        ("**Final Answer:** 1,234", Some("1,234")),
        ("Answer: 3.5\nThat's all.", Some("3.5")),
        ("The answer is <<8=8>>8.\n#### 8", Some("8")),
        ("#### 1,234", Some("1,234")),
        (
            "The answer is 7.\n\n#### Step 2: check\nIt holds for 3 cases",
            Some("7"),
        ),
        ("The answer is: -7. Done.", Some("-7")),
        (
            "Let me check the answer again. It was 12 then 15",
            Some("15"),
        ),
        // The last number as a fallback.
        (
            "She has 3 apples and buys 4 more, so 7 in total.",
            Some("7"),
        ),
        ("The change is -12 degrees", Some("-12")),
        ("Total: $1,234,567.89!", Some("1,234,567.89")),
        ("ratio 3/4", Some("3/4")),
        ("no numbers here", None),
        // An unclosed box before a closed one, and a closed one inside an unclosed one.
        ("\\boxed{1} \\boxed{ {2} \\boxed{ 3", Some("1")),
        ("\\boxed{x \\boxed{y}", Some("y")),
        // Escaped braces and `\\` do not count as braces.
        ("\\boxed{\\{1, 2\\}}", Some("\\{1, 2\\}")),
        ("\\boxed{a \\\\ b}", Some("a \\\\ b")),
        // `\boxedsymbol` is not a box.
        ("\\boxedsymbol{4} so 5", Some("5")),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(
            extract_answer(text).as_deref(),
            *want,
            "extract_answer({text:?})"
        );
    }
}

#[test]
fn normalization_table() {
    let cases: &[(&str, &str)] = &[
        ("1,234", "1234"),
        ("10,\\!080", "10080"),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
        ("\\$32,\\!348", "32348"),
        ("$18.00", "18"),
        ("50\\%", "50"),
        ("50%", "50"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("90°", "90"),
        ("5.4 \\text{ cents}", "5.4"),
        ("864 \\mbox{ inches}^2", "864"),
        ("15\\mbox{ cm}^2", "15"),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
        ("12 dollars", "12"),
        ("\\text{Evelyn}", "Evelyn"),
        ("\\text{(C)}", "C"),
        ("\\dfrac{17}{50}", "\\frac{17}{50}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac 59", "\\frac{5}{9}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("x = 5", "5"),
        ("y = 2x + 3", "2x+3"),
        ("x \\in [-2,7]", "[-2,7]"),
        ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0"),
        ("\\cot x", "\\cot x"),
        ("3 \\sqrt{13}", "3\\sqrt{13}"),
        ("11\\sqrt2", "11\\sqrt{2}"),
        (".0000672", "0.0000672"),
        ("-0.0", "0"),
        ("+7", "7"),
        ("42.", "42"),
        ("{5}", "5"),
        ("4210_{5}", "4210_{5}"),
        ("52_8", "52_{8}"),
        ("\\boxed{7}", "7"),
        ("−3", "-3"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_answer(raw), *want, "normalize_answer({raw:?})");
    }
}

#[test]
fn equivalent_pairs() {
    let cases: &[(&str, &str)] = &[
        // Fractions and decimals, by rational value.
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("\\frac34", "3/4"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac{6}{8}", "\\frac34"),
        ("-\\frac{1}{2}", "-0.5"),
        ("\\frac{-1}{2}", "-\\frac12"),
        ("1\\frac{4}{5}", "1.8"),
        ("137 \\frac{1}{2}", "137.5"),
        ("0.5", ".5"),
        // Commas, currency, percentages, units.
        ("1,234", "1234"),
        ("\\$1,234.00", "1234"),
        ("18", "$18"),
        ("25\\%", "25"),
        ("5.4 \\text{ cents}", "5.4"),
        ("5.4", "5.4 cents"),
        ("90^\\circ", "90"),
        ("90 degrees", "90^{\\circ}"),
        ("8 \\text{ cm}", "8"),
        ("15\\mbox{ cm}^2", "15"),
        ("12 \\text{ ways}", "12"),
        ("\\sqrt{53} \\approx 7.28", "\\sqrt{53}"),
        ("\\$18.90", "18.9"),
        // Negative numbers.
        ("-50", "-50.0"),
        ("−12", "-12"),
        // Scientific notation.
        ("6.72 \\times 10^{-5}", "0.0000672"),
        ("6.72e-5", ".0000672"),
        ("1.2 \\cdot 10^3", "1200"),
        // Irrationals, by value within the relative tolerance.
        ("\\sqrt{2}", "\\sqrt2"),
        ("2\\sqrt{5}", "\\sqrt{20}"),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
        ("\\frac{\\pi}{2}", "\\pi/2"),
        ("1.41421356237", "\\sqrt{2}"),
        // Variables and prefixes.
        ("x = 5", "5"),
        ("x=5", "x = 5"),
        ("y = -2x", "-2x"),
        // Tuples, intervals, matrices element by element.
        (
            "(3, \\frac{\\pi}{2})",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("(0.5, -13)", "\\left( \\frac{3}{2} - 1, -13 \\right)"),
        ("(3,4]", "\\left(3, 4\\right]"),
        ("(-\\infty, 0]", "(-\\infty,0]"),
        (
            "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
            "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}",
        ),
        // Unordered solution sets.
        ("1,-2", "-2, 1"),
        ("3, 5, 7", "7,5,3"),
        ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1-\\sqrt5, 1+\\sqrt5"),
        ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
        ("3 \\pm 2 \\sqrt{2}", "3+2\\sqrt2,3-2\\sqrt2"),
        ("1,-2", "x=1, x=-2"),
        ("\\frac{14}{3}", "4\\frac{2}{3}"),
        ("3\\sqrt{13}", "\\sqrt{117}"),
        (
            "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]",
            "[\\pi^2/8, 5\\pi^2/4]",
        ),
        ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}"),
        ("(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)"),
        // Words and choices.
        ("\\text{Evelyn}", "evelyn"),
        ("\\text{(C)}", "C"),
        ("(C)", "\\textbf{C}"),
        // Spaces and LaTeX spacing.
        ("6 - 5i", "6-5i"),
        ("3\\,\\sqrt{13}", "3 \\sqrt{13}"),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ];
    for (a, b) in cases {
        assert!(answers_equivalent(a, b), "{a:?} should equal {b:?}");
        assert!(answers_equivalent(b, a), "{b:?} should equal {a:?}");
    }
}

#[test]
fn different_pairs() {
    let cases: &[(&str, &str)] = &[
        ("12", "21"),
        ("1/2", "2"),
        ("0.5", "0.05"),
        ("\\frac{1}{3}", "0.33"),
        ("\\frac{1}{3}", "0.333333"),
        ("1000000", "1000001"),
        ("-5", "5"),
        ("\\frac{3}{4}", "\\frac{4}{3}"),
        ("50\\%", "0.5"),
        ("\\sqrt{2}", "1.414"),
        ("\\sqrt{2}", "2"),
        ("\\pi", "3.14"),
        ("(1,2)", "(2,1)"),
        ("10", "10.000001"),
        ("6+9i", "6-9i"),
        ("\\text{(C)}", "D"),
        ("x=1, x=-2", "1,2"),
        ("\\text{east}", "west"),
        ("(3,4]", "(3,4)"),
        ("[1,2]", "1,2"),
        ("1,2", "1,2,3"),
        ("1,2,2", "1,1,2"),
        ("\\text{Evelyn}", "Navin"),
        ("x+1", "x-1"),
        ("3R^2", "3r^2"),
        ("2", ""),
        ("", ""),
        ("12", "1,2"),
        ("1\\frac{4}{5}", "\\frac{4}{5}"),
        (
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}",
        ),
    ];
    for (a, b) in cases {
        assert!(!answers_equivalent(a, b), "{a:?} should differ from {b:?}");
        assert!(!answers_equivalent(b, a), "{b:?} should differ from {a:?}");
    }
}

#[test]
fn verify_reports_answer_and_verdict() {
    let (answer, correct) = verify("<think>ignored</think> so \\boxed{18}", Some("18"));
    assert_eq!(answer.as_deref(), Some("18"));
    assert_eq!(correct, Some(true));
    assert_eq!(
        verify("\\boxed{17}", Some("18")),
        (Some("17".into()), Some(false))
    );
    assert_eq!(verify("\\boxed{17}", None), (Some("17".into()), None));
    assert_eq!(verify("no answer", Some("18")), (None, Some(false)));
    assert_eq!(verify("", None), (None, None));
    // A reference written as a boxed solution is read through its box.
    assert_eq!(
        verify("\\boxed{0.75}", Some("so $\\boxed{\\frac34}$")).1,
        Some(true)
    );
}

#[test]
fn hostile_input_does_not_panic() {
    let nasty = [
        "\\boxed{",
        "\\boxed",
        "\\boxed{\\}",
        "}}}{{{",
        "\\frac{",
        "\\sqrt[",
        "\\text{",
        "^_^",
        "\\",
        "ü\\ü\\boxed{é}",
        "\\frac\\",
        "\\sqrt\\é",
        "x^é",
        "((((((((((((((((((((((((((((((1",
        "\\begin{pmatrix}\\end{pmatrix}",
    ];
    for a in nasty {
        for b in nasty {
            let _ = answers_equivalent(a, b);
        }
        let _ = extract_answer(a);
        let _ = normalize_answer(a);
    }
    let deep = "{".repeat(5000) + "1" + &"}".repeat(5000);
    let _ = answers_equivalent(&deep, "1");
    // Thousands of empty or unclosed boxes stay cheap and still find the real answer.
    let many = "\\boxed{5}".to_string() + &"\\boxed{} \\boxed{".repeat(20_000);
    assert_eq!(extract_answer(&many).as_deref(), Some("5"));
    let long_list = vec!["1"; 2000].join(",");
    assert!(answers_equivalent(&long_list, &long_list));
    let a: Vec<String> = (0..3000).map(|i| format!("\\frac{{{i}}}{{7}}")).collect();
    let b: Vec<String> = (0..3000).map(|i| format!("{i}/7")).collect();
    let start = std::time::Instant::now();
    assert!(answers_equivalent(&a.join(","), &b.join(",")));
    let mut reversed = b.clone();
    reversed.reverse();
    assert!(!answers_equivalent(&a.join(","), &reversed.join(",")));
    assert!(
        start.elapsed().as_secs() < 5,
        "long lists took {:?}",
        start.elapsed()
    );
}

/// The required self-check: every MATH-500 reference, written as `\boxed{answer}` inside a
/// solution, verifies against itself.
#[test]
fn every_math500_answer_verifies_against_itself() {
    let path = shared_data().join("math500/test.jsonl");
    let text = std::fs::read_to_string(&path).expect("MATH-500 is in ../shared/data");
    let mut n = 0;
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).expect("valid jsonl");
        let answer = row["answer"].as_str().expect("answer is a string");
        let completion = format!("... so the answer is $\\boxed{{{answer}}}$.");
        assert_eq!(
            verify(&completion, Some(answer)),
            (Some(answer.trim().to_string()), Some(true)),
            "{answer:?}"
        );
        assert!(!normalize_answer(answer).is_empty(), "{answer:?}");
        n += 1;
    }
    assert_eq!(n, 500);
}

/// Each MATH-500 answer must differ from the answer of the next problem unless the two are
/// genuinely the same value, which catches a normalizer that collapses answers together.
#[test]
fn math500_answers_are_not_all_alike() {
    let path = shared_data().join("math500/test.jsonl");
    let text = std::fs::read_to_string(&path).expect("MATH-500 is in ../shared/data");
    let answers: Vec<String> = text
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).expect("valid jsonl");
            row["answer"].as_str().expect("answer").to_string()
        })
        .collect();
    let mut equal_pairs = 0;
    for pair in answers.windows(2) {
        if answers_equivalent(&pair[0], &pair[1]) {
            equal_pairs += 1;
            // Only numerically identical neighbours may compare equal.
            assert_eq!(
                normalize_answer(&pair[0]),
                normalize_answer(&pair[1]),
                "{pair:?}"
            );
        }
    }
    assert!(
        equal_pairs < 25,
        "{equal_pairs} neighbouring answers compare equal"
    );
}

/// The datasets' own worked solutions verify against their references: MATH-500 through the
/// last box of each solution, GSM8K through the number on its `#### ` line (no box, no phrase).
#[test]
fn dataset_solutions_verify_against_their_references() {
    let math = std::fs::read_to_string(shared_data().join("math500/test.jsonl"))
        .expect("MATH-500 is in ../shared/data");
    for line in math.lines() {
        let row: serde_json::Value = serde_json::from_str(line).expect("valid jsonl");
        let (solution, answer) = (row["solution"].as_str(), row["answer"].as_str());
        let (solution, answer) = (solution.expect("solution"), answer.expect("answer"));
        assert_eq!(verify(solution, Some(answer)).1, Some(true), "{answer:?}");
    }
    for split in ["train", "test"] {
        let gsm = std::fs::read_to_string(shared_data().join(format!("gsm8k/{split}.jsonl")))
            .expect("GSM8K is in ../shared/data");
        let mut n = 0;
        for line in gsm.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("valid jsonl");
            let solution = row["answer"].as_str().expect("answer");
            let reference = solution
                .rsplit("#### ")
                .next()
                .expect("a #### line")
                .replace(',', "");
            assert_eq!(
                verify(solution, Some(&reference)).1,
                Some(true),
                "{solution:?}"
            );
            // And a different number does not verify.
            let wrong = format!("{}1", reference);
            assert_eq!(
                verify(solution, Some(&wrong)).1,
                Some(false),
                "{solution:?}"
            );
            n += 1;
        }
        assert!(n > 1000);
    }
}
