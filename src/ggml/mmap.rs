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
