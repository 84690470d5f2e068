//! Read-only memory mapping of model files (mapping is `unsafe` in memmap2, so it lives here).

use std::fs::File;

/// Maps `file` read-only.
///
/// The model file must not be truncated or rewritten in place while it is mapped (the same
/// rule llama.cpp has): every offset the GGUF reader hands out was validated against the
/// mapping's fixed length, so only another process shrinking the file could make a page
/// fault (SIGBUS). Replacing the file by rename, as package managers and our reload do, is safe.
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: read-only private mapping of a regular file; see the contract above.
    unsafe { memmap2::Mmap::map(file) }
}

/// Heap bytes aligned for ggml (64 bytes: ggml's tensor alignment is 32, AVX-512 lines are 64).
/// In-memory GGUF files live here so their tensors can be placed without copying, as with a
/// page-aligned mapping.
pub struct AlignedBytes {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

const ALIGN: usize = 64;

impl AlignedBytes {
    /// Copies `src` into a fresh aligned allocation.
    pub fn copy_from(src: &[u8]) -> AlignedBytes {
        let len = src.len();
        if len == 0 {
            // An aligned dangling pointer is valid for zero-length slices.
            let ptr = std::ptr::NonNull::new(ALIGN as *mut u8).expect("non-null");
            return AlignedBytes { ptr, len };
        }
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("layout");
        // SAFETY: layout has non-zero size; the allocation is checked for NULL and then fully
        // initialised by the copy before any read.
        unsafe {
            let p = std::alloc::alloc(layout);
            let Some(ptr) = std::ptr::NonNull::new(p) else {
                std::alloc::handle_alloc_error(layout)
            };
            std::ptr::copy_nonoverlapping(src.as_ptr(), ptr.as_ptr(), len);
            AlignedBytes { ptr, len }
        }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self (or is dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = std::alloc::Layout::from_size_align(self.len, ALIGN).expect("layout");
            // SAFETY: allocated in copy_from with this exact layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

// SAFETY: AlignedBytes owns its allocation exclusively and only hands out shared slices.
unsafe impl Send for AlignedBytes {}
// SAFETY: shared access is read-only.
unsafe impl Sync for AlignedBytes {}
