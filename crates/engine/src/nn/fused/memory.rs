//! Allocator tuning for the fused path's large, short-lived buffers.
//!
//! A training step allocates and frees a few megabytes of activations,
//! gradients and optimizer temporaries. With glibc's defaults, blocks over
//! 128 KiB are mapped and unmapped each time, and freed heap tops are
//! returned to the OS, so every step faults in (and the kernel zeroes)
//! fresh pages: about a sixth of a small model's step on these machines.
//! [`keep_freed_memory`] raises both thresholds so freed blocks are reused.
//! The cost: up to `TRIM_THRESHOLD` of freed memory stays with the
//! process.

/// Blocks up to this size come from the heap, not their own mapping
/// (glibc's largest allowed value on 64-bit).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top kept rather than returned to the OS.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Call once at process start, before other threads exist. A no-op
/// outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator parameters; called before
        // other threads start.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
