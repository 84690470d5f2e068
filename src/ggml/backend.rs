//! The CPU backend, backend buffers, graphs, the graph allocator and compute.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use super::buft::ExtraBufferType;
use super::context::{Context, Tensor};
use super::sys;

/// Errors from ggml's backend layer (allocation and compute status codes).
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    #[error("ggml could not allocate a {0}-byte buffer")]
    Alloc(usize),
    #[error("ggml graph allocation failed (graph of {0} nodes)")]
    GraphAlloc(usize),
    #[error("ggml compute failed: {0}")]
    Compute(String),
    #[error("tensor {name}: bytes {offset}..{end} lie outside the {len}-byte mapping")]
    OutOfMapping {
        name: String,
        offset: usize,
        end: usize,
        len: usize,
    },
    #[error("tensor {0} has no placement in the mapping")]
    Unplaced(String),
    #[error("host bytes at {0:#x} are not aligned to {1} bytes as ggml buffers must be")]
    Misaligned(usize, usize),
    #[error("could not start the ggml threadpool with {0} threads")]
    Threadpool(usize),
    #[error(transparent)]
    Cpu(#[from] super::cpu::CpuError),
}

/// The ggml CPU backend with a persistent threadpool: worker threads are created once and
/// reused by every compute, instead of being spawned per graph.
#[derive(Debug)]
pub struct CpuBackend {
    ptr: NonNull<sys::ggml_backend>,
    pool: NonNull<sys::ggml_threadpool>,
    n_threads: usize,
    variant: super::cpu::Variant,
}

// SAFETY: the backend and its threadpool are owned exclusively by this value and have no
// thread affinity; ggml's worker threads synchronise internally.
#[allow(unsafe_code)]
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    /// A CPU backend computing with `n_threads` threads (at least 1), on the CPU variant this
    /// process runs ([`super::cpu::active_variant`]).
    pub fn new(n_threads: usize) -> Result<CpuBackend, GgmlError> {
        let variant = super::init()?;
        let n_threads = n_threads.max(1);
        let api = variant.api();
        // SAFETY: ggml_backend_cpu_init has no preconditions beyond ggml_cpu_init, which
        // `api()` ran for this variant; the CPU runs the variant (selector).
        let ptr = NonNull::new(unsafe { (api.backend_cpu_init)() }).ok_or(GgmlError::Alloc(0))?;
        // SAFETY: params are initialised by ggml for n_threads; the pool is the same variant's
        // as the backend and is freed in Drop after the backend that uses it.
        let pool = unsafe {
            let mut params = sys::ggml_threadpool_params_default(n_threads as i32);
            (api.threadpool_new)(&mut params)
        };
        let Some(pool) = NonNull::new(pool) else {
            // SAFETY: free the backend we just created.
            unsafe { sys::ggml_backend_free(ptr.as_ptr()) };
            return Err(GgmlError::Threadpool(n_threads));
        };
        // SAFETY: both pointers are valid and of this variant; the backend keeps a non-owning
        // reference to the pool, which lives until Drop.
        unsafe {
            (api.backend_cpu_set_n_threads)(ptr.as_ptr(), n_threads as i32);
            (api.backend_cpu_set_threadpool)(ptr.as_ptr(), pool.as_ptr());
        }
        Ok(CpuBackend {
            ptr,
            pool,
            n_threads,
            variant,
        })
    }

    /// The CPU variant computing.
    pub fn variant(&self) -> super::cpu::Variant {
        self.variant
    }

    /// Threads used per compute.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `graph` to completion.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        // SAFETY: the graph's tensors are all allocated (Graph::compute callers allocate first,
        // and ggml checks data pointers); &mut self gives exclusive use of the backend.
        let status =
            unsafe { sys::ggml_backend_graph_compute(self.ptr.as_ptr(), graph.ptr.as_ptr()) };
        if status == sys::GGML_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(GgmlError::Compute(status_text(status)))
        }
    }

    /// Allocates backend memory for every tensor of `ctx` (KV caches, test inputs).
    pub fn alloc_context(&self, ctx: Context) -> Result<AllocatedContext, GgmlError> {
        // SAFETY: ctx is a no_alloc context; the returned buffer holds all its tensors and is
        // freed in AllocatedContext's Drop before the context.
        let buf = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.as_ptr(), self.ptr.as_ptr()) };
        let buf = NonNull::new(buf).ok_or(GgmlError::Alloc(0))?;
        Ok(AllocatedContext {
            ctx,
            buffer: Buffer { ptr: buf },
            _host: None,
            read_only: false,
        })
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: free the backend first (it references the pool), each exactly once.
        unsafe {
            sys::ggml_backend_free(self.ptr.as_ptr());
            (self.variant.api().threadpool_free)(self.pool.as_ptr());
        }
    }
}

