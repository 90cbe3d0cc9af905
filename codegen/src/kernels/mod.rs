//! Kernel emitters, one file per op family, and what they see of their node ([`Kernel`]).
//!
//! Every node becomes one Cranelift function `fn(operands…, results…, workspace, batch) ->
//! i32`: a pointer per non-constant operand and per result, a pointer to the node's
//! workspace, the batch size, and a status (0, or a code from [`Kernel::fail_if`]).
//! Constant operands (weights) are not parameters: they are read-only data in the module,
//! which an emitter may repack into the layout its loops read ([`Kernel::data`]).

use crate::emit;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, FuncRef, InstBuilder, Signature, Type, UserFuncName, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use qlift_ir::{DType, Dim, Op, OpKind, Tensor, TensorType};
use std::sync::Arc;

mod approx;
mod byte_blocks;
mod conv2d;
mod conv_transpose;
mod depthwise;
mod depthwise_f32;
mod direct;
mod dot4;
pub(crate) mod dynamic;
mod elementwise;
mod fma_rows;
mod fma_tile;
pub(crate) mod fused;
mod gemm_f32;
mod global_max;
mod im2col;
mod index;
mod logic;
mod math;
mod norm;
mod packing;
mod planes;
mod pointwise;
mod pool;
mod pool_rows;
mod product;
mod quant;
mod recurrent;
mod recurrent_rows;
mod reduce;
pub(crate) mod requant;
mod resample;
mod row_tiles;
pub(crate) mod select;
mod shape;
mod split;
pub(crate) mod ukernel;
mod wide;
mod wide_f32;
mod wide_f32_matmul;
mod wide_matmul;
mod wide_pixels;
mod winograd;

/// An operand or result of the node being compiled.
pub(crate) struct Operand {
    /// Its static type (axis 0 may be the batch).
    pub ty: TensorType,
    /// The address of its first element.
    pub ptr: Value,
    /// Its value, when it is a constant (known at compile time).
    pub constant: Option<Arc<Tensor>>,
    /// Weight-only weights the constant is the dequantized value of: until
    /// [`Kernel::define_blocked`] (which [`emit`] calls for every form but the one that
    /// unpacks them), `ptr` is null and the f32 value is not in the compiled code.
    pub blocks: Option<Arc<dynamic::BlockWeights>>,
}

impl Operand {
    /// Whether axis 0 is the batch.
    pub fn batched(&self) -> bool {
        self.ty.shape.dims().first() == Some(&Dim::Batch)
    }

    /// The extents of one sample (axis 0 resolved to 1 when it is the batch).
    pub fn dims(&self) -> Vec<usize> {
        self.ty.shape.resolve(1)
    }

    /// Elements of one sample (all elements for an operand without the batch axis).
    pub fn per_sample(&self) -> usize {
        self.dims().iter().product()
    }

    /// The Cranelift type of one element.
    pub fn elem(&self) -> Type {
        elem_type(self.ty.dtype)
    }
}

/// The Cranelift type of a dtype's elements (4-bit types are stored in bytes).
pub(crate) fn elem_type(dtype: DType) -> Type {
    match dtype {
        DType::F32 => types::F32,
        DType::I32 => types::I32,
        DType::I64 => types::I64,
        DType::I16 => types::I16,
        DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::Bool => types::I8,
    }
}

