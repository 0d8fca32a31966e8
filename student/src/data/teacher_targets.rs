//! Where a sample's stored teacher distributions (`generate --logprobs`) fall among the
//! student's tokens of the same conversation.
//!
//! The corpus stores, per generated token, the teacher's top-k distribution for that token;
//! training sees the conversation re-rendered with the student's chat template and re-tokenised.
//! With the teacher's tokenizer (logit distillation compares ids, so the student must share it),
//! the sampled tokens reappear as one contiguous run inside the trained part of the document:
//! the token at document index `p + i` is generated token `i`, so the position that predicts it
//! (`p + i − 1`) gets the teacher's distribution `i`. The end-of-turn token the teacher emitted
//! maps onto the template's when both are the same id. A document cut by `max_seq_len` keeps
//! the targets of the tokens it kept.
//!
//! Where the student's tokens part from the teacher's (a sampled token sequence the tokenizer
//! would split differently, invalid UTF-8 re-encoded), targets stop; a run that is not found at
//! all (a corpus from another tokenizer) aligns nothing: that document trains on the
//! cross-entropy alone. The data report counts both.

use distill_corpus::logprobs::TokenLogprobs;
use half::f16;

use crate::batch::TeacherTargets;

/// How far after the first trained token the teacher's first token may sit (the prefill the
/// teacher was given, `<think>\n`, comes first).
const SEARCH_WINDOW: usize = 32;

/// Consecutive matching tokens below which a run is not taken for the teacher's (a chance
/// match of one or two ids would put distributions at the wrong positions).
const MIN_RUN: usize = 4;

/// The targets of `lp` at positions of a document of `ids` trained from `boundary` on, or
/// `None` when the teacher's tokens are not found there. `stop_ids`: the end-of-turn ids.
///
/// The teacher's first token is looked for in the first [`SEARCH_WINDOW`] trained positions;
/// from the best start, targets cover the tokens up to the first one where the student's
/// tokens part from the teacher's (a sample with invalid UTF-8 is re-tokenised differently
/// from there on), or to the end of a document cut by `max_seq_len`.
pub fn align(
    ids: &[u32],
    boundary: usize,
    lp: &TokenLogprobs,
    stop_ids: &[u32],
) -> Option<TeacherTargets> {
    let generated = lp.token_ids();
    let ends_turn = generated.last().is_some_and(|t| stop_ids.contains(t));
    let body = &generated[..generated.len() - usize::from(ends_turn)];
    let from = boundary.max(1);
    let common = |p: usize| {
        ids[p..]
            .iter()
            .zip(body)
            .take_while(|(a, b)| a == b)
            .count()
    };
    let (start, mut n) = (from..ids.len().min(from + SEARCH_WINDOW))
        .map(|p| (p, common(p)))
        .fold(None, |best: Option<(usize, usize)>, (p, n)| match best {
            Some((_, m)) if m >= n => best,
            _ if n == 0 => best,
            _ => Some((p, n)),
        })?;
    if n < MIN_RUN.min(body.len()).min(ids.len() - start) {
        return None;
    }
    if ends_turn && n == body.len() && ids.get(start + n) == generated.last() {
        n += 1;
    }
    let mut targets = TeacherTargets::new(lp.k());
    for i in 0..n {
        targets.positions.push((start + i - 1) as u32);
        let (top_ids, top_logprobs) = lp.top(i);
        targets.ids.extend_from_slice(top_ids);
        targets
            .logprobs
            .extend(top_logprobs.map(|x| f16::from_f32(x).to_bits()));
    }
    Some(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logprobs(tokens: &[u32], k: usize) -> TokenLogprobs {
        let mut lp = TokenLogprobs::new(k);
        for (i, &t) in tokens.iter().enumerate() {
            let top: Vec<(u32, f32)> = (0..k as u32)
                .map(|j| (t + j, -0.5 * (j + 1) as f32 - i as f32))
                .collect();
            lp.push(t, top[0].1, &top).unwrap();
        }
        lp
    }

    #[test]
    fn the_generated_run_maps_onto_the_positions_that_predict_it() {
        // prompt 1 2 3 | prefill 4 | generated 7 8 9 then end-of-turn 0 | template tail 5
        let ids = [1, 2, 3, 4, 7, 8, 9, 0, 5];
        let lp = logprobs(&[7, 8, 9, 0], 2);
        let t = align(&ids, 3, &lp, &[0]).unwrap();
        assert_eq!(t.positions, vec![3, 4, 5, 6]);
        assert_eq!(t.ids, vec![7, 8, 8, 9, 9, 10, 0, 1]);
        assert_eq!(t.logprobs[0], f16::from_f32(-0.5).to_bits());
        // Another end-of-turn id in the template: that position gets no target.
        let ids = [1, 2, 3, 4, 7, 8, 9, 6, 5];
        assert_eq!(align(&ids, 3, &lp, &[0]).unwrap().positions, vec![3, 4, 5]);
        // Cut by max_seq_len after the second generated token.
        let t = align(&ids[..6], 3, &lp, &[0]).unwrap();
        assert_eq!(t.positions, vec![3, 4]);
        assert_eq!(t.ids.len(), 4);
        // Tokens the student's tokenizer splits differently from the third on: the first two
        // align, and nothing after.
        let lp = logprobs(&[7, 8, 9, 11, 12, 0], 2);
        let t = align(&[1, 2, 3, 4, 7, 8, 9, 11, 13, 12, 0], 3, &lp, &[0]).unwrap();
        assert_eq!(t.positions, vec![3, 4, 5, 6]);
        // Too short a common run is no alignment.
        assert!(align(&[1, 2, 3, 4, 7, 8, 5, 5, 5, 0], 3, &lp, &[0]).is_none());
        // The run is only looked for in the trained part.
        assert!(align(&[7, 8, 9, 0, 1], 2, &logprobs(&[7, 8], 1), &[0]).is_none());
    }
}
