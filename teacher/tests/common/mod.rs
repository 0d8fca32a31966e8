//! What the teacher crate's test binaries share: the reference their engines' log-probabilities
//! are checked against.

use candle_core::{Tensor, D};
use distill_models::Model;

/// Log-softmax rows of one forward of `model` over `ids` (no cache): row `i` is the
/// distribution of the token after `ids[..=i]`.
pub fn log_softmax_rows(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let input = Tensor::new(ids, model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2()
        .unwrap()
}
