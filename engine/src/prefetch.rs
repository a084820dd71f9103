//! A hint to the CPU to start loading a cache line the caller will read soon, so that
//! independent cache misses overlap instead of following one another.

/// Asks the CPU to start loading the line at `address` into every cache level. Only a
/// hint: it never faults and reads nothing the program sees, so any address will do.
#[inline(always)]
pub(crate) fn prefetch<T>(address: *const T) {
    // SAFETY: the instruction needs SSE, which every x86_64 CPU has. It neither faults
    // nor makes the memory it loads visible to the program, so the pointer's provenance,
    // alignment and liveness do not matter.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