/// What a kernel emitter works with.
pub(crate) struct Kernel<'k, 'f> {
    /// The function being built, positioned in its body.
    pub fb: &'k mut FunctionBuilder<'f>,
    module: &'k mut dyn Module,
    /// The op and its attributes.
    pub op: &'k Op,
    /// Operands by slot (`None` for a missing optional one).
    pub inputs: Vec<Option<Operand>>,
    /// Results.
    pub outputs: Vec<Operand>,
    /// The batch size (i64).
    pub batch: Value,
    workspace: Value,
    /// Workspace bytes the emitter asked for.
    pub(crate) workspace_bytes: usize,
    /// Messages of the failure codes the kernel may return (code i + 1 is `messages[i]`).
    pub(crate) messages: Vec<String>,
    /// Which form of its op the emitter chose (`direct`, `pointwise`, `im2col`, …): the
    /// profile groups kernels by it.
    pub(crate) form: &'static str,
    /// The wide-vector micro-kernels the target allows (see [`ukernel`]), if any.
    pub(crate) wide: Option<ukernel::Isa>,
    /// Whether kernels may split their work across threads ([`Kernel::parallel_for`]): the
    /// JIT provides the thread pool; object files run serially.
    pub(crate) parallel: bool,
    /// Multiply-accumulates from which [`Kernel::parallel_for`] splits a call.
    pub(crate) parallel_min_work: u64,
    /// The functions besides the kernel's own it defined (tasks, micro-kernels): id, role,
    /// bytes of code; for profilers' symbol maps.
    pub(crate) functions: Vec<(FuncId, &'static str, usize)>,
    /// Whether 3×3 integer convolutions may take the Winograd form ([`winograd`]).
    pub(crate) winograd: bool,
    /// The chain of elementwise nodes this kernel computes in one loop, ending with `op`
    /// (see [`fused`]); `None` for the kernel of `op` alone.
    pub(crate) chain: Option<&'k fused::Chain>,
}

/// The function a JIT-compiled kernel calls to run a task on the thread pool:
/// `PARALLEL_FOR(task, ctx, n, workers)` calls `task(ctx, begin, end, slot)` on disjoint
/// ranges covering `0..n` (one per thread), on at most `workers` threads, each range with
/// the `slot < workers` of the thread running it (an index for per-thread scratch), and
/// returns when all have returned.
pub(crate) const PARALLEL_FOR: &str = "qlift_parallel_for";

/// `PARALLEL_PHASES(ctx, workers, task1, n1, task2, n2, task3, n3)`:
/// [`PARALLEL_FOR`] of each task that is not null over its `0..n` in turn (each may read
/// everything the ones before wrote), in one fork–join: the threads meet at a barrier
/// between phases instead of returning and being woken again.
pub(crate) const PARALLEL_PHASES: &str = "qlift_parallel_phases";

/// The most phases [`PARALLEL_PHASES`] takes.
pub(crate) const MAX_PHASES: usize = 3;

/// Multiply-accumulates below which a kernel call stays on its thread. With parts run on
/// the caller and spinning helpers ([`crate::fork_join`]) a split costs a few µs (it was
/// tens through rayon, and this was 4 M): at 0.5 M (one measurement, not interleaved, on a
/// quiet 2-core machine), batch 1 on two threads took the wide MLP from 59 to 37 µs (one
/// thread: 59) and MobileNetV2 from 8.2 to 6.8 ms (one thread: 8.7); 0.15 M was no better.
pub(crate) const PARALLEL_MIN_WORK: u64 = 500_000;

impl<'k, 'f> Kernel<'k, 'f> {
    pub(crate) fn new(
        fb: &'k mut FunctionBuilder<'f>,
        module: &'k mut dyn Module,
        op: &'k Op,
        inputs: Vec<Option<Operand>>,
        outputs: Vec<Operand>,
        workspace: Value,
        batch: Value,
    ) -> Self {
        Kernel {
            fb,
            module,
            op,
            inputs,
            outputs,
            batch,
            workspace,
            workspace_bytes: 0,
            messages: Vec::new(),
            form: op.kind.name(),
            wide: None,
            parallel: false,
            parallel_min_work: PARALLEL_MIN_WORK,
            functions: Vec::new(),
            winograd: true,
            chain: None,
        }
    }

    /// Operand `i` (an error naming it when it is missing).
    pub fn input(&self, i: usize) -> Result<&Operand, String> {
        self.inputs
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("operand {i} is missing"))
    }

    /// Optional operand `i`.
    pub fn optional(&self, i: usize) -> Option<&Operand> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// Result `i`.
    pub fn output(&self, i: usize) -> &Operand {
        &self.outputs[i]
    }

    /// A read-only data object holding `bytes` (aligned to `align`), and its address:
    /// packed weights, lookup tables, per-channel constants.
    pub fn data(&mut self, bytes: Vec<u8>, align: u64) -> Result<Value, String> {
        let id = self.data_object(bytes, align)?;
        Ok(data_address(self.fb, &mut *self.module, id))
    }

    /// Places the f32 values of the operands that hold weight-only weights (see
    /// [`Operand::blocks`]) in the compiled code, for forms that read them where they are.
    pub fn define_blocked(&mut self) -> Result<(), String> {
        for i in 0..self.inputs.len() {
            let Some(t) = self.inputs[i]
                .as_ref()
                .filter(|o| o.blocks.is_some())
                .and_then(|o| o.constant.clone())
            else {
                continue;
            };
            let ptr = self.data(t.data().as_bytes().to_vec(), 16)?;
            if let Some(o) = self.inputs[i].as_mut() {
                o.ptr = ptr;
                o.blocks = None;
            }
        }
        Ok(())
    }

