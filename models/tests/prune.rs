//! Depth pruning against transformers: `fixtures/tiny-qwen2-4layers` (4 layers, saved by
//! transformers 5 with `layer_types` and `max_window_layers`) cut to layers 0, 2 and 3 must give
//! the logits transformers gives after cutting `model.model.layers` the same way
//! (`fixtures/make_pruned_fixture.py`), and the folder written from it must say 3 layers
//! everywhere transformers looks (`make_pruned_fixture.py --check FOLDER` loads one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use distill_models::prune::{keep_layers, LayerList};
use distill_models::{Checkpoint, Config};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-4layers")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn logits(folder: &Path, input: &Tensor) -> Tensor {
    let model = Checkpoint::open(folder)
        .unwrap()
        .load_model(&Device::Cpu)
        .unwrap();
    model.forward(input, None).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    distill_models::ops::max_abs_diff(a, b).unwrap()
}

#[test]
fn kept_layers_give_transformers_logits_and_a_consistent_config() {
    let r = reference();
    let input = r["input_ids"].to_dtype(DType::U32).unwrap();
    let whole = max_diff(&logits(&fixture(), &input), &r["logits"]);
    assert!(whole < 1e-4, "the whole model differs by {whole}");

    let keep: Vec<usize> = r["keep"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let keep = LayerList::new(keep).unwrap();
    assert_eq!(keep.to_string(), "0,2-3");
    let ckpt = Checkpoint::open(&fixture()).unwrap();
    let mut config = ckpt.config().clone();
    let mut weights = ckpt.tensors(&Device::Cpu).unwrap();
    keep_layers(&mut config, &mut weights, &keep).unwrap();
    // Kept layer 2 is now layer 1, with layer 2's tensors; nothing of the old layer 1 is left.
    let original = ckpt.tensors(&Device::Cpu).unwrap();
    let name = |l: usize| format!("model.layers.{l}.mlp.down_proj.weight");
    assert_eq!(max_diff(&weights[&name(1)], &original[&name(2)]), 0.0);
    assert!(!weights.contains_key(&name(3)));
    let per_layer = original
        .keys()
        .filter(|n| n.starts_with("model.layers.1."))
        .count();
    assert_eq!(weights.len(), original.len() - per_layer);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    distill_models::checkpoint::save_hf_folder(
        &out,
        &config,
        ckpt.generation_config(),
        None,
        weights,
        usize::MAX,
    )
    .unwrap();
    let d = max_diff(&logits(&out, &input), &r["pruned_logits"]);
    assert!(
        d < 1e-4,
        "the pruned model differs from transformers' by {d}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["num_hidden_layers"], 3);
    // transformers 5 refuses a `layer_types` longer than `num_hidden_layers`.
    assert_eq!(json["layer_types"].as_array().unwrap().len(), 3);
    // Layers below 2 attended fully; of the kept ones, only layer 0 is.
    assert_eq!(json["max_window_layers"], 1);
}

#[test]
fn a_layer_the_model_lacks_is_named() {
    let ckpt = Checkpoint::open(&fixture()).unwrap();
    let mut config: Config = ckpt.config().clone();
    let mut weights = ckpt.tensors(&Device::Cpu).unwrap();
    let err = keep_layers(&mut config, &mut weights, &"0-2,4".parse().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string().lines().count(),
        1,
        "one line, naming the layer and the count: {err}"
    );
    assert!(
        err.to_string()
            .contains("cannot keep layer 4: the model has 4 layers (0-3)"),
        "{err}"
    );
}
