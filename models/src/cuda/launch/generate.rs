//! Launches of `generate.cu`: decode attention over the paged KV pool, the pool writes,
//! sampling and top-k.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Tensor};

use super::*;

pub(in crate::cuda) fn decode_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    tables: &Tensor,
    lengths: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    /// Threads a block: four warps share a (row, kv head)'s keys (generate.cu's maximum).
    const DECODE_THREADS: u32 = 128;
    #[allow(clippy::too_many_arguments)]
    fn go<T: Element>(
        q: In,
        k: In,
        v: In,
        tables: In,
        lengths: In,
        geometry: [usize; 6],
        scale: f32,
    ) -> Result<CudaStorage> {
        let dev = q.0.device();
        let (qv, kv_, vv) = (view::<T>(q)?, view::<T>(k)?, view::<T>(v)?);
        let (tv, lv) = (view::<u32>(tables)?, view::<u32>(lengths)?);
        let [m, kv, n_rep, _, _, dim] = geometry;
        // SAFETY: the kernel writes every output element.
        let out = unsafe { dev.alloc::<T>(m * kv * n_rep * dim)? };
        let mut ints = [0i32; 6];
        for (slot, x) in ints.iter_mut().zip(geometry) {
            *slot = i32_of(x, "decode attention dimension")?;
        }
        let func = kernel!(dev, GENERATE, T, "decode_attention")?;
        let mut b = func.builder();
        b.arg(&qv).arg(&kv_).arg(&vv).arg(&tv).arg(&lv).arg(&out);
        for x in &ints {
            b.arg(x);
        }
        b.arg(&scale);
        // SAFETY: the arguments match the kernel's signature in generate.cu.
        unsafe { b.launch(shape(m * kv, DECODE_THREADS)) }.w()?;
        Ok(T::wrap_cuda_slice(out, dev.clone()))
    }
    let (m, heads, dim) = q.dims3()?;
    let (_, kv, block, pool_dim) = keys.dims4()?;
    let (table_m, table_width) = tables.dims2()?;
    let fits = crate::cuda::decode_attention_fits(heads, kv, dim);
    if !fits
        || pool_dim != dim
        || table_m != m
        || values.dims() != keys.dims()
        || !keys.is_contiguous()
        || !values.is_contiguous()
        || [tables, lengths].iter().any(|t| t.dtype() != DType::U32)
        || lengths.elem_count() != m
        || keys.dtype() != q.dtype()
        || values.dtype() != q.dtype()
    {
        candle_core::bail!(
            "decode attention: q {:?}, block tables {:?} and a pool of {:?} do not fit the kernel",
            q.dims(),
            tables.dims(),
            keys.dims()
        );
    }
    let geometry = [m, kv, heads / kv, table_width, block, dim];
    let out = with_storage(q, |qs| {
        with_storage(keys, |k| {
            with_storage(values, |v| {
                with_storage(tables, |t| {
                    with_storage(lengths, |l| {
                        by_dtype!(qs.0.dtype(), go(qs, k, v, t, l, geometry, scale))
                    })
                })
            })
        })
    })?;
    Ok(tensor(out, (m, heads * dim)))
}

pub(in crate::cuda) fn sample(
    logits: &Tensor,
    temperature: &[f32],
    top_p: &[f32],
    top_k: &[u32],
    uniform: &[f32],
) -> Result<Vec<u32>> {
    fn go<T: Element>(
        l: In,
        (rows, vocab): (usize, usize),
        params: [&[f32]; 3],
        top_k: &[u32],
    ) -> Result<Vec<u32>> {
        let dev = l.0.device();
        let lv = view::<T>(l)?;
        let [t, p, u] = params.map(|v| dev.clone_htod(v));
        let (t, p, u, k) = (t?, p?, u?, dev.clone_htod(top_k)?);
        // SAFETY: the kernel writes every row's id.
        let ids = unsafe { dev.alloc::<u32>(rows)? };
        let (rows_i, vocab_i) = (i32_of(rows, "rows")?, i32_of(vocab, "vocabulary")?);
        let func = kernel!(dev, GENERATE, T, "sample_rows")?;
        {
            let mut b = func.builder();
            b.arg(&lv)
                .arg(&t)
                .arg(&p)
                .arg(&k)
                .arg(&u)
                .arg(&ids)
                .arg(&rows_i)
                .arg(&vocab_i);
            // SAFETY: the arguments match the kernel's signature in generate.cu.
            unsafe { b.launch(shape(rows, THREADS)) }.w()?;
        }
        dev.clone_dtoh(&ids)
    }
    let (rows, vocab) = logits.dims2()?;
    if [temperature, top_p, uniform]
        .iter()
        .any(|v| v.len() != rows)
        || top_k.len() != rows
    {
        candle_core::bail!(
            "sample: one temperature, top-p, top-k and draw per row of {rows} expected"
        );
    }
    with_storage(logits, |l| {
        by_dtype!(
            l.0.dtype(),
            go(l, (rows, vocab), [temperature, top_p, uniform], top_k)
        )
    })
}

