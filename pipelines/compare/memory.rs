//! Peak resident memory of one model's run, from Linux's `/proc/self/status`.
//!
//! Method: `VmHWM` is the process's resident-set high-water mark. Before a model is loaded, the
//! heap's free pages go back to the kernel (`malloc_trim`: the allocator tuning keeps up to
//! 1 GiB of them otherwise, and an earlier model's buffers would count), then the mark is reset to the current resident set by writing `5` to `/proc/self/clear_refs` (Linux
//! ≥ 4.0); after the model has generated, `VmHWM` is the peak over load + generation, the
//! process's baseline (the binary, earlier allocations the allocator kept) included, which is
//! why the baseline is reported beside it. Where the reset is refused (or on a system without
//! `/proc`), the mark covers the whole process so far and the method says so.

use std::fs;

/// How `peak_rss_bytes` was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeakMethod {
    /// `VmHWM` after resetting it just before the model was loaded.
    VmhwmReset,
    /// `VmHWM` without a reset: the process's peak so far (an upper bound).
    VmhwmProcess,
}

/// Resets the high-water mark to the current resident set; false when the kernel refused.
pub fn reset_peak() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// `VmRSS` in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, key)
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tdistill\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(parse_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }

    /// One test, so the two measurements of the process's resident set do not overlap.
    #[test]
    fn freed_memory_is_released_and_the_mark_reset_before_a_measurement() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return;
        }
        // As in `distill`: freed buffers stay in the heap until trimmed.
        distill_models::alloc::tune_allocator();
        let before = current_rss_bytes().unwrap_or(0);
        let chunks: Vec<Vec<u8>> = (0..192).map(|i| vec![i as u8 | 1; 1 << 20]).collect();
        std::hint::black_box(&chunks);
        let with_chunks = current_rss_bytes().unwrap_or(0);
        assert!(
            with_chunks > before + (160 << 20),
            "{before} → {with_chunks}"
        );
        drop(chunks);
        distill_models::alloc::release_free_memory();
        let after = current_rss_bytes().unwrap_or(u64::MAX);
        assert!(after + (128 << 20) < with_chunks, "{with_chunks} → {after}");

        if !reset_peak() {
            return;
        }
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let with_big = peak_rss_bytes().unwrap_or(0);
        drop(big);
        distill_models::alloc::release_free_memory();
        assert!(reset_peak());
        let after = peak_rss_bytes().unwrap_or(u64::MAX);
        assert!(after + (32 << 20) < with_big, "{after} vs {with_big}");
    }
}