fn status_text(status: sys::ggml_status) -> String {
    // SAFETY: returns a static string for any status value.
    let p = unsafe { sys::ggml_status_to_string(status) };
    if p.is_null() {
        return format!("status {status}");
    }
    // SAFETY: static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

#[derive(Debug)]
struct Buffer {
    ptr: NonNull<sys::ggml_backend_buffer>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: buffers are freed exactly once, after nothing computes with them.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) }
    }
}

/// Read-only host bytes that tensors can be placed into without copying (a memory-mapped
/// model file).
pub trait HostBytes: Send + Sync {
    /// The bytes; must stay at the same address for the value's lifetime.
    fn host_bytes(&self) -> &[u8];
}

impl HostBytes for super::AlignedBytes {
    fn host_bytes(&self) -> &[u8] {
        self
    }
}

/// A context whose tensors have memory: from a backend buffer, or placed zero-copy into
/// [`HostBytes`] (model weights in an mmap). Owns the context, the buffer and the bytes
/// together, so a tensor handle (borrowing `&self`) can never see freed memory.
pub struct AllocatedContext {
    // Field order is drop order: the buffer goes before the context, the bytes last.
    buffer: Buffer,
    ctx: Context,
    _host: Option<Arc<dyn HostBytes>>,
    /// Weights (mapped or copied into an extra buffer type): never cleared or written.
    read_only: bool,
}

impl std::fmt::Debug for AllocatedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocatedContext").finish_non_exhaustive()
    }
}

// SAFETY: the context, buffer and bytes are owned together and moved together; ggml buffers
// have no thread affinity.
#[allow(unsafe_code)]
unsafe impl Send for AllocatedContext {}
// SAFETY: shared access only reads tensor headers and the (read-only) weight bytes; mutation of
// tensor data happens through compute, which the owner of the graph serialises.
#[allow(unsafe_code)]
unsafe impl Sync for AllocatedContext {}

