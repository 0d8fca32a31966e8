//! The fused training ops (`distill_models::fused`) against the differentiable compositions of
//! candle primitives they replace: same inputs, same forward values and same gradients for every
//! input, including packed documents, grouped-query attention, odd lengths and sequences longer
//! than one query block.

use candle_core::{Device, Result, Tensor, Var};
use distill_models::ops::{max_abs, max_abs_diff};
use distill_models::{fused, ops};

/// Relative tolerance on forward values and gradients.
const TOL: f32 = 1e-5;

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{name}: shapes");
    let scale = max_abs(want).unwrap().max(1e-3);
    let diff = max_abs_diff(got, want).unwrap();
    assert!(
        diff <= TOL * scale,
        "{name}: max |diff| {diff} vs max |want| {scale}"
    );
}

/// Runs `f` on fresh variables holding `inputs`, back-propagates `sum(f(..) * target)`, and
/// returns the output and each input's gradient.
fn run(
    inputs: &[&Tensor],
    target: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t))
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let grads = (out.clone() * target)?.sum_all()?.backward()?;
    let g = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
        .collect();
    Ok((out, g))
}

fn compare(
    name: &str,
    inputs: &[&Tensor],
    out_shape: &[usize],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let target = Tensor::randn(0f32, 1.0, out_shape, &Device::Cpu)?;
    let (fo, fg) = run(inputs, &target, fused)?;
    let (ro, rg) = run(inputs, &target, reference)?;
    assert_close(&format!("{name} forward"), &fo, &ro);
    for (i, (f, r)) in fg.iter().zip(&rg).enumerate() {
        assert_close(&format!("{name} grad of input {i}"), f, r);
    }
    Ok(())
}

fn rope_tables(rows: &[Vec<u32>], half: usize) -> Result<(Tensor, Tensor)> {
    let t = rows[0].len();
    let mut angles = Vec::new();
    for row in rows {
        for &p in row {
            for i in 0..half {
                let inv = 10000f32.powf(-(2.0 * i as f32) / (2 * half) as f32);
                angles.push(p as f32 * inv);
            }
        }
    }
    let a = Tensor::from_vec(angles, (rows.len(), t, half), &Device::Cpu)?;
    Ok((a.cos()?, a.sin()?))
}

/// Additive mask `[rows, 1, t, t]`, written independently of the model code: key `j` is visible
/// to query `i` when `j <= i` and no document starts in `j + 1 ..= i` (a document starts where
/// a position id does not continue its predecessor by one).
fn reference_mask(rows: &[Vec<u32>]) -> Result<Tensor> {
    let t = rows[0].len();
    let mut data = Vec::new();
    for row in rows {
        for i in 0..t {
            for j in 0..t {
                let same_doc = j <= i && (j + 1..=i).all(|m| row[m] == row[m - 1] + 1);
                data.push(if same_doc { 0f32 } else { f32::NEG_INFINITY });
            }
        }
    }
    Tensor::from_vec(data, (rows.len(), 1, t, t), &Device::Cpu)
}

/// The composed attention the model used before: rope, repeated kv heads, scaled scores,
/// additive mask, softmax, weighted values. Inputs and output `[b, t, heads, d]`.
fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let (b, t, h, d) = q.dims4()?;
    let kvh = k.dim(2)?;
    let repeat = |x: Tensor| -> Result<Tensor> {
        let n = h / kvh;
        x.unsqueeze(2)?
            .broadcast_as((b, kvh, n, t, d))?
            .reshape((b, h, t, d))
    };
    let heads_first = |x: &Tensor| x.transpose(1, 2)?.contiguous();
    let q = ops::rope_composed(&heads_first(q)?, cos, sin)?;
    let k = repeat(ops::rope_composed(&heads_first(k)?, cos, sin)?)?;
    let v = repeat(heads_first(v)?)?;
    let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(mask)?;
    ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()
}

/// Position rows made of documents of the given lengths, one row per list.
fn packed(docs: &[&[usize]]) -> Vec<Vec<u32>> {
    docs.iter()
        .map(|lens| lens.iter().flat_map(|&n| 0..n as u32).collect::<Vec<u32>>())
        .collect()
}