    /// [`Kernel::data`]'s object, for use in other functions too ([`data_address`]).
    pub fn data_object(&mut self, bytes: Vec<u8>, align: u64) -> Result<DataId, String> {
        let id = self
            .module
            .declare_anonymous_data(false, false)
            .map_err(|e| e.to_string())?;
        let mut desc = DataDescription::new();
        desc.set_align(align.max(1));
        desc.define(bytes.into_boxed_slice());
        self.module
            .define_data(id, &desc)
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// A task of this kernel for [`Kernel::parallel_for`]: a function `fn(ctx: *const u8,
    /// begin: i64, end: i64, slot: i64)` whose body `body(fb, module, [ctx, begin, end,
    /// slot])` emits (`slot`: the thread running the range, below the call's `parts`).
    pub fn task(
        &mut self,
        body: impl FnOnce(&mut FunctionBuilder, &mut dyn Module, [Value; 4]) -> Result<(), String>,
    ) -> Result<FuncId, String> {
        let module = &mut *self.module;
        let ptr = module.isa().pointer_type();
        let mut sig = module.make_signature();
        sig.params.extend([
            AbiParam::new(ptr),
            AbiParam::new(types::I64),
            AbiParam::new(types::I64),
            AbiParam::new(types::I64),
        ]);
        let id = module
            .declare_anonymous_function(&sig)
            .map_err(|e| e.to_string())?;
        let mut ctx = module.make_context();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = fb.create_block();
            fb.append_block_params_for_function_params(block);
            fb.switch_to_block(block);
            let p = fb.block_params(block).to_vec();
            body(&mut fb, module, [p[0], p[1], p[2], p[3]])?;
            fb.ins().return_(&[]);
            fb.seal_all_blocks();
            fb.finalize(module.target_config());
        }
        // QLIFT_DISASM prints tasks too: a split kernel's loop lives in its task.
        let disasm = std::env::var_os("QLIFT_DISASM").is_some();
        ctx.set_disasm(disasm);
        module
            .define_function(id, &mut ctx)
            .map_err(|e| format!("{e:?}"))?;
        let bytes = ctx
            .compiled_code()
            .map_or(0, |c| c.code_info().total_size as usize);
        if let Some(code) = ctx
            .compiled_code()
            .and_then(|c| c.vcode.as_ref())
            .filter(|_| disasm)
        {
            eprintln!("; task of the next kernel\n{code}");
        }
        self.functions.push((id, "task", bytes));
        Ok(id)
    }

    /// `for n in 0..count` (an i64 value) with a body that may use the whole kernel (for
    /// example [`Kernel::parallel_for`]), where [`emit::for_range`]'s sees the builder only.
    pub fn for_each(
        &mut self,
        count: Value,
        body: impl FnOnce(&mut Kernel, Value) -> Result<(), String>,
    ) -> Result<(), String> {
        let header = self.fb.create_block();
        let inner = self.fb.create_block();
        let exit = self.fb.create_block();
        self.fb.append_block_param(header, types::I64);
        let start = emit::iconst(self.fb, 0);
        self.fb.ins().jump(header, &[BlockArg::Value(start)]);
        self.fb.switch_to_block(header);
        let i = self.fb.block_params(header)[0];
        let more = self.fb.ins().icmp(IntCC::SignedLessThan, i, count);
        self.fb.ins().brif(more, inner, &[], exit, &[]);
        self.fb.switch_to_block(inner);
        body(self, i)?;
        let next = self.fb.ins().iadd_imm_s(i, 1);
        self.fb.ins().jump(header, &[BlockArg::Value(next)]);
        self.fb.switch_to_block(exit);
        Ok(())
    }

    /// Runs `task` over `0..n` ([`PARALLEL_FOR`]) on at most `parts` threads with the context
    /// at `ctx`: on the JIT's thread pool when the kernel may go parallel and the call does
    /// at least `work` multiply-accumulates ([`Kernel::parallel_min_work`]), else as one call
    /// `task(ctx, 0, n, 0)`.
    pub fn parallel_for(
        &mut self,
        task: FuncId,
        ctx: Value,
        n: i64,
        parts: usize,
        work: u64,
    ) -> Result<(), String> {
        let end = emit::iconst(self.fb, n);
        self.parallel_for_value(task, ctx, end, parts, work)
    }

