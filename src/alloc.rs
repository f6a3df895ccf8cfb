//! Whether freed memory stays in the process or goes back to the kernel, chosen per stage.
//!
//! glibc serves every allocation over its mmap threshold (ResNet activations of ~67 MB)
//! with a fresh mapping and unmaps it on free, so each training step page-faults its whole
//! working set (~3 GB for ResNet-50, batch 32) anew; on this 2-core CPU that kernel work is
//! a third of the step. Training and inversion reach the same peak every step anyway, so
//! holding on to it costs nothing: they call [`retain_freed_memory`]. Evaluation is the
//! opposite case (a few large matrices, allocated once): there retaining made
//! `cargo bench --bench evaluate` 2.45 s → 3.4 s, so it calls [`release_freed_memory`].
//! Each stage sets its own policy when it starts, so a process that runs several stages
//! (`agd demo`) gives each the one it was measured with.

/// glibc's defaults (mallopt(3)): a 128 KiB mmap threshold and trim threshold, and up to
/// 65,536 mappings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_MMAP_MAX: i32 = 65536;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const DEFAULT_TRIM_THRESHOLD: i32 = 128 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap_max: i32, trim_threshold: i32) {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_MAX: i32 = -4;
    // SAFETY: mallopt only adjusts allocator tunables, under glibc's own arena lock, so
    // it is sound at any time and from any thread; it affects allocations made after it
    // (memory already mapped is unmapped on free as before).
    unsafe {
        mallopt(M_MMAP_MAX, mmap_max);
        mallopt(M_TRIM_THRESHOLD, trim_threshold);
    }
}

/// Never use mmap for large blocks and never trim the heap (training, inversion). A no-op
/// on other platforms.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(0, i32::MAX);
}

/// glibc's default values again (evaluation): large blocks mapped and unmapped, the heap
/// trimmed above 128 KiB. One difference remains once [`retain_freed_memory`] ran: glibc
/// no longer adapts its mmap threshold to freed blocks, it stays at the initial 128 KiB,
/// which is what a fresh `agd evaluate` process uses for its large matrices anyway. A
/// no-op on other platforms.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    set(DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD);
}
