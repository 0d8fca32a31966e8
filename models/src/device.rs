//! Where model maths runs and in which float type: the one place every stage resolves
//! `--device auto|cpu|cuda|cuda:N` and `--dtype auto|f32|bf16|f16|bf16-pure` into a candle
//! [`Device`] and the dtypes a model is built with.
//!
//! Defaults follow what PyTorch users get: on the CPU everything is f32 (the fused CPU ops and
//! the quantized kernels are f32); on a GPU training runs bf16 compute over f32 master weights
//! and f32 AdamW moments (PyTorch AMP, TRL's `bf16=True`), and inference runs a checkpoint in
//! the dtype it is stored in.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU when the binary has CUDA and one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Device(format!(
                "unknown device `{s}` (expected `auto`, `cpu`, `cuda` or `cuda:N`)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Serde as the string the flag takes (`"cuda:1"`, `"bf16-pure"`), through `Display`/`FromStr`.
macro_rules! serde_as_flag_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_flag_string!(DeviceChoice);

/// Whether this binary was built with the `cuda` cargo feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// A resolved device, its description for the user (`cuda:0 (NVIDIA H200, 139.8 GiB, compute
/// 9.0)`, `cpu`), and why `auto` fell back to the CPU when it did.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub description: String,
    pub fallback: Option<String>,
}

impl Placement {
    /// `description`, followed by the fallback reason in parentheses when there is one.
    pub fn explained(&self, what: &str) -> String {
        match &self.fallback {
            Some(why) => format!("{} {what} ({why})", self.description),
            None => format!("{} {what}", self.description),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. `auto` never fails: without a usable GPU it picks the CPU and says why.
    pub fn resolve(self) -> Result<Placement> {
        match self {
            Self::Cpu => Ok(cpu(None)),
            Self::Cuda(n) => open_cuda(n),
            Self::Auto if !CUDA_BUILT => Ok(cpu(Some("this binary is built without CUDA".into()))),
            Self::Auto => match open_cuda(0) {
                Ok(p) => Ok(p),
                Err(e) => Ok(cpu(Some(format!("no usable GPU: {e}")))),
            },
        }
    }
}

fn cpu(fallback: Option<String>) -> Placement {
    Placement {
        device: Device::Cpu,
        description: "cpu".into(),
        fallback,
    }
}

fn open_cuda(ordinal: usize) -> Result<Placement> {
    if !CUDA_BUILT {
        return Err(Error::Device(format!(
            "`cuda:{ordinal}` asked for, but this distill binary is built without CUDA: rebuild with `cargo build --release --features cuda` (README: GPU)"
        )));
    }
    // cudarc panics instead of returning an error for some driver faults (a missing symbol in
    // an old driver); either way the user gets one line.
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    let device = match opened {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            return Err(Error::Device(format!(
                "`cuda:{ordinal}` is not usable: {}",
                first_line(&e.to_string())
            )))
        }
        Err(_) => {
            return Err(Error::Device(format!(
                "`cuda:{ordinal}` is not usable: the CUDA driver failed to start (is the NVIDIA driver installed and new enough for CUDA 13?)"
            )))
        }
    };
    let description = match gpu_info(&device) {
        Some(info) => format!(
            "cuda:{ordinal} ({}, {:.1} GiB, compute {}.{})",
            info.name,
            info.total_bytes as f64 / GIB,
            info.compute.0,
            info.compute.1
        ),
        None => format!("cuda:{ordinal}"),
    };
    Ok(Placement {
        device,
        description,
        fallback: None,
    })
}

const GIB: f64 = (1u64 << 30) as f64;

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What a GPU is: name, memory and compute capability.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub total_bytes: usize,
    pub free_bytes: usize,
    pub compute: (i32, i32),
}

/// Facts about a CUDA device (`None` on the CPU or when the driver does not answer).
#[cfg(feature = "cuda")]
pub fn gpu_info(device: &Device) -> Option<GpuInfo> {
    use cudarc::driver::sys::CUdevice_attribute as A;
    let Device::Cuda(cuda) = device else {
        return None;
    };
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let (free_bytes, total_bytes) = ctx.mem_get_info().ok()?;
    let major = ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .ok()?;
    let minor = ctx
        .attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .ok()?;
    Some(GpuInfo {
        name: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
        total_bytes,
        free_bytes,
        compute: (major, minor),
    })
}

/// Facts about a CUDA device (`None` on the CPU or when the driver does not answer).
#[cfg(not(feature = "cuda"))]
pub fn gpu_info(_device: &Device) -> Option<GpuInfo> {
    None
}

/// The `--dtype` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// CPU: f32. GPU: bf16 compute over f32 master weights (training), the stored dtype
    /// (inference).
    #[default]
    Auto,
    F32,
    /// Training: bf16 compute, f32 master weights and moments. Inference: bf16 weights.
    Bf16,
    /// Inference only (training in f16 needs loss scaling, which distill does not do).
    F16,
    /// Training: bf16 weights, gradients and moments (half the memory of `bf16`, for students
    /// that do not fit otherwise). Inference: as `bf16`.
    Bf16Pure,
}

impl FromStr for DtypeChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            "bf16-pure" | "pure-bf16" => Ok(Self::Bf16Pure),
            _ => Err(Error::Device(format!(
                "unknown dtype `{s}` (expected `auto`, `f32`, `bf16`, `bf16-pure` or `f16`)"
            ))),
        }
    }
}

impl fmt::Display for DtypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Bf16Pure => "bf16-pure",
        })
    }
}

serde_as_flag_string!(DtypeChoice);

/// The dtypes of a training run: trainable parameters (and so gradients and AdamW moments) and
/// the forward/backward compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainPrecision {
    pub params: DType,
    pub compute: DType,
}