    /// [`Kernel::parallel_for`] over `0..n` with `n` known at run time only (rows of a
    /// batch); `work` is that of one sample.
    pub fn parallel_for_value(
        &mut self,
        task: FuncId,
        ctx: Value,
        end: Value,
        parts: usize,
        work: u64,
    ) -> Result<(), String> {
        let f = self.module.declare_func_in_func(task, self.fb.func);
        if !self.splits(work) {
            let zero = emit::iconst(self.fb, 0);
            self.fb.ins().call(f, &[ctx, zero, end, zero]);
            return Ok(());
        }
        let ptr = self.module.isa().pointer_type();
        let i64 = types::I64;
        let run = self.import(PARALLEL_FOR, &[ptr, ptr, i64, i64], &[])?;
        let addr = self.fb.ins().func_addr(ptr, f);
        let parts = self.workers_arg(parts);
        self.fb.ins().call(run, &[addr, ctx, end, parts]);
        Ok(())
    }

    /// [`Kernel::parallel_for`] of each `(task, n)` of `phases` in turn (each reads what
    /// the ones before wrote; at most [`MAX_PHASES`]), in one fork–join
    /// ([`PARALLEL_PHASES`]) when the call splits.
    pub fn parallel_phases(
        &mut self,
        phases: &[(FuncId, i64)],
        ctx: Value,
        parts: usize,
        work: u64,
    ) -> Result<(), String> {
        if phases.len() > MAX_PHASES {
            return Err(format!(
                "{} phases in one call (at most {MAX_PHASES})",
                phases.len()
            ));
        }
        if !self.splits(work) || phases.len() == 1 {
            for &(task, n) in phases {
                self.parallel_for(task, ctx, n, parts, work)?;
            }
            return Ok(());
        }
        let ptr = self.module.isa().pointer_type();
        let i64 = types::I64;
        let mut params = vec![ptr, i64];
        let mut args = vec![ctx, self.workers_arg(parts)];
        for i in 0..MAX_PHASES {
            params.extend([ptr, i64]);
            let (task, n) = match phases.get(i) {
                Some(&(task, n)) => {
                    let f = self.module.declare_func_in_func(task, self.fb.func);
                    (self.fb.ins().func_addr(ptr, f), n)
                }
                None => (emit::iconst(self.fb, 0), 0),
            };
            args.extend([task, emit::iconst(self.fb, n)]);
        }
        let run = self.import(PARALLEL_PHASES, &params, &[])?;
        self.fb.ins().call(run, &args);
        Ok(())
    }

    /// Whether a call of `work` multiply-accumulates splits across threads.
    fn splits(&self, work: u64) -> bool {
        self.parallel && work >= self.parallel_min_work
    }

    /// The most threads (`parts`) argument of a split call.
    fn workers_arg(&mut self, parts: usize) -> Value {
        emit::iconst(self.fb, parts.clamp(1, 1 << 16) as i64)
    }

    /// A scratch area of `bytes` bytes for this kernel alone (im2col rows, packed tiles),
    /// valid while it runs; 64-byte aligned.
    pub fn workspace(&mut self, bytes: usize) -> Value {
        self.workspace_bytes = self.workspace_bytes.max(bytes);
        self.workspace
    }

    /// Returns from the kernel with a failure when `cond` (an i8 truth value) is set; the
    /// compiled model reports `message` naming the node.
    pub fn fail_if(&mut self, cond: Value, message: &str) {
        let code = match self.messages.iter().position(|m| m == message) {
            Some(i) => i + 1,
            None => {
                self.messages.push(message.to_string());
                self.messages.len()
            }
        };
        let fail = self.fb.create_block();
        let ok = self.fb.create_block();
        self.fb.ins().brif(cond, fail, &[], ok, &[]);
        self.fb.switch_to_block(fail);
        let status = self.fb.ins().iconst(types::I32, code.min(255) as i64);
        self.fb.ins().return_(&[status]);
        self.fb.switch_to_block(ok);
    }

