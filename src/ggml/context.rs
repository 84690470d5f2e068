//! ggml contexts and tensors, and the graph operations the Llama forward pass uses.
//!
//! A [`Context`] owns a `ggml_context` (RAII). A [`Tensor<'ctx>`] is a copyable handle that
//! borrows its context, so a tensor cannot outlive the memory it lives in. Operations are
//! methods on the context that records them; inputs may come from any context that outlives it
//! (weights live in a long-lived context, graph nodes in a per-step one).
//!
//! ggml aborts the process on a failed shape assertion. Shapes from model files are validated at
//! load time; the operations here re-check their preconditions and panic with a Rust message
//! (a bug in our code, never a reaction to input) before ggml could abort.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;

use super::sys;
use super::Type;

/// Owner of a `ggml_context`.
#[derive(Debug)]
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    /// Backing memory for tensor metadata (and data when allocating); must not move or drop
    /// while the context lives. `u64` elements keep it 8-byte aligned for ggml's objects.
    _mem: Vec<u64>,
}

// SAFETY: a ggml_context has no thread affinity and no interior sharing: moving the owner to
// another thread moves exclusive access with it.
#[allow(unsafe_code)]
unsafe impl Send for Context {}

impl Context {
    /// A context that holds only tensor metadata (`no_alloc`): data comes from backend buffers
    /// or from a memory-mapped file. `n_tensors` and `graph_nodes` size the metadata arena.
    pub fn new_metadata(n_tensors: usize, graph_nodes: usize) -> Context {
        // SAFETY: pure size computations with no preconditions.
        let bytes = unsafe {
            n_tensors * sys::ggml_tensor_overhead()
                + if graph_nodes > 0 {
                    sys::ggml_graph_overhead_custom(graph_nodes, false)
                } else {
                    0
                }
        };
        Self::with_memory(bytes, true)
    }

    /// A context whose tensors own their data inside the context's own arena (`bytes` in total,
    /// metadata included). Used by tests and small helpers.
    pub fn new_allocating(bytes: usize) -> Context {
        Self::with_memory(bytes, false)
    }

    fn with_memory(bytes: usize, no_alloc: bool) -> Context {
        let words = bytes.div_ceil(8).max(1);
        let mut mem = vec![0u64; words];
        let params = sys::ggml_init_params {
            mem_size: words * 8,
            mem_buffer: mem.as_mut_ptr().cast(),
            no_alloc,
        };
        // SAFETY: `mem` outlives the context (it is stored next to it and freed after
        // ggml_free in Drop); ggml only reads/writes within `mem_size`.
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).expect("ggml_init returned NULL (out of memory)");
        Context { ptr, _mem: mem }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    /// `ggml_reset`: forgets every tensor and graph recorded in the context but keeps its
    /// arena, so a per-step graph is rebuilt without allocating or zeroing memory. Taking
    /// `&mut self` guarantees no tensor handle of the old contents survives.
    pub fn reset(&mut self) {
        // SAFETY: the context is valid; ggml_reset only rewinds the object list.
        unsafe { sys::ggml_reset(self.as_ptr()) }
    }

