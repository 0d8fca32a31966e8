//! With the `cuda` feature, compiles the CUDA kernels (`src/cuda/train.cu`, `src/cuda/generate.cu`,
//! `src/cuda/flash_attention.cu`, each including `src/cuda/common.cuh`) to PTX with nvcc
//! (the pinned CUDA 13.0 one from `gpu/setup.sh`, or any on PATH / under CUDA_HOME), for the
//! compute capability in `CUDA_COMPUTE_CAP` (80 when unset: PTX the driver JIT-compiles for
//! A100, H100 and H200). Without the feature it does nothing, so CPU builds need no CUDA.

use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, each its own PTX module.
const SOURCES: [&str; 3] = ["train.cu", "generate.cu", "flash_attention.cu"];

fn main() {
    for file in SOURCES.iter().chain(&["common.cuh"]) {
        println!("cargo::rerun-if-changed=src/cuda/{file}");
    }
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.trim_start_matches("sm_").trim_end_matches('a');
    // What the kernels were compiled for, for `cuda::flash_attention_runs` (tensor cores: 80+).
    println!("cargo::rustc-env=DISTILL_CUDA_COMPUTE_CAP={cap}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    for file in SOURCES {
        let out = out_dir.join(file.replace(".cu", ".ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-I", "src/cuda"])
            .arg(format!("-arch=compute_{cap}"))
            .arg(format!("src/cuda/{file}"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the cuda feature needs nvcc ({}): {e}; `CU=$(bash gpu/setup.sh); source gpu/env.sh \"$CU\"` installs one",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc could not compile src/cuda/{file}");
    }
}