    /// A callable external function (for example `expf` for Sigmoid and Tanh): resolved to
    /// qlift's own implementation by the JIT, to the C library by a linker for AOT.
    pub fn import(
        &mut self,
        name: &str,
        params: &[Type],
        returns: &[Type],
    ) -> Result<FuncRef, String> {
        import(self.fb, &mut *self.module, name, params, returns)
    }

    /// Places `code`, machine code of a System V function of `params` pointer arguments and
    /// no result (a [`ukernel`] micro-kernel), in the module, and returns it (declared in a
    /// function, it is called like any other).
    pub fn machine_code(&mut self, code: &[u8], params: usize) -> Result<FuncId, String> {
        let ptr = self.module.isa().pointer_type();
        let mut sig = Signature::new(CallConv::SystemV);
        sig.params.extend((0..params).map(|_| AbiParam::new(ptr)));
        let id = self
            .module
            .declare_anonymous_function(&sig)
            .map_err(|e| e.to_string())?;
        self.module
            .define_function_bytes(id, 64, code, &[])
            .map_err(|e| e.to_string())?;
        self.functions.push((id, "ukernel", code.len()));
        Ok(id)
    }

    /// The [`ukernel::pair_tile`] micro-kernels of tiles of `rows` output channels and, when
    /// the channel count leaves `tail > 0` of them, of the last tile (both placed once).
    pub fn pair_tiles(
        &mut self,
        isa: ukernel::Isa,
        rows: usize,
        tail: usize,
        tile: impl Fn(usize) -> ukernel::PairTile,
    ) -> Result<(FuncId, Option<FuncId>), String> {
        let main = self.machine_code(&ukernel::pair_tile(&tile(rows), isa)?, 5)?;
        let tail = if tail > 0 {
            Some(self.machine_code(&ukernel::pair_tile(&tile(tail), isa)?, 5)?)
        } else {
            None
        };
        Ok((main, tail))
    }

    /// Whether the target has CPU feature `name` (a Cranelift x86 flag such as `has_ssse3`).
    pub fn target_has(&self, name: &str) -> bool {
        self.module
            .isa()
            .isa_flags()
            .iter()
            .any(|f| f.name == name && f.as_bool() == Some(true))
    }

    /// Samples of input 0 (the activations every convolution and product form walks one
    /// sample at a time): the run-time batch when its axis 0 is the batch, else its extent
    /// (unlike [`Kernel::samples`], which counts an unbatched operand as one sample).
    pub fn input_samples(&mut self) -> Result<Value, String> {
        let x = self.input(0)?;
        let (batched, n) = (x.batched(), x.dims()[0]);
        Ok(if batched {
            self.batch
        } else {
            emit::iconst(self.fb, n as i64)
        })
    }

    /// The float node's fused activation as the bounds its results are clamped to (the
    /// whole line when it has none), as the FMA micro-kernels take them.
    pub fn float_clamp(&self) -> Result<(f32, f32), String> {
        Ok(self
            .op
            .fused_activation()?
            .unwrap_or((f32::NEG_INFINITY, f32::INFINITY)))
    }

    /// Whether the target multiplies i64x2 lanes in one instruction (AVX-512DQ with VL).
    pub fn has_i64x2_mul(&self) -> bool {
        self.target_has("has_avx512dq") && self.target_has("has_avx512vl")
    }

    /// Whether the target is x86-64 (where Cranelift's `x86_*` instructions lower).
    pub fn is_x86(&self) -> bool {
        self.module.isa().triple().architecture == target_lexicon::Architecture::X86_64
    }

    /// Whether byte shuffles with a constant pattern are one `pshufb` (SSSE3): without it
    /// Cranelift calls a helper the JIT does not provide, so kernels built on them stay off.
    pub fn has_byte_shuffle(&self) -> bool {
        self.target_has("has_ssse3")
    }

    /// Whether to use VNNI dot products: the target has AVX-VNNI or AVX512-VNNI (not turned
    /// off by `CodegenOptions::no_vnni`), so that u8×i8 dot products of 16 bytes are one
    /// `vpdpbusd` (without it the same tree would compile to slower widening code).
    pub fn has_vnni(&self) -> bool {
        self.target_has("has_avx_vnni") || self.target_has("has_avx512vnni")
    }

    /// Copies `bytes` (a run-time i64) from `src` to `dst` (the C library's memcpy).
    pub fn memcpy(&mut self, dst: Value, src: Value, bytes: Value) {
        let config = self.module.target_config();
        self.fb.call_memcpy(config, dst, src, bytes);
    }

