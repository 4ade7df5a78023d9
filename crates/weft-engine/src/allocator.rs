//! The process's allocator: the system's (glibc's) malloc, with transparent huge pages asked for
//! on large blocks.
//!
//! Why: tensors are large and short-lived, and glibc gives each block over its mmap threshold
//! (at most 32 MiB) fresh pages from the kernel, paid in page faults on first touch. In the VMs
//! measured a 4 KiB fault costs about 0.65 ms per MB (256 MB written once: 167-174 ms), so
//! widening a 2 GB f16 checkpoint to 4 GB of f32 spends seconds in faults alone. Asked for with
//! `MADV_HUGEPAGE` (the kernel's default THP mode, `madvise`, gives them only when asked), the
//! same block is faulted in 2 MiB pages: 81-85 ms. glibc itself still places and frees every
//! block, so `memory::return_freed_memory` (malloc_trim) and the memory accounting work as
//! before; mimalloc, tried instead, kept freed memory from the container and made an SDXL load
//! after SD1.5 fail its memory check.
//!
//! This module and the bf16 kernels are the crate's only `unsafe`: a global allocator has to be.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are advised: at least one whole huge page lies inside them.
const HUGE_FROM: usize = 4 << 20;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGE: usize = 2 << 20;

/// [`System`] with transparent huge pages for blocks of 4 MiB and more (on Linux; elsewhere
/// just [`System`]). Install with `#[global_allocator]`.
pub struct HugePages;

/// Asks the kernel to back the whole 2 MiB pages inside `[ptr, ptr + size)` with huge pages when
/// they are first touched. Advice only: nothing is mapped or moved, and a kernel without THP
/// ignores it.
fn advise(ptr: *mut u8, size: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside the block just handed out (start and end are rounded
            // inwards), which is mapped and ours; MADV_HUGEPAGE changes no contents, only how
            // the kernel backs pages not yet touched. Its result is ignored: advice that fails
            // leaves the pages as they were.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (ptr, size);
}

// SAFETY: every call is passed to `System` unchanged, so the allocator's contract holds as it
// does for `System`; `advise` only gives advice on memory `System` just returned.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_FROM {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`. (calloc leaves fresh mapped pages untouched, so the advice still
        // applies to their first write.)
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= HUGE_FROM {
            advise(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() && new_size >= HUGE_FROM {
            advise(new, new_size);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_small_and_large_are_usable_and_keep_their_contents() {
        let a = HugePages;
        for size in [1, 4096, HUGE_FROM - 1, HUGE_FROM, 9 << 20] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: a non-zero size; the block is written within its size and freed once.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                std::ptr::write_bytes(p, 7, size);
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q.add(size - 1), 7);
                a.dealloc(q, Layout::from_size_align(size * 2, 64).unwrap());
            }
        }
    }
}