    /// Bytes of the arena still free (`ggml_get_mem_size - ggml_used_mem`).
    pub fn free_bytes(&self) -> usize {
        // SAFETY: the context pointer is valid for the lifetime of self.
        unsafe { sys::ggml_get_mem_size(self.as_ptr()) - sys::ggml_used_mem(self.as_ptr()) }
    }

    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        let ptr = NonNull::new(t).expect("ggml returned a NULL tensor (context arena exhausted)");
        Tensor {
            ptr,
            _ctx: PhantomData,
        }
    }

    fn check_room(&self) {
        // SAFETY: pure size computation.
        let need = unsafe { sys::ggml_tensor_overhead() };
        assert!(
            self.free_bytes() >= need,
            "ggml context arena exhausted: size it for more tensors"
        );
    }

    /// `ggml_new_tensor`: a new tensor with up to four dimensions (`ne`, ggml order).
    pub fn new_tensor(&self, ty: Type, ne: &[i64]) -> Tensor<'_> {
        assert!(
            (1..=4).contains(&ne.len()),
            "tensors have 1 to 4 dimensions"
        );
        assert!(
            ne.iter().all(|&n| n > 0),
            "tensor dimensions must be positive"
        );
        if !ne.is_empty() {
            assert!(
                ne[0] % ty.block_size() as i64 == 0,
                "row length {} is not a multiple of the {} block size",
                ne[0],
                ty.name()
            );
        }
        self.check_room();
        // SAFETY: ne has ne.len() (1..=4) valid entries; the context is valid and has room.
        let t = unsafe { sys::ggml_new_tensor(self.as_ptr(), ty.0, ne.len() as i32, ne.as_ptr()) };
        self.wrap(t)
    }

    /// `ggml_get_rows`: rows of `a` selected by the I32 tensor `ids`.
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, ids: Tensor<'a>) -> Tensor<'a> {
        assert_eq!(ids.ty(), Type::I32, "get_rows needs I32 row ids");
        self.check_room();
        // SAFETY: both tensors are live (their contexts outlive 'a) and shapes are checked.
        self.wrap(unsafe { sys::ggml_get_rows(self.as_ptr(), a.as_ptr(), ids.as_ptr()) })
    }

    /// `ggml_mul_mat`: `a` is [k, n, ...], `b` is [k, m, ...]; result [n, m, ...] in F32.
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        let (na, nb) = (a.ne(), b.ne());
        assert!(
            na[0] == nb[0] && nb[2] % na[2] == 0 && nb[3] % na[3] == 0,
            "mul_mat shape mismatch: {na:?} x {nb:?}"
        );
        self.check_room();
        // SAFETY: live tensors; ggml_can_mul_mat's condition checked above.
        self.wrap(unsafe { sys::ggml_mul_mat(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// `ggml_add`: `a + b`, `b` broadcast over `a`.
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        assert_can_repeat(b, a, "add");
        self.check_room();
        // SAFETY: live tensors; broadcast condition checked.
        self.wrap(unsafe { sys::ggml_add(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// `ggml_mul`: element-wise `a * b`, `b` broadcast over `a`.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        assert_can_repeat(b, a, "mul");
        self.check_room();
        // SAFETY: live tensors; broadcast condition checked.
        self.wrap(unsafe { sys::ggml_mul(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// `ggml_scale`: `a * s`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Tensor<'a> {
        self.check_room();
        // SAFETY: live tensor.
        self.wrap(unsafe { sys::ggml_scale(self.as_ptr(), a.as_ptr(), s) })
    }

    /// `ggml_rms_norm` over the first dimension.
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        self.check_room();
        // SAFETY: live tensor.
        self.wrap(unsafe { sys::ggml_rms_norm(self.as_ptr(), a.as_ptr(), eps) })
    }

    /// `ggml_silu`.
    pub fn silu<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.check_room();
        // SAFETY: live tensor.
        self.wrap(unsafe { sys::ggml_silu(self.as_ptr(), a.as_ptr()) })
    }

    /// `ggml_swiglu_split`: `silu(gate) * up`, fused.
    pub fn swiglu_split<'a>(&'a self, gate: Tensor<'a>, up: Tensor<'a>) -> Tensor<'a> {
        assert_eq!(gate.ne(), up.ne(), "swiglu_split needs equal shapes");
        self.check_room();
        // SAFETY: live tensors of equal shape.
        self.wrap(unsafe { sys::ggml_swiglu_split(self.as_ptr(), gate.as_ptr(), up.as_ptr()) })
    }

    /// `ggml_soft_max_ext`: softmax(a * scale + mask) along the first dimension.
    pub fn soft_max_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Tensor<'a> {
        self.check_room();
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: live tensors; a NULL mask is allowed by ggml.
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.as_ptr(), a.as_ptr(), m, scale, 0.0) })
    }

    /// `ggml_rope_ext` with the normal (Llama) rotation. `pos` is I32 [n_tokens];
    /// `freq_factors` (Llama 3.1 `rope_freqs`) is optional.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        freq_factors: Option<Tensor<'a>>,
        n_dims: i32,
        n_ctx_orig: i32,
        freq_base: f32,
        freq_scale: f32,
    ) -> Tensor<'a> {
        assert_eq!(pos.ty(), Type::I32, "rope positions are I32");
        assert_eq!(pos.ne()[0], a.ne()[2], "one rope position per token");
        self.check_room();
        let ff = freq_factors.map_or(std::ptr::null_mut(), |f| f.as_ptr());
        // SAFETY: live tensors; mode 0 is the normal rotation; no YaRN (ext_factor 0).
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                self.as_ptr(),
                a.as_ptr(),
                pos.as_ptr(),
                ff,
                n_dims,
                0,
                n_ctx_orig,
                freq_base,
                freq_scale,
                0.0,
                1.0,
                32.0,
                1.0,
            )
        })
    }

    /// `ggml_flash_attn_ext`: q [d, n_q, h, s], k/v [d, n_kv, h_kv, s], mask F16 [n_kv, n_q_pad].
    /// Result is [d, h, n_q, s] (heads and tokens permuted), F32.
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Tensor<'a> {
        let (nq, nk) = (q.ne(), k.ne());
        assert!(
            nq[0] == nk[0] && nq[2] % nk[2] == 0,
            "flash_attn_ext shape mismatch: q {nq:?} k {nk:?}"
        );
        self.check_room();
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: live tensors with compatible head shapes.
        let t = unsafe {
            sys::ggml_flash_attn_ext(
                self.as_ptr(),
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                m,
                scale,
                0.0,
                0.0,
            )
        };
        // SAFETY: t is a freshly created flash-attn node; F32 precision as llama.cpp sets it.
        unsafe { sys::ggml_flash_attn_ext_set_prec(t, sys::GGML_PREC_F32) };
        self.wrap(t)
    }

    /// `ggml_set_rows`: writes row `i` of `src` into row `rows[i]` (I64) of `dst`, converting
    /// type (f32 to the cache's f16). Returns the updated view of `dst`.
    pub fn set_rows<'a>(
        &'a self,
        dst: Tensor<'a>,
        src: Tensor<'a>,
        rows: Tensor<'a>,
    ) -> Tensor<'a> {
        let (nd, ns, nr) = (dst.ne(), src.ne(), rows.ne());
        assert_eq!(rows.ty(), Type::I64, "set_rows needs I64 row indices");
        assert!(
            nd[0] == ns[0] && nr[0] == ns[1] && ns[2] == nd[2] && ns[3] == nd[3],
            "set_rows shape mismatch: dst {nd:?} src {ns:?} rows {nr:?}"
        );
        self.check_room();
        // SAFETY: live tensors, shapes checked. Row indices are bounds-checked by the caller
        // that fills them (the KV cache only hands out cells below its size).
        self.wrap(unsafe {
            sys::ggml_set_rows(self.as_ptr(), dst.as_ptr(), src.as_ptr(), rows.as_ptr())
        })
    }

    /// `ggml_cpy`: copy `a` into `b` (converting type), returning the view of `b`.
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        assert_eq!(
            a.n_elements(),
            b.n_elements(),
            "cpy needs equal element counts"
        );
        self.check_room();
        // SAFETY: live tensors with equal element counts.
        self.wrap(unsafe { sys::ggml_cpy(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// `ggml_cont`: a contiguous copy.
    pub fn cont<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.check_room();
        // SAFETY: live tensor.
        self.wrap(unsafe { sys::ggml_cont(self.as_ptr(), a.as_ptr()) })
    }

    /// `ggml_reshape_2d/3d/4d` (by the length of `ne`); `a` must be contiguous.
    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[i64]) -> Tensor<'a> {
        assert!(a.is_contiguous(), "reshape needs a contiguous tensor");
        assert_eq!(
            ne.iter().product::<i64>(),
            a.n_elements(),
            "reshape must keep the element count"
        );
        self.check_room();
        // SAFETY: live contiguous tensor, same element count.
        let t = unsafe {
            match *ne {
                [n0] => sys::ggml_reshape_1d(self.as_ptr(), a.as_ptr(), n0),
                [n0, n1] => sys::ggml_reshape_2d(self.as_ptr(), a.as_ptr(), n0, n1),
                [n0, n1, n2] => sys::ggml_reshape_3d(self.as_ptr(), a.as_ptr(), n0, n1, n2),
                [n0, n1, n2, n3] => sys::ggml_reshape_4d(self.as_ptr(), a.as_ptr(), n0, n1, n2, n3),
                _ => panic!("reshape to 1..=4 dimensions"),
            }
        };
        self.wrap(t)
    }

    /// `ggml_view_4d`: a strided view of `a` (ne in elements, nb1..nb3 and offset in bytes).
    pub fn view<'a>(
        &'a self,
        a: Tensor<'a>,
        ne: [i64; 4],
        nb: [usize; 3],
        offset: usize,
    ) -> Tensor<'a> {
        // The last byte the view can touch must lie inside `a`.
        let row = Type(a.ty().0).row_bytes(ne[0]);
        let last = offset
            + row
            + (ne[1] as usize - 1) * nb[0]
            + (ne[2] as usize - 1) * nb[1]
            + (ne[3] as usize - 1) * nb[2];
        assert!(
            ne.iter().all(|&n| n > 0) && last <= a.n_bytes(),
            "view out of bounds: ne {ne:?} nb {nb:?} offset {offset} of {} bytes",
            a.n_bytes()
        );
        self.check_room();
        // SAFETY: the view's extent was checked to lie within `a`.
        self.wrap(unsafe {
            sys::ggml_view_4d(
                self.as_ptr(),
                a.as_ptr(),
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                nb[0],
                nb[1],
                nb[2],
                offset,
            )
        })
    }

    /// `ggml_permute`: axis `i` of `a` moves to position `axes[i]`.
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [i32; 4]) -> Tensor<'a> {
        let mut seen = [false; 4];
        for &x in &axes {
            assert!(
                (0..4).contains(&x) && !seen[x as usize],
                "permute axes {axes:?}"
            );
            seen[x as usize] = true;
        }
        self.check_room();
        // SAFETY: live tensor; axes are a permutation of 0..4.
        self.wrap(unsafe {
            sys::ggml_permute(
                self.as_ptr(),
                a.as_ptr(),
                axes[0],
                axes[1],
                axes[2],
                axes[3],
            )
        })
    }

    /// `ggml_transpose`: swap the first two dimensions (a view).
    pub fn transpose<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.check_room();
        // SAFETY: live tensor.
        self.wrap(unsafe { sys::ggml_transpose(self.as_ptr(), a.as_ptr()) })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ggml_init and is freed exactly once; tensors borrowing
        // this context cannot outlive it (their lifetime is tied to &self).
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