impl TrainPrecision {
    pub const F32: Self = Self {
        params: DType::F32,
        compute: DType::F32,
    };

    /// Whether the forward runs on copies cast from the parameters (mixed precision).
    pub fn is_mixed(&self) -> bool {
        self.params != self.compute
    }
}

impl fmt::Display for TrainPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |d: DType| d.as_str();
        if self.is_mixed() {
            write!(
                f,
                "{} compute, {} master weights",
                name(self.compute),
                name(self.params)
            )
        } else {
            f.write_str(name(self.params))
        }
    }
}

impl DtypeChoice {
    /// The training precision on `device`.
    pub fn training(self, device: &Device) -> Result<TrainPrecision> {
        let p = match self {
            Self::Auto if device.is_cpu() => TrainPrecision::F32,
            Self::F32 => TrainPrecision::F32,
            Self::Auto | Self::Bf16 => TrainPrecision {
                params: DType::F32,
                compute: DType::BF16,
            },
            Self::Bf16Pure => TrainPrecision {
                params: DType::BF16,
                compute: DType::BF16,
            },
            Self::F16 => {
                return Err(Error::Device(
                    "`--dtype f16` is for inference only (f16 training needs loss scaling): use `bf16` or `f32`".into(),
                ))
            }
        };
        check_supported(p.compute, device)?;
        Ok(p)
    }

    /// The dtype a checkpoint stored as `stored` runs in on `device`.
    pub fn inference(self, device: &Device, stored: DType) -> Result<DType> {
        let d = match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => match stored {
                DType::BF16 | DType::F16 => stored,
                _ => DType::F32,
            },
            Self::F32 => DType::F32,
            Self::Bf16 | Self::Bf16Pure => DType::BF16,
            Self::F16 => DType::F16,
        };
        check_supported(d, device)?;
        Ok(d)
    }
}

/// bf16 needs compute capability 8.0 (Ampere) or newer; f16 needs 5.3.
fn check_supported(dtype: DType, device: &Device) -> Result<()> {
    let need = match dtype {
        DType::BF16 => (8, 0),
        DType::F16 => (5, 3),
        _ => return Ok(()),
    };
    if let Some(info) = gpu_info(device) {
        if info.compute < need {
            return Err(Error::Device(format!(
                "`{dtype:?}` needs a GPU of compute capability {}.{} or newer; {} is {}.{}: use `--dtype f32`{}",
                need.0,
                need.1,
                info.name,
                info.compute.0,
                info.compute.1,
                if dtype == DType::BF16 && info.compute >= (5, 3) { " (or `f16` for inference)" } else { "" }
            )));
        }
    }
    Ok(())
}

/// A device's short name: `cpu`, `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Free and total memory of a GPU in bytes (`None` on the CPU).
pub fn memory_info(device: &Device) -> Option<(usize, usize)> {
    gpu_info(device).map(|i| (i.free_bytes, i.total_bytes))
}

/// Memory the host can still give a process (`MemAvailable` of `/proc/meminfo`), in bytes;
/// `None` off Linux.
pub fn host_memory_available() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether a candle error is the GPU running out of memory.
pub fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let s = e.to_string();
    s.contains("OUT_OF_MEMORY") || s.contains("out of memory")
}

/// Bytes for a message: `12.3 GiB`, or `48.0 MiB` below a tenth of a GiB (where one decimal
/// of GiB would say 0.0 of something that is not nothing).
pub fn size(bytes: f64) -> String {
    if bytes > 0.0 && bytes < 0.1 * GIB {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    } else {
        format!("{:.1} GiB", bytes / GIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_gib_or_below_a_tenth_in_mib() {
        assert_eq!(size(24.0 * GIB), "24.0 GiB");
        assert_eq!(size(0.1 * GIB), "0.1 GiB");
        assert_eq!(size(50.0 * 1024.0 * 1024.0), "50.0 MiB");
        assert_eq!(size(0.0), "0.0 GiB");
    }

    #[test]
    fn device_choices_parse_and_print() {
        for (s, want) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap(), want);
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        let e = "cuda:x".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(e.contains("`cuda:x`") && e.contains("cuda:N"), "{e}");
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_precisions() {
        let cpu = Device::Cpu;
        assert_eq!(
            DtypeChoice::Auto.training(&cpu).unwrap(),
            TrainPrecision::F32
        );
        let mixed = DtypeChoice::Bf16.training(&cpu).unwrap();
        assert!(mixed.is_mixed());
        assert_eq!(mixed.to_string(), "bf16 compute, f32 master weights");
        assert_eq!(
            DtypeChoice::Bf16Pure.training(&cpu).unwrap().params,
            DType::BF16
        );
        assert!(DtypeChoice::F16.training(&cpu).is_err());
        assert_eq!(
            DtypeChoice::Auto.inference(&cpu, DType::BF16).unwrap(),
            DType::F32
        );
        assert_eq!(
            DtypeChoice::F16.inference(&cpu, DType::F32).unwrap(),
            DType::F16
        );
        assert_eq!(
            "bf16-pure".parse::<DtypeChoice>().unwrap(),
            DtypeChoice::Bf16Pure
        );
        assert!("fp8".parse::<DtypeChoice>().is_err());
    }

    /// A CPU-only binary asked for a GPU names the build flag; `auto` falls back to the CPU.
    #[test]
    #[cfg(not(feature = "cuda"))]
    fn cuda_without_the_feature_names_the_flag() {
        let e = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let auto = DeviceChoice::Auto.resolve().unwrap();
        assert!(auto.device.is_cpu());
        assert_eq!(auto.description, "cpu");
        assert!(auto.fallback.unwrap().contains("without CUDA"));
    }
}
