//! The targets' allocator: the system's, aborting on any single allocation over
//! [`MAX_ALLOCATION`] so that a decoder which sizes a buffer from a length it read (instead of
//! from the bytes it has) fails at once, with the input that made it. libFuzzer's own
//! `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a `--sanitizer none` build lacks.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest allocation a target may make (inputs are at most a few KiB).
pub const MAX_ALLOCATION: usize = 256 << 20;

/// [`System`], refusing allocations over [`MAX_ALLOCATION`] by aborting the process.
#[derive(Debug)]
pub struct Limited;

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // No allocation here: write the message from a fixed buffer and abort (libFuzzer reports
        // the abort as a crash and writes the input).
        let message = b"==ERROR: shoal-fuzz: a single allocation over the limit (256 MiB)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), message);
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to `System`, after a size check that allocates
// nothing.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