fn assert_can_repeat(b: Tensor<'_>, a: Tensor<'_>, op: &str) {
    let (na, nb) = (a.ne(), b.ne());
    assert!(
        (0..4).all(|i| nb[i] > 0 && na[i] % nb[i] == 0),
        "{op}: {nb:?} cannot be broadcast to {na:?}"
    );
}

/// A ggml tensor that borrows its context.
#[derive(Clone, Copy)]
pub struct Tensor<'ctx> {
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'ctx Context>,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name())
            .field("type", &self.ty().name())
            .field("ne", &self.ne())
            .finish()
    }
}

impl<'ctx> Tensor<'ctx> {
    /// A handle to a tensor of `ctx`.
    pub(crate) fn from_raw(_ctx: &'ctx Context, ptr: NonNull<sys::ggml_tensor>) -> Tensor<'ctx> {
        Tensor {
            ptr,
            _ctx: PhantomData,
        }
    }

    /// A handle whose lifetime the caller ties to the owning context (graph nodes).
    pub(crate) fn from_raw_unbound(ptr: NonNull<sys::ggml_tensor>) -> Tensor<'ctx> {
        Tensor {
            ptr,
            _ctx: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    fn raw(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in a context borrowed for 'ctx; ggml does not mutate the
        // header concurrently (graph building and compute are single-owner operations).
        unsafe { self.ptr.as_ref() }
    }

    /// Element counts per dimension (ggml order: ne[0] is the row length).
    pub fn ne(&self) -> [i64; 4] {
        self.raw().ne
    }

    /// Strides in bytes per dimension.
    pub fn nb(&self) -> [usize; 4] {
        self.raw().nb
    }

    /// The tensor's element type.
    pub fn ty(&self) -> Type {
        Type(self.raw().type_)
    }

    /// `ggml_nelements`.
    pub fn n_elements(&self) -> i64 {
        self.ne().iter().product()
    }

    /// `ggml_nbytes`.
    pub fn n_bytes(&self) -> usize {
        // SAFETY: live tensor.
        unsafe { sys::ggml_nbytes(self.as_ptr()) }
    }

    /// `ggml_is_contiguous`.
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: live tensor.
        unsafe { sys::ggml_is_contiguous(self.as_ptr()) }
    }

    /// `ggml_set_name` (truncated to ggml's 63-byte limit).
    pub fn set_name(self, name: &str) -> Self {
        let mut buf = [0u8; 64];
        let n = name.len().min(63);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: buf is NUL-terminated within 64 bytes; ggml copies it into the tensor.
        unsafe { sys::ggml_set_name(self.as_ptr(), buf.as_ptr().cast()) };
        self
    }

    /// `ggml_set_name` from format arguments, formatted on the stack (no allocation), so graph
    /// building can name every node `"{stage}-{layer}"` at no per-token cost.
    pub fn set_name_fmt(self, args: std::fmt::Arguments<'_>) -> Self {
        struct Buf {
            bytes: [u8; 64],
            len: usize,
        }
        impl std::fmt::Write for Buf {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                // Truncate at ggml's 63-byte limit, leaving room for the NUL.
                let n = s.len().min(63 - self.len);
                self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
                self.len += n;
                Ok(())
            }
        }
        let mut buf = Buf {
            bytes: [0; 64],
            len: 0,
        };
        let _ = std::fmt::Write::write_fmt(&mut buf, args);
        // SAFETY: buf is zero-initialised and at most 63 bytes are written, so it is
        // NUL-terminated; ggml copies it into the tensor.
        unsafe { sys::ggml_set_name(self.as_ptr(), buf.bytes.as_ptr().cast()) };
        self
    }

