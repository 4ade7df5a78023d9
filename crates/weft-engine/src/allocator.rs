//! The process's allocator: the system's (glibc's) malloc, with transparent huge pages asked for
//! on large blocks, and the last freed large blocks kept for reuse.
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
//! Even in huge pages, the kernel zeroes every fresh page: a UNet step allocates and frees the
//! same few dozen activation sizes over and over (an 84 MB feed-forward output, say), and the
//! kernel's zeroing (`clear_page_erms`) took 5-9% of a bf16 step in profiles. So a freed block
//! of 4 MiB or more is kept (up to [`KEEP_BYTES`] in all, oldest given back first, and adding at
//! most [`KEEP_SPARE`] to the peak) and handed out again for the next request of its size
//! class, or shrunk for a smaller one. [`release_kept`] gives them all back; `memory::return_freed_memory` and the model
//! manager's memory checks call it, so kept blocks never count against a model.
//!
//! A global allocator needs `unsafe`; like the kernels in `ops`, this module allows it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks from this size on are advised (at least one whole huge page lies inside them), and
/// kept for reuse when freed.
const HUGE_FROM: usize = 4 << 20;
/// The most bytes of freed blocks kept for reuse, unless [`set_kept_limit`] says otherwise.
pub const KEEP_BYTES: usize = 768 << 20;
static KEEP_LIMIT: AtomicUsize = AtomicUsize::new(KEEP_BYTES);
/// The most bytes kept blocks may add to the process's peak (see [`Kept`]). In an SD1.5 UNet
/// step (512x512, batch 2) 381 of the 394 blocks of 4 MiB and more were reused in bf16 and 541
/// of 602 in f32, adding 73 and 113 MiB to the bench's peak. (Before bigger blocks were shrunk
/// for smaller requests, a spare of 0 let 300 of the 394 be reused, 256 MiB all, for 320 MiB.)
pub const KEEP_SPARE: usize = 128 << 20;
static SPARE_LIMIT: AtomicUsize = AtomicUsize::new(KEEP_SPARE);
/// The most freed blocks kept.
const KEEP_SLOTS: usize = 64;
/// The alignment every kept block is allocated with, so that any two of a size class are
/// interchangeable (requests for more go to the system as they are). Not more than malloc's
/// own: a block aligned beyond it is not calloc's, and `System` zeroes it by writing every page.
const KEEP_ALIGN: usize = 16;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGE: usize = 2 << 20;

/// The size a block of `size` bytes (at least [`HUGE_FROM`]) is allocated with: rounded up to a
/// sixteenth of the power of two below it, so that tensors of nearly the same size share a
/// class and no block wastes more than 1/16 of itself.
fn size_class(size: usize) -> usize {
    size.next_multiple_of((1 << size.max(1).ilog2()) / 16)
}

/// Sizes from this on go to the system as they are: rounding them to a class could overflow,
/// and no request that large can be met anyway.
const KEEP_BELOW: usize = isize::MAX as usize / 2;

/// Whether a block of this layout goes through the kept blocks.
fn keepable(layout: &Layout) -> bool {
    (HUGE_FROM..KEEP_BELOW).contains(&layout.size()) && layout.align() <= KEEP_ALIGN
}

/// The layout a keepable block is really allocated with.
fn kept_layout(size: usize) -> Layout {
    // A keepable size is below half of isize::MAX (`KEEP_BELOW`), and its class at most a
    // sixteenth more, so this cannot fail.
    Layout::from_size_align(size_class(size), KEEP_ALIGN).unwrap_or_else(|_| unreachable!())
}

#[derive(Clone, Copy)]
struct Slot {
    /// The block's address; 0 where the slot is empty.
    addr: usize,
    /// The size it was allocated with.
    class: usize,
    /// When it was kept, to give the oldest back first.
    tick: u64,
}

const EMPTY: Slot = Slot {
    addr: 0,
    class: 0,
    tick: 0,
};