    /// The number of samples an operand holds: the batch if axis 0 is the batch (`batched`,
    /// see [`Operand::batched`]), else 1.
    pub fn samples(&mut self, batched: bool) -> Value {
        if batched {
            self.batch
        } else {
            emit::iconst(self.fb, 1)
        }
    }
}

/// [`Kernel::import`] into the function `fb` builds (a task's, for example).
pub(crate) fn import(
    fb: &mut FunctionBuilder,
    module: &mut dyn Module,
    name: &str,
    params: &[Type],
    returns: &[Type],
) -> Result<FuncRef, String> {
    let mut sig = Signature::new(module.isa().default_call_conv());
    sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    sig.returns
        .extend(returns.iter().map(|&t| AbiParam::new(t)));
    let id = module
        .declare_function(name, Linkage::Import, &sig)
        .map_err(|e| e.to_string())?;
    Ok(module.declare_func_in_func(id, fb.func))
}

/// The address of data object `id` in the function `fb` builds.
pub(crate) fn data_address(fb: &mut FunctionBuilder, module: &mut dyn Module, id: DataId) -> Value {
    let gv = module.declare_data_in_func(id, fb.func);
    let ptr = module.isa().pointer_type();
    fb.ins().symbol_value(ptr, gv)
}

/// Picks a convolution's form: the first that applies, fastest first. Each form is its own
/// module and decides from the node alone; they share only what sits below them all
/// (`packing`, `dot4`, `planes`, `requant`, `ukernel`), never each other.
/// - `depthwise-f32`: float depthwise, 256-bit FMA micro-kernels (AVX2 + FMA);
/// - `wide-f32`: float, 256-bit FMA micro-kernels (AVX2 + FMA);
/// - `winograd`: dense 3×3, stride 1, F(2×2, 3×3) on the same micro-kernels, 2.25× fewer
///   multiplies, where the weights keep it exact (and VNNI's u8×i8 quads do not apply);
/// - `wide-pixels` / `wide`: dense, 256-bit micro-kernels (pixels or channels as the
///   broadcast rows, whichever wastes fewer lanes, see [`wide_dense`]);
/// - `depthwise`: depthwise, 256-bit micro-kernels;
/// - `pointwise`: 1×1 with 128-bit Cranelift vectors (SSSE3);
/// - `direct`: narrow kernels and depthwise with 128-bit vectors (SSSE3);
/// - `product`: im2col and scalar, anything else (float convolutions included).
fn conv(k: &mut Kernel) -> Result<(), String> {
    for form in [
        depthwise_f32::conv,
        wide_f32::conv,
        winograd::conv,
        wide_dense,
        depthwise::conv,
        pointwise::conv,
        direct::conv,
    ] {
        if form(k)? {
            return Ok(());
        }
    }
    product::conv(k)
}

/// How much larger a share of its lanes the pixel-rows form must fill than `wide-direct`
/// to be chosen: it pays for transposing the input planes and the results. Measured on
/// MobileNetV2 and ResNet-18 (1 thread, AVX-512 VNNI): 1×1 layers at 14 × 14 (196 of 208
/// lanes direct, ratio 1.06) ran 0–7 % slower as pixel rows, 3×3 at 14 × 14 and 28 × 28
/// (ratio 1.14) 3–7 % faster, 7 × 7 layers (ratio 1.31) 12–27 % faster.
const PIXEL_ROWS_MARGIN: f64 = 1.1;

/// Dense int8 convolutions on the wide micro-kernels: output pixels as rows and channels
/// as lanes (`wide-pixels`) where that fills a larger share of the lanes than
/// `wide-direct`'s vectors along output rows by [`PIXEL_ROWS_MARGIN`] (small planes:
/// 7 × 7, 14 × 14, with channels in whole blocks of sixteen), else `wide-direct`.
fn wide_dense(k: &mut Kernel) -> Result<bool, String> {
    let better = match (wide_pixels::lane_use(k)?, wide::lane_use(k)?) {
        (Some(pixels), Some(direct)) => pixels > direct * PIXEL_ROWS_MARGIN,
        _ => false,
    };
    Ok(better && wide_pixels::conv(k)? || wide::conv(k)?)
}