    /// The tensor's name.
    pub fn name(&self) -> String {
        let name = &self.raw().name;
        // SAFETY: ggml keeps the name NUL-terminated within its 64-byte array.
        let c = unsafe { CStr::from_ptr(name.as_ptr()) };
        c.to_string_lossy().into_owned()
    }

    /// Marks a graph input (`ggml_set_input`), so the allocator gives it its own memory.
    pub fn set_input(self) -> Self {
        // SAFETY: live tensor; only sets a flag.
        unsafe { sys::ggml_set_input(self.as_ptr()) };
        self
    }

    /// Marks a graph output (`ggml_set_output`), so the allocator never reuses its memory.
    pub fn set_output(self) -> Self {
        // SAFETY: live tensor; only sets a flag.
        unsafe { sys::ggml_set_output(self.as_ptr()) };
        self
    }

    /// Whether the tensor has memory (from a backend buffer or its context arena).
    pub fn is_allocated(&self) -> bool {
        !self.raw().data.is_null()
    }

    /// Copies `src` into the tensor. The tensor must be allocated, and `src` must have exactly
    /// the tensor's byte size.
    pub fn write_bytes(&self, src: &[u8]) {
        assert!(self.is_allocated(), "tensor {} has no memory", self.name());
        assert_eq!(src.len(), self.n_bytes(), "write size for {}", self.name());
        // SAFETY: the tensor has n_bytes of memory at data (checked allocated; size matches).
        // Backend buffers go through ggml_backend_tensor_set; context-arena tensors are plain
        // host memory.
        unsafe {
            if self.raw().buffer.is_null() {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.raw().data.cast(), src.len());
            } else {
                sys::ggml_backend_tensor_set(self.as_ptr(), src.as_ptr().cast(), 0, src.len());
            }
        }
    }

    /// Copies the tensor's bytes into `dst` (exactly its byte size).
    pub fn read_bytes(&self, dst: &mut [u8]) {
        assert!(self.is_allocated(), "tensor {} has no memory", self.name());
        self.assert_readable();
        assert_eq!(dst.len(), self.n_bytes(), "read size for {}", self.name());
        // SAFETY: as in write_bytes, reading instead of writing.
        unsafe {
            if self.raw().buffer.is_null() {
                std::ptr::copy_nonoverlapping(self.raw().data.cast(), dst.as_mut_ptr(), dst.len());
            } else {
                sys::ggml_backend_tensor_get(self.as_ptr(), dst.as_mut_ptr().cast(), 0, dst.len());
            }
        }
    }

    /// Panics for a tensor in an extra buffer type: its bytes are in the kernels' own layout
    /// and the buffer type has no read-back (ggml would call a NULL function).
    fn assert_readable(&self) {
        let buf = self.raw().buffer;
        if buf.is_null() {
            return;
        }
        // SAFETY: a tensor's non-NULL buffer is live while its owner (which the handle
        // borrows) lives.
        let buft = unsafe { sys::ggml_backend_buffer_get_type(buf) };
        assert!(
            !super::ExtraBufferType::is_extra(buft),
            "tensor {} is repacked: its bytes cannot be read back",
            self.name()
        );
    }

    /// Writes f32 values into an F32 tensor.
    pub fn write_f32(&self, src: &[f32]) {
        assert_eq!(
            self.ty(),
            Type::F32,
            "write_f32 on a {} tensor",
            self.ty().name()
        );
        self.write_bytes(as_bytes(src));
    }

    /// Writes i32 values into an I32 tensor.
    pub fn write_i32(&self, src: &[i32]) {
        assert_eq!(
            self.ty(),
            Type::I32,
            "write_i32 on a {} tensor",
            self.ty().name()
        );
        self.write_bytes(as_bytes(src));
    }

    /// Writes i64 values into an I64 tensor.
    pub fn write_i64(&self, src: &[i64]) {
        assert_eq!(
            self.ty(),
            Type::I64,
            "write_i64 on a {} tensor",
            self.ty().name()
        );
        self.write_bytes(as_bytes(src));
    }

    /// Writes f16 values (as raw `half` bits) into an F16 tensor.
    pub fn write_f16_bits(&self, src: &[u16]) {
        assert_eq!(
            self.ty(),
            Type::F16,
            "write_f16 on a {} tensor",
            self.ty().name()
        );
        self.write_bytes(as_bytes(src));
    }

    /// Reads an F32 tensor into `dst`, which must have exactly its element count.
    pub fn read_f32(&self, dst: &mut [f32]) {
        assert_eq!(
            self.ty(),
            Type::F32,
            "read_f32 on a {} tensor",
            self.ty().name()
        );
        assert_eq!(dst.len() as i64, self.n_elements());
        let n = std::mem::size_of_val(dst);
        // SAFETY: an f32 slice reinterpreted as bytes of the same length; any byte pattern
        // written back is a valid f32.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), n) };
        self.read_bytes(bytes);
    }

    /// Reads `dst.len()` f32 values starting at byte `offset` (an F32 tensor's rows).
    pub fn read_f32_at(&self, offset: usize, dst: &mut [f32]) {
        assert_eq!(self.ty(), Type::F32);
        let n = std::mem::size_of_val(dst);
        assert!(
            offset + n <= self.n_bytes(),
            "read past the end of {}",
            self.name()
        );
        assert!(self.is_allocated(), "tensor {} has no memory", self.name());
        self.assert_readable();
        // SAFETY: range checked against the tensor's size; reinterpretation as in read_f32.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), n);
            if self.raw().buffer.is_null() {
                std::ptr::copy_nonoverlapping(
                    self.raw().data.cast::<u8>().add(offset),
                    bytes.as_mut_ptr(),
                    n,
                );
            } else {
                sys::ggml_backend_tensor_get(self.as_ptr(), bytes.as_mut_ptr().cast(), offset, n);
            }
        }
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: f32/i32 have no padding; every byte of them is initialised.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
