//! Keeps freed memory in the process instead of returning it to the kernel.
//!
//! glibc serves every allocation over its mmap threshold (ResNet activations of ~67 MB)
//! with a fresh mapping and unmaps it on free, so each training step page-faults its whole
//! working set (~3 GB for ResNet-50, batch 32) anew; on this 2-core CPU that kernel work is
//! a third of the step. Training reaches the same peak every step anyway, so holding on
//! to it costs nothing. Measured with `cargo bench --bench train_step`. Evaluation is the
//! opposite case (a few large matrices, allocated once): there the setting made
//! `cargo bench --bench evaluate` 2.45 s → 3.4 s, so `agd evaluate` runs without it.

/// Tells glibc to never use mmap for large blocks and never trim the heap. A no-op on
/// other platforms.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only adjusts allocator tunables; called before any tensor exists (first thing in `cli::run`).
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