/// Emits the kernel of one node.
pub(crate) fn emit(k: &mut Kernel) -> Result<(), String> {
    use OpKind::*;
    if let Some(chain) = k.chain {
        return fused::emit(k, chain);
    }
    // Weight-only weights stay 4- or 8-bit in the form that unpacks them at run time;
    // every other form reads their f32 value.
    if k.inputs.iter().flatten().any(|o| o.blocks.is_some()) {
        if wide_f32_matmul::matmul(k)? {
            return Ok(());
        }
        k.define_blocked()?;
    }
    match k.op.kind {
        Identity | Dropout | Flatten | Reshape | Squeeze | Unsqueeze => shape::copy(k),
        QuantizeLinear => quant::quantize(k),
        DequantizeLinear => quant::dequantize(k),
        DynamicQuantizeLinear => dynamic::dynamic_quantize(k),
        BlockDequantizeLinear => dynamic::dequantize_blocks(k),
        Requantize => quant::requantize(k),
        QAdd => quant::qadd(k),
        QConcat => quant::qconcat(k),
        MaxPool | AveragePool => pool::pool(k),
        GlobalAveragePool => pool::global_pool(k),
        GlobalMaxPool => global_max::global_max_pool(k),
        QAveragePool | QGlobalAveragePool => pool::qpool(k),
        Add | Sub | Mul | Div => elementwise::binary(k),
        Relu | Clip | LeakyRelu | Sigmoid | Tanh | HardSigmoid | HardSwish => math::unary(k),
        Sqrt | Exp | Log | Abs | Neg | Reciprocal | Floor | Ceil | Round | Erf | Sin | Cos
        | Sign | Gelu | Elu | Selu | Softplus | Mish | Softsign | ThresholdedRelu | Celu => {
            math::unary(k)
        }
        Min | Max | Sum | Mean | PRelu => math::variadic(k),
        Pow => math::pow(k),
        Mod => math::modulo(k),
        Equal | Greater | GreaterOrEqual | Less | LessOrEqual | Not | And | Or | Xor => {
            logic::compare(k)
        }
        Where => logic::select(k),
        Softmax => elementwise::softmax(k),
        BatchNormalization => elementwise::batch_norm(k),
        Transpose => shape::transpose(k),
        Concat => shape::concat(k),
        Pad => shape::pad(k),
        Conv | QConv | QLinearConv | ConvInteger => conv(k),
        MatMul if k.input(0)?.ty.dtype == DType::F32 => {
            if wide_f32_matmul::matmul(k)? {
                return Ok(());
            }
            gemm_f32::matmul(k)
        }
        MatMul | Gemm | QMatMul | QLinearMatMul | MatMulInteger => {
            if wide_f32_matmul::matmul(k)? || wide_matmul::matmul(k)? {
                return Ok(());
            }
            product::matmul(k)
        }
        Shape | Size => index::shape(k),
        Gather => index::gather(k),
        Slice => index::slice(k),
        Expand => index::expand(k),
        Tile => index::tile(k),
        Cast => index::cast(k),
        Range => Err(
            "a Range whose operands are computed at run time is not supported by code generation"
                .to_string(),
        ),
        Resize => resample::resize(k),
        DepthToSpace | SpaceToDepth => resample::block(k),
        OneHot | GatherElements | GatherND | ScatterND | ScatterElements | Trilu | NonZero => {
            select::emit(k)
        }
        ReduceMean | ReduceSum | ReduceMax | ReduceMin | ReduceProd | ReduceL1 | ReduceL2
        | ReduceSumSquare | ReduceLogSum | ReduceLogSumExp => reduce::reduce(k),
        ArgMax | ArgMin => reduce::arg_extreme(k),
        CumSum => reduce::cumsum(k),
        LayerNormalization => norm::layer_norm(k),
        InstanceNormalization | GroupNormalization => norm::group_norm(k),
        LpNormalization => norm::lp_norm(k),
        LogSoftmax => norm::log_softmax(k),
        Hardmax => norm::hardmax(k),
        ConvTranspose => conv_transpose::conv_transpose(k),
        LSTM | GRU | RNN => recurrent::recurrent(k),
        // The control-flow driver (`crate::flow`) runs these between compiled programs.
        If | Loop | Scan => Err(format!("{} is control flow: compile the graph with qlift_codegen::flow::FlowProgram, which runs its bodies as programs of their own", k.op.kind)),
    }
}
