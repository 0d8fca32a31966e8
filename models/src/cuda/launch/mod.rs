//! Launches of the kernels of `train.cu`, `generate.cu` and `flash_attention.cu` on candle's CUDA
//! device: buffers in and out, launch shapes, the f32/bf16 entry point of each kernel, one
//! submodule per `.cu` file; here what they share (the PTX modules, storage views, launch
//! shapes). The kernels of `train.cu` and `generate.cu` are correct for any shape (see the
//! header of `train.cu`); the shapes here are for speed.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{kernel_name, CudaDType};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use half::bf16;

/// The PTX modules (built by models/build.rs) and the names candle's device caches them under.
const TRAIN: (&str, &str) = (
    "distill-train",
    include_str!(concat!(env!("OUT_DIR"), "/train.ptx")),
);
const GENERATE: (&str, &str) = (
    "distill-generate",
    include_str!(concat!(env!("OUT_DIR"), "/generate.ptx")),
);
const FLASH: (&str, &str) = (
    "distill-flash-attention",
    include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx")),
);
/// Threads per block of the elementwise kernels and of row kernels over wide rows.
const THREADS: u32 = 256;
/// More blocks than this walk their rows or elements in strides.
const MAX_BLOCKS: usize = 65_535;
/// Blocks of the RMSNorm backward: each sums the weight gradient of its rows, then one pass
/// adds the blocks' sums (`[blocks, dim]` f32 in between).
const NORM_GRAD_BLOCKS: usize = 1024;

/// A storage and its layout, as a custom op receives them.
type In<'a> = (&'a CudaStorage, &'a Layout);

/// Calls `$f::<T>(args)` with T the Rust type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            other => candle_core::bail!("the CUDA kernels take f32 or bf16, not {other:?}"),
        }
    };
}

trait Element: CudaDType + DeviceRepr + WithDType {}
impl<T: CudaDType + DeviceRepr + WithDType> Element for T {}

fn shape(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elementwise(n: usize) -> LaunchConfig {
    shape(n.div_ceil(THREADS as usize), THREADS)
}

/// Threads for a block per row of `dim`: about four elements a thread, 32 to 256.
fn row_threads(dim: usize) -> u32 {
    dim.div_ceil(4)
        .next_power_of_two()
        .clamp(32, THREADS as usize) as u32
}

/// The contiguous elements of a storage as the kernel's typed buffer.
fn view<'a, T: Element>((storage, layout): In<'a>) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("the CUDA kernels take contiguous tensors");
    };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// Runs `f` on a CUDA tensor's storage and layout.
fn with_storage<R>(t: &Tensor, f: impl FnOnce(In) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => f((s, layout)),
        _ => candle_core::bail!("the CUDA kernels take tensors on a CUDA device"),
    }
}

fn tensor(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// Kernel `$name` of `$module` (`TRAIN`, `GENERATE`) for element type `$t` (its `_f32` or
/// `_bf16` entry point), loaded into `$dev` on first use.
macro_rules! kernel {
    ($dev:expr, $module:expr, $t:ty, $name:literal) => {
        $dev.get_or_load_custom_func(&kernel_name::<$t>($name), $module.0, $module.1)
    };
}

/// Rows and row length of a layout (the last dimension is the row).
fn rows_dim(layout: &Layout) -> Result<(usize, usize)> {
    let dim = layout.dims().last().copied().unwrap_or(0);
    let n = layout.shape().elem_count();
    if dim == 0 {
        candle_core::bail!("the CUDA kernels take rows of at least one element");
    }
    Ok((n / dim, dim))
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{what} {n} is over i32")))
}

mod flash;
mod generate;
mod train;

pub(super) use flash::*;
pub(super) use generate::*;
pub(super) use train::*;