fn check_attention(
    name: &str,
    (b, h, kvh, d): (usize, usize, usize, usize),
    rows: Vec<Vec<u32>>,
) -> Result<()> {
    let dev = Device::Cpu;
    let t = rows[0].len();
    let (cos, sin) = rope_tables(&rows, d / 2)?;
    let mask = reference_mask(&rows)?;
    let ctx = fused::AttentionContext::new(&cos, &sin, &rows)?;
    let q = Tensor::randn(0f32, 1.0, (b, t, h, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &dev)?;
    let scale = 1.0 / (d as f64).sqrt();
    compare(
        name,
        &[&q, &k, &v],
        &[b, t, h, d],
        |x| fused::attention(&x[0], &x[1], &x[2], &ctx, scale),
        |x| reference_attention(&x[0], &x[1], &x[2], &cos, &sin, &mask),
    )
}

#[test]
fn attention_causal_gqa() -> Result<()> {
    check_attention("causal gqa", (2, 4, 2, 8), packed(&[&[37], &[37]]))
}

#[test]
fn attention_packed_documents_gqa() -> Result<()> {
    check_attention(
        "packed",
        (2, 6, 2, 16),
        packed(&[&[10, 15, 1, 11], &[3, 34]]),
    )
}

#[test]
fn attention_longer_than_a_block() -> Result<()> {
    // Documents crossing the 64-query block boundaries; one kv head for all query heads.
    check_attention("long", (2, 3, 1, 8), packed(&[&[70, 1, 60, 20], &[151]]))?;
    // Multi-head attention (no grouping), odd head count.
    check_attention("mha", (1, 3, 3, 4), packed(&[&[65, 66]]))
}

#[test]
fn attention_shared_position_row() -> Result<()> {
    // One row of positions (and rope tables) shared by a batch of 3; positions not starting
    // at zero stay one document.
    let rows = vec![(5..34u32).chain(0..8).collect::<Vec<_>>()];
    let dev = Device::Cpu;
    let (b, t, h, kvh, d) = (3, rows[0].len(), 4, 2, 8);
    let (cos, sin) = rope_tables(&rows, d / 2)?;
    let mask = reference_mask(&rows)?;
    let ctx = fused::AttentionContext::new(&cos, &sin, &rows)?;
    let q = Tensor::randn(0f32, 1.0, (b, t, h, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &dev)?;
    compare(
        "shared",
        &[&q, &k, &v],
        &[b, t, h, d],
        |x| fused::attention(&x[0], &x[1], &x[2], &ctx, 0.35),
        |x| {
            let d = x[0].dim(3)? as f64;
            // The reference divides by sqrt(d); rescale q so both use a scale of 0.35.
            let q = (&x[0] * (0.35 * d.sqrt()))?;
            reference_attention(&q, &x[1], &x[2], &cos, &sin, &mask)
        },
    )
}

#[test]
fn document_starts_follow_position_ids() {
    assert_eq!(
        fused::document_starts(&[0, 1, 2, 0, 1, 7, 8, 8]),
        vec![0, 0, 0, 3, 3, 5, 5, 7]
    );
}

#[test]
fn rms_norm_matches_composition() -> Result<()> {
    let dev = Device::Cpu;
    for (rows, dim) in [(7, 33), (130, 64)] {
        let x = Tensor::randn(0f32, 2.0, (rows, 1, dim), &dev)?;
        let w = Tensor::randn(1f32, 0.3, dim, &dev)?;
        compare(
            "rms_norm",
            &[&x, &w],
            &[rows, 1, dim],
            |a| fused::rms_norm(&a[0], &a[1], 1e-5),
            |a| ops::rms_norm_composed(&a[0], &a[1], 1e-5),
        )?;
    }
    Ok(())
}

#[test]
fn rope_matches_composition() -> Result<()> {
    let dev = Device::Cpu;
    let rows = packed(&[&[5, 8], &[13]]);
    let (cos, sin) = rope_tables(&rows, 6)?;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 13, 12), &dev)?;
    compare(
        "rope",
        &[&x],
        &[2, 3, 13, 12],
        |a| fused::rope(&a[0], &cos, &sin),
        |a| ops::rope_composed(&a[0], &cos, &sin),
    )?;
    // Shared tables (batch 1) for a batch of 2.
    let (cos1, sin1) = (cos.narrow(0, 0, 1)?, sin.narrow(0, 0, 1)?);
    compare(
        "rope shared",
        &[&x],
        &[2, 3, 13, 12],
        |a| fused::rope(&a[0], &cos1, &sin1),
        |a| ops::rope_composed(&a[0], &cos1, &sin1),
    )
}

#[test]
fn swiglu_matches_composition() -> Result<()> {
    let dev = Device::Cpu;
    let g = Tensor::randn(0f32, 3.0, (3, 5001), &dev)?;
    let u = Tensor::randn(0f32, 1.0, (3, 5001), &dev)?;
    compare(
        "swiglu",
        &[&g, &u],
        &[3, 5001],
        |a| fused::swiglu(&a[0], &a[1]),
        |a| a[0].silu()? * &a[1],
    )
}

#[test]
fn ops_route_through_fused_when_tracked() -> Result<()> {
    // Tracked CPU f32 inputs take the fused node: its gradient equals the composition's.
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (4, 16), &dev)?;
    let w = Tensor::randn(1f32, 0.1, 16, &dev)?;
    compare(
        "ops::rms_norm",
        &[&x, &w],
        &[4, 16],
        |a| ops::rms_norm(&a[0], &a[1], 1e-6),
        |a| ops::rms_norm_composed(&a[0], &a[1], 1e-6),
    )?;
    let g = Tensor::randn(0f32, 1.0, (4, 16), &dev)?;
    compare(
        "ops::swiglu",
        &[&g, &x],
        &[4, 16],
        |a| ops::swiglu(&a[0], &a[1]),
        |a| a[0].silu()? * &a[1],
    )
}