impl AllocatedContext {
    /// Places every tensor of `ctx` into `host` at the offset `offset_of(name)` returns, without
    /// copying. Each tensor's byte range is checked against the mapping.
    pub fn map_host(
        ctx: Context,
        host: Arc<dyn HostBytes>,
        offset_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<AllocatedContext, GgmlError> {
        let bytes = host.host_bytes();
        let (base, len) = (bytes.as_ptr(), bytes.len());
        // ggml aborts on a misaligned buffer base; refuse instead.
        const TENSOR_ALIGNMENT: usize = 32;
        if (base as usize) % TENSOR_ALIGNMENT != 0 {
            return Err(GgmlError::Misaligned(base as usize, TENSOR_ALIGNMENT));
        }
        // Check every placement before creating anything.
        let mut placements = Vec::new();
        for t in tensors_of(&ctx) {
            let name = t.name();
            let off = offset_of(&name).ok_or_else(|| GgmlError::Unplaced(name.clone()))?;
            let end = off.checked_add(t.n_bytes()).filter(|&e| e <= len).ok_or(
                GgmlError::OutOfMapping {
                    name: name.clone(),
                    offset: off,
                    end: off.saturating_add(t.n_bytes()),
                    len,
                },
            )?;
            debug_assert!(end <= len);
            placements.push((t.as_ptr(), off));
        }
        // SAFETY: `host` is kept alive in the returned value for as long as the buffer; ggml
        // only reads weight tensors (no op writes into its sources), so the *mut cast of a
        // read-only mapping is never written through.
        let buf = unsafe { sys::ggml_backend_cpu_buffer_from_ptr(base as *mut _, len.max(1)) };
        let buf = NonNull::new(buf).ok_or(GgmlError::Alloc(len))?;
        let buffer = Buffer { ptr: buf };
        for (t, off) in placements {
            // SAFETY: off + nbytes <= len was checked above; t belongs to ctx, which we own.
            let status =
                unsafe { sys::ggml_backend_tensor_alloc(buf.as_ptr(), t, base.add(off) as *mut _) };
            if status != sys::GGML_STATUS_SUCCESS {
                return Err(GgmlError::Compute(status_text(status)));
            }
        }
        Ok(AllocatedContext {
            ctx,
            buffer,
            _host: Some(host),
            read_only: true,
        })
    }

    /// Allocates every tensor of `ctx` in one buffer of `buft` and fills each from
    /// `bytes_of(name)` (exactly its byte size), which the buffer type may rearrange as it
    /// stores them (ggml's repack does so in `set_tensor`). The tensors' bytes cannot be read
    /// back afterwards; they are only computed with. `Ok(None)` when `ctx` has no tensors.
    pub fn load_into<'b>(
        ctx: Context,
        buft: ExtraBufferType,
        bytes_of: impl Fn(&str) -> Option<&'b [u8]>,
    ) -> Result<Option<AllocatedContext>, GgmlError> {
        // Find every source before allocating anything.
        let mut sources = Vec::new();
        for t in tensors_of(&ctx) {
            let name = t.name();
            let src = bytes_of(&name).ok_or_else(|| GgmlError::Unplaced(name.clone()))?;
            if src.len() != t.n_bytes() {
                return Err(GgmlError::OutOfMapping {
                    name,
                    offset: 0,
                    end: src.len(),
                    len: t.n_bytes(),
                });
            }
            sources.push((t.as_ptr(), src));
        }
        if sources.is_empty() {
            return Ok(None);
        }
        // SAFETY: ctx is a no_alloc context whose tensors have no memory yet; the buffer holds
        // them all and is freed in Drop before the context.
        let size = unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft_size(ctx.as_ptr(), buft.as_ptr())
        };
        // SAFETY: as above.
        let buf =
            unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.as_ptr(), buft.as_ptr()) };
        let buffer = Buffer {
            ptr: NonNull::new(buf).ok_or(GgmlError::Alloc(size))?,
        };
        for (t, src) in sources {
            // SAFETY: t belongs to ctx and now has n_bytes of memory in `buffer`; src has
            // exactly n_bytes (checked above), the whole-tensor write repack requires.
            unsafe { sys::ggml_backend_tensor_set(t, src.as_ptr().cast(), 0, src.len()) };
        }
        Ok(Some(AllocatedContext {
            ctx,
            buffer,
            _host: None,
            read_only: true,
        }))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        tensors_of(&self.ctx).find(|t| t.name() == name)
    }

    /// All tensors, in creation order.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor<'_>> {
        tensors_of(&self.ctx)
    }

    /// Fills the whole buffer with `byte` (e.g. to clear a KV cache).
    pub fn clear(&self, byte: u8) {
        // Weights are never cleared: a mapping is read-only memory, and repacked bytes are not
        // in ggml's layout.
        assert!(!self.read_only, "weights are read-only");
        // SAFETY: the buffer is live and owned by `self`; clearing writes only inside it, and
        // the assert above rules out the read-only weights.
        unsafe { sys::ggml_backend_buffer_clear(self.buffer.ptr.as_ptr(), byte) }
    }

    /// Bytes of backend memory held.
    pub fn size(&self) -> usize {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.buffer.ptr.as_ptr()) }
    }
}

fn tensors_of(ctx: &Context) -> impl Iterator<Item = Tensor<'_>> {
    // SAFETY: iteration over the context's own tensor list; ctx is borrowed for the
    // iterator's lifetime.
    let first = unsafe { sys::ggml_get_first_tensor(ctx.as_ptr()) };
    let mut cur = first;
    std::iter::from_fn(move || {
        let t = NonNull::new(cur)?;
        // SAFETY: t is a tensor of ctx.
        cur = unsafe { sys::ggml_get_next_tensor(ctx.as_ptr(), cur) };
        Some(Tensor::from_raw(ctx, t))
    })
}