/// Freed blocks kept for reuse, in fixed tables: the allocator must not allocate for itself.
///
/// Kept blocks raise the process's footprint by at most [`KEEP_SPARE`] over what it was without
/// them: a request that no kept block serves first gives back kept blocks of at least its size
/// (the oldest first) or all but `KEEP_SPARE`, so kept and used blocks together stay within
/// that much more than the most the process ever used at once.
struct Kept {
    slots: [Slot; KEEP_SLOTS],
    bytes: usize,
    tick: u64,
    /// Requests served from the table and requests that went to the system, for the benchmarks.
    hits: u64,
    misses: u64,
}

impl Kept {
    const fn new() -> Kept {
        Kept {
            slots: [EMPTY; KEEP_SLOTS],
            bytes: 0,
            tick: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// A kept block for a request of `class`, taken out of the table: the most recently kept
    /// of that class, else the smallest bigger one (to be shrunk: its pages need no zeroing).
    /// With neither, gives the oldest blocks to `free`, as many as the request's size or until
    /// no more than `floor` bytes stay kept, and returns None.
    fn take(
        &mut self,
        class: usize,
        floor: usize,
        mut free: impl FnMut(usize, usize),
    ) -> Option<Slot> {
        let same = (0..KEEP_SLOTS)
            .filter(|&i| self.slots[i].addr != 0 && self.slots[i].class == class)
            .max_by_key(|&i| self.slots[i].tick);
        let bigger = || {
            (0..KEEP_SLOTS)
                .filter(|&i| self.slots[i].addr != 0 && self.slots[i].class > class)
                .min_by_key(|&i| self.slots[i].class)
        };
        let Some(i) = same.or_else(bigger) else {
            self.misses += 1;
            let mut freed = 0;
            while freed < class && self.bytes > floor {
                let Some(oldest) = self.oldest() else { break };
                freed += self.slots[oldest].class;
                self.give_back(oldest, &mut free);
            }
            return None;
        };
        self.hits += 1;
        let slot = std::mem::replace(&mut self.slots[i], EMPTY);
        self.bytes -= slot.class;
        Some(slot)
    }

    fn oldest(&self) -> Option<usize> {
        (0..KEEP_SLOTS)
            .filter(|&i| self.slots[i].addr != 0)
            .min_by_key(|&i| self.slots[i].tick)
    }

    fn give_back(&mut self, i: usize, free: &mut impl FnMut(usize, usize)) {
        let slot = std::mem::replace(&mut self.slots[i], EMPTY);
        self.bytes -= slot.class;
        free(slot.addr, slot.class);
    }

    /// Keeps the block at `addr`, handing the oldest blocks to `free` until it fits within
    /// `limit` bytes and a slot; a block bigger than `limit` goes straight to `free`.
    fn keep(
        &mut self,
        addr: usize,
        class: usize,
        limit: usize,
        mut free: impl FnMut(usize, usize),
    ) {
        if class > limit {
            return free(addr, class);
        }
        while self.bytes + class > limit || self.slots.iter().all(|s| s.addr != 0) {
            // Non-empty while over a limit that `class` alone fits in, or full.
            let Some(oldest) = self.oldest() else { break };
            self.give_back(oldest, &mut free);
        }
        self.tick += 1;
        self.bytes += class;
        if let Some(slot) = self.slots.iter_mut().find(|s| s.addr == 0) {
            *slot = Slot {
                addr,
                class,
                tick: self.tick,
            };
        }
    }

    /// Hands every kept block to `free`.
    fn drain(&mut self, mut free: impl FnMut(usize, usize)) {
        while let Some(i) = self.oldest() {
            self.give_back(i, &mut free);
        }
    }
}

static KEPT: Mutex<Kept> = Mutex::new(Kept::new());

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    // Nothing panics while the lock is held, but a poisoned table is still a valid table.
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives a kept block back to the system.
fn free_kept(addr: usize, class: usize) {
    // SAFETY: `addr` was allocated by `System` with exactly this layout (`kept_layout`: every
    // kept block's class, `KEEP_ALIGN`), is no longer in use and leaves the table here.
    unsafe {
        System.dealloc(
            addr as *mut u8,
            Layout::from_size_align_unchecked(class, KEEP_ALIGN),
        )
    }
}

/// Gives every kept block back to the system (before memory is measured, or trimmed).
pub fn release_kept() {
    kept().drain(free_kept);
}

/// Keeps at most `bytes` of freed blocks from now on (0: none, as plain glibc), giving back
/// what is kept now.
pub fn set_kept_limit(bytes: usize) {
    KEEP_LIMIT.store(bytes, Ordering::Relaxed);
    release_kept();
}

/// Sets how many bytes kept blocks may add to the peak ([`KEEP_SPARE`] by default; the
/// benchmarks try others).
pub fn set_kept_spare(bytes: usize) {
    SPARE_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Bytes held in kept blocks now, and how many requests were served from them and from the
/// system since the start.
pub fn kept_stats() -> (usize, u64, u64) {
    let k = kept();
    (k.bytes, k.hits, k.misses)
}

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

impl HugePages {
    /// A keepable block: a kept one of its class (zeroed if asked), else a fresh one from the
    /// system (whose fresh pages calloc need not zero).
    fn alloc_keepable(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let real = kept_layout(layout.size());
        let kept = kept().take(real.size(), SPARE_LIMIT.load(Ordering::Relaxed), free_kept);
        // A bigger block is shrunk in place: glibc splits a heap chunk, or `mremap`s a mapped
        // one, keeping the pages that stay and giving back the rest.
        let reused = kept.map(|slot| match slot.class == real.size() {
            true => slot.addr as *mut u8,
            // SAFETY: the block is a `System` block of this layout, now out of the table, and
            // `real` is smaller and non-zero. On failure the block is unchanged and freed.
            false => unsafe {
                let old = Layout::from_size_align_unchecked(slot.class, KEEP_ALIGN);
                let ptr = System.realloc(slot.addr as *mut u8, old, real.size());
                if ptr.is_null() {
                    free_kept(slot.addr, slot.class);
                }
                ptr
            },
        });
        if let Some(ptr) = reused.filter(|p| !p.is_null()) {
            if zeroed {
                // SAFETY: the block holds at least `layout.size()` bytes and is ours now.
                unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
            }
            return ptr;
        }
        // SAFETY: `real` has a non-zero size (at least HUGE_FROM).
        let ptr = unsafe {
            if zeroed {
                System.alloc_zeroed(real)
            } else {
                System.alloc(real)
            }
        };
        if !ptr.is_null() {
            advise(ptr, real.size());
        }
        ptr
    }
}

// SAFETY: blocks that are not keepable are passed to `System` unchanged, so the allocator's
// contract holds for them as it does for `System`. A keepable block is a `System` block of its
// size class (at least the size asked for, at `KEEP_ALIGN`, at least the alignment asked for);
// it is either in use by exactly one caller or in the table, never both; and it goes back to
// `System` with the layout it was allocated with. `advise` only gives advice on memory `System`
// just returned.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if keepable(&layout) {
            return self.alloc_keepable(layout, false);
        }
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if keepable(&layout) {
            return self.alloc_keepable(layout, true);
        }
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if keepable(&layout) {
            let limit = KEEP_LIMIT.load(Ordering::Relaxed);
            return kept().keep(ptr as usize, size_class(layout.size()), limit, free_kept);
        }
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (of each call below): the caller's contract for `realloc` (`ptr` is ours with
        // `layout`, `new_size` is valid for `layout.align()`), passed on.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (keepable(&layout), keepable(&new_layout)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) if size_class(layout.size()) == size_class(new_size) => ptr,
            // Into or out of, or between size classes: a new block and a copy.
            _ => {
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_a_failed_allocation_not_a_panic() {
        let a = HugePages;
        for size in [KEEP_BELOW, isize::MAX as usize - 4096] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            assert!(!keepable(&layout));
            // SAFETY: a non-zero size; nothing is allocated (asserted). `black_box`: in a
            // release build LLVM otherwise drops a `malloc` whose result is only compared with
            // null and takes it as not null.
            unsafe {
                assert!(std::hint::black_box(a.alloc(layout)).is_null());
                assert!(std::hint::black_box(a.alloc_zeroed(layout)).is_null());
            }
        }
    }

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

    #[test]
    fn a_freed_large_block_serves_the_next_request_of_its_class_zeroed_when_asked() {
        let a = HugePages;
        let layout = Layout::from_size_align(HUGE_FROM + 12_345, 8).unwrap();
        // SAFETY: non-zero sizes; each block is written within its size and freed once.
        unsafe {
            let p = a.alloc(layout);
            std::ptr::write_bytes(p, 9, layout.size());
            a.dealloc(p, layout);
            // Another test may take it first: only a block handed out again is checked.
            let q = a.alloc_zeroed(layout);
            assert!(!q.is_null() && (q as usize).is_multiple_of(KEEP_ALIGN));
            let bytes = std::slice::from_raw_parts(q, layout.size());
            assert!(bytes.iter().all(|&b| b == 0));
            // Grown within its class the block stays put; grown past it, the contents move.
            let r = a.realloc(q, layout, layout.size() + 1);
            assert_eq!(r, q);
            let big = a.realloc(
                r,
                Layout::from_size_align(layout.size() + 1, 8).unwrap(),
                3 * HUGE_FROM,
            );
            assert_eq!(*big.add(layout.size() - 1), 0);
            a.dealloc(big, Layout::from_size_align(3 * HUGE_FROM, 8).unwrap());
            // A smaller request may get a bigger kept block, shrunk.
            let small = Layout::from_size_align(HUGE_FROM, 8).unwrap();
            let z = a.alloc_zeroed(small);
            assert!(!z.is_null());
            assert!(std::slice::from_raw_parts(z, small.size())
                .iter()
                .all(|&b| b == 0));
            std::ptr::write_bytes(z, 3, small.size());
            a.dealloc(z, small);
        }
        release_kept();
    }

    #[test]
    fn kept_blocks_stay_within_the_limit_and_the_oldest_go_first() {
        let mut k = Kept::new();
        let freed = std::cell::RefCell::new(Vec::new());
        let free = |addr, class| freed.borrow_mut().push((addr, class));
        let addr = |slot: Option<Slot>| slot.map(|s| (s.addr, s.class));
        k.keep(0x1000, 100, 250, free);
        k.keep(0x2000, 100, 250, free);
        k.keep(0x3000, 120, 250, free);
        k.keep(0x4000, 300, 250, free);
        assert_eq!(
            addr(k.take(100, 0, free)),
            Some((0x2000, 100)),
            "its class, newest first"
        );
        assert_eq!(
            addr(k.take(90, 0, free)),
            Some((0x3000, 120)),
            "else the smallest bigger"
        );
        assert_eq!(k.bytes, 0);
        k.keep(0x3000, 120, 250, free);
        k.keep(0x2000, 100, 250, free);
        let nothing = addr(k.take(140, 250, free));
        assert_eq!(nothing, None, "nothing given back within the spare bytes");
        assert_eq!(addr(k.take(140, 0, free)), None);
        assert_eq!(
            *freed.borrow(),
            [
                (0x1000, 100), // the oldest, to stay within the limit
                (0x4000, 300), // over the limit: never kept
                (0x3000, 120), // the oldest, to make room for the 140 nothing kept could serve
                (0x2000, 100), // and the next, to give back at least 140
            ]
        );
        assert_eq!((k.bytes, k.hits, k.misses), (0, 2, 2));
        for i in 1..=KEEP_SLOTS + 3 {
            k.keep(i, 1, usize::MAX, free);
        }
        let oldest = [(1, 1), (2, 1), (3, 1)];
        assert_eq!(
            freed.borrow()[4..],
            oldest,
            "a full table gives back its oldest"
        );
        k.drain(free);
        assert_eq!((freed.borrow().len(), k.bytes), (4 + KEEP_SLOTS + 3, 0));
    }

    #[test]
    fn size_classes_round_up_by_at_most_a_sixteenth() {
        for size in [HUGE_FROM, HUGE_FROM + 1, 84_000_000, 335_544_320, 1 << 31] {
            let c = size_class(size);
            assert!(c >= size && c - size <= size / 16, "{size} -> {c}");
            assert_eq!(size_class(c), c);
        }
    }
}