pub(in crate::cuda) fn top_k(logits: &Tensor, k: usize) -> Result<Tensor> {
    /// Threads a block: generate.cu's per-thread lists fill 34 KB of shared memory at 128.
    const TOP_K_THREADS: u32 = 128;
    fn go<T: Element>(l: In, (rows, vocab): (usize, usize), k: usize) -> Result<CudaStorage> {
        let dev = l.0.device();
        let lv = view::<T>(l)?;
        // SAFETY: the kernel writes k ids for every row.
        let ids = unsafe { dev.alloc::<u32>(rows * k)? };
        let ints = [
            i32_of(rows, "rows")?,
            i32_of(vocab, "vocabulary")?,
            i32_of(k, "k")?,
        ];
        let func = kernel!(dev, GENERATE, T, "top_k_rows")?;
        let mut b = func.builder();
        b.arg(&lv)
            .arg(&ids)
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2]);
        // SAFETY: the arguments match the kernel's signature in generate.cu.
        unsafe { b.launch(shape(rows, TOP_K_THREADS)) }.w()?;
        Ok(u32::wrap_cuda_slice(ids, dev.clone()))
    }
    let (rows, vocab) = logits.dims2()?;
    if k == 0 || k > crate::cuda::TOP_K_MAX || k > vocab {
        candle_core::bail!(
            "top_k: k {k} outside 1..={} for rows of {vocab}",
            crate::cuda::TOP_K_MAX
        );
    }
    let ids = with_storage(logits, |l| by_dtype!(l.0.dtype(), go(l, (rows, vocab), k)))?;
    Ok(tensor(ids, (rows, k)))
}

pub(in crate::cuda) fn set_rows(dst: &Tensor, targets: &Tensor, src: &Tensor) -> Result<()> {
    let (rows, dim) = src.dims2()?;
    if dst.dim(candle_core::D::Minus1)? != dim
        || dst.dtype() != src.dtype()
        || !src.is_contiguous()
        || !targets.is_contiguous()
        || targets.dtype() != DType::U32
        || targets.elem_count() != rows
    {
        candle_core::bail!(
            "set_rows: {rows} rows of {dim} into {:?} by {:?} targets",
            dst.dims(),
            targets.dims()
        );
    }
    dst.inplace_op1(&SetRows { src, targets })
}

/// The pool write as an in-place op on the pool tensor.
struct SetRows<'a> {
    src: &'a Tensor,
    targets: &'a Tensor,
}

impl candle_core::InplaceOp1 for SetRows<'_> {
    fn name(&self) -> &'static str {
        "cuda-set-rows"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("cuda-set-rows writes CUDA tensors only")
    }

    fn cuda_fwd(&self, dst: &mut CudaStorage, layout: &Layout) -> Result<()> {
        fn go<T: Element>(op: &SetRows, dst: &mut CudaStorage, layout: &Layout) -> Result<()> {
            let dev = dst.device().clone();
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("set_rows: the pool is not contiguous");
            };
            let (rows, dim) = op.src.dims2()?;
            let dim_i = i32_of(dim, "row length")?;
            with_storage(op.src, |s| {
                with_storage(op.targets, |t| {
                    let (sv, tv) = (view::<T>(s)?, view::<u32>(t)?);
                    let mut dv = dst.as_cuda_slice_mut::<T>()?.slice_mut(start..end);
                    let func = kernel!(dev, GENERATE, T, "set_rows")?;
                    let mut b = func.builder();
                    b.arg(&sv).arg(&tv).arg(&mut dv).arg(&rows).arg(&dim_i);
                    // SAFETY: the arguments match the kernel's signature in generate.cu; the
                    // targets are rows of the pool (the step computed them from its blocks).
                    unsafe { b.launch(elementwise(rows * dim)) }.w()?;
                    Ok(())
                })
            })
        }
        by_dtype!(dst.dtype(), go(self, dst, layout))
    }
}