/// A computation graph recorded in a context.
#[derive(Debug)]
pub struct Graph<'ctx> {
    ptr: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'ctx Context>,
}

impl Context {
    /// `ggml_new_graph_custom`: a graph of up to `size` nodes (the context must have been
    /// created with room for it).
    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: pure size computation.
        let need = unsafe { sys::ggml_graph_overhead_custom(size, false) };
        assert!(
            self.free_bytes() >= need,
            "context too small for a {size}-node graph"
        );
        // SAFETY: the context has room (checked); no gradients.
        let ptr = unsafe { sys::ggml_new_graph_custom(self.as_ptr(), size, false) };
        Graph {
            ptr: NonNull::new(ptr).expect("ggml_new_graph_custom returned NULL"),
            _ctx: PhantomData,
        }
    }
}

impl<'ctx> Graph<'ctx> {
    /// `ggml_build_forward_expand`: adds `t` and everything it depends on.
    pub fn build_forward_expand(&mut self, t: Tensor<'ctx>) {
        // ggml aborts when the node limit is exceeded, so check first.
        let n = self.n_nodes();
        // SAFETY: the graph is live (owned by `self`); reading its size has no side effects.
        let cap = unsafe { sys::ggml_graph_size(self.ptr.as_ptr()) } as usize;
        assert!(n < cap, "graph node limit reached ({cap})");
        // SAFETY: live graph and tensor (the tensor outlives the graph's context borrow), and
        // the node limit was checked above.
        unsafe { sys::ggml_build_forward_expand(self.ptr.as_ptr(), t.as_ptr()) }
    }

    /// Number of nodes.
    pub fn n_nodes(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_n_nodes(self.ptr.as_ptr()) as usize }
    }

    /// The node at index `i` (for debugging and dumping intermediate tensors by name).
    pub fn node(&self, i: usize) -> Tensor<'ctx> {
        assert!(i < self.n_nodes());
        // SAFETY: index checked.
        let t = unsafe { sys::ggml_graph_node(self.ptr.as_ptr(), i as i32) };
        Tensor::from_raw_unbound(NonNull::new(t).expect("graph node"))
    }
}

/// The graph allocator: plans and reuses one buffer for all intermediate tensors.
#[derive(Debug)]
pub struct GraphAllocator {
    ptr: NonNull<sys::ggml_gallocr>,
}

// SAFETY: exclusively owned allocator without thread affinity.
#[allow(unsafe_code)]
unsafe impl Send for GraphAllocator {}

impl GraphAllocator {
    /// An allocator for CPU (host) memory.
    pub fn new_cpu() -> GraphAllocator {
        // SAFETY: the CPU buffer type is a static singleton.
        let ptr = unsafe { sys::ggml_gallocr_new(sys::ggml_backend_cpu_buffer_type()) };
        GraphAllocator {
            ptr: NonNull::new(ptr).expect("ggml_gallocr_new returned NULL"),
        }
    }

    /// Assigns memory to every not-yet-allocated tensor of `graph`, growing the buffer if the
    /// graph needs more than any before it.
    pub fn alloc_graph(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        // SAFETY: live allocator and graph.
        let ok = unsafe { sys::ggml_gallocr_alloc_graph(self.ptr.as_ptr(), graph.ptr.as_ptr()) };
        if ok {
            Ok(())
        } else {
            Err(GgmlError::GraphAlloc(graph.n_nodes()))
        }
    }

    /// Bytes held by the allocator's compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: live allocator; buffer 0 is the only one (single backend).
        unsafe { sys::ggml_gallocr_get_buffer_size(self.ptr.as_ptr(), 0) }
    }
}

impl Drop for GraphAllocator {
    fn drop(&mut self) {
        // SAFETY: freed exactly once.
        unsafe { sys::ggml_gallocr_free(self.ptr.as_ptr()) }
    }
}
