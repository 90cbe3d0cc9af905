//! Kernel emitters, one file per op family, and what they see of their node ([`Kernel`]).
//!
//! Every node becomes one Cranelift function `fn(operands…, results…, workspace, batch) ->
//! i32`: a pointer per non-constant operand and per result, a pointer to the node's
//! workspace, the batch size, and a status (0, or a code from [`Kernel::fail_if`]).
//! Constant operands (weights) are not parameters: they are read-only data in the module,
//! which an emitter may repack into the layout its loops read ([`Kernel::data`]).

use crate::emit;
use cranelift_codegen::ir::{types, AbiParam, FuncRef, InstBuilder, Signature, Type, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{DataDescription, Linkage, Module};
use qlift_ir::{DType, Dim, Op, OpKind, Tensor, TensorType};
use std::sync::Arc;

mod direct;
mod elementwise;
mod index;
mod pointwise;
mod planes;
mod pool;
mod quant;
mod product;
mod resample;
pub(crate) mod select;
pub(crate) mod requant;
mod shape;

/// An operand or result of the node being compiled.
pub(crate) struct Operand {
    /// Its static type (axis 0 may be the batch).
    pub ty: TensorType,
    /// The address of its first element.
    pub ptr: Value,
    /// Its value, when it is a constant (known at compile time).
    pub constant: Option<Arc<Tensor>>,
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
}

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
        Kernel { fb, module, op, inputs, outputs, batch, workspace, workspace_bytes: 0, messages: Vec::new() }
    }

    /// Operand `i` (an error naming it when it is missing).
    pub fn input(&self, i: usize) -> Result<&Operand, String> {
        self.inputs.get(i).and_then(Option::as_ref).ok_or_else(|| format!("operand {i} is missing"))
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
        let id = self.module.declare_anonymous_data(false, false).map_err(|e| e.to_string())?;
        let mut desc = DataDescription::new();
        desc.set_align(align.max(1));
        desc.define(bytes.into_boxed_slice());
        self.module.define_data(id, &desc).map_err(|e| e.to_string())?;
        let gv = self.module.declare_data_in_func(id, self.fb.func);
        let ptr = self.module.isa().pointer_type();
        Ok(self.fb.ins().symbol_value(ptr, gv))
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
    pub fn import(&mut self, name: &str, params: &[Type], returns: &[Type]) -> Result<FuncRef, String> {
        let mut sig = Signature::new(self.module.isa().default_call_conv());
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns.extend(returns.iter().map(|&t| AbiParam::new(t)));
        let id = self.module.declare_function(name, Linkage::Import, &sig).map_err(|e| e.to_string())?;
        Ok(self.module.declare_func_in_func(id, self.fb.func))
    }

    /// Whether the target has CPU feature `name` (a Cranelift x86 flag such as `has_ssse3`).
    pub fn target_has(&self, name: &str) -> bool {
        self.module.isa().isa_flags().iter().any(|f| f.name == name && f.as_bool() == Some(true))
    }

    /// Whether the target multiplies i64x2 lanes in one instruction (AVX-512DQ with VL).
    pub fn has_i64x2_mul(&self) -> bool {
        self.target_has("has_avx512dq") && self.target_has("has_avx512vl")
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

/// Emits the kernel of one node.
pub(crate) fn emit(k: &mut Kernel) -> Result<(), String> {
    use OpKind::*;
    match k.op.kind {
        Identity | Dropout | Flatten | Reshape | Squeeze | Unsqueeze => shape::copy(k),
        QuantizeLinear => quant::quantize(k),
        DequantizeLinear => quant::dequantize(k),
        Requantize => quant::requantize(k),
        QAdd => quant::qadd(k),
        QConcat => quant::qconcat(k),
        MaxPool | AveragePool => pool::pool(k),
        GlobalAveragePool | GlobalMaxPool => pool::global_pool(k),
        QAveragePool | QGlobalAveragePool => pool::qpool(k),
        Add | Sub | Mul | Div => elementwise::binary(k),
        Relu | Clip | LeakyRelu | Sigmoid | Tanh | HardSigmoid | HardSwish => elementwise::unary(k),
        Softmax => elementwise::softmax(k),
        BatchNormalization => elementwise::batch_norm(k),
        Transpose => shape::transpose(k),
        Concat => shape::concat(k),
        Pad => shape::pad(k),
        Conv | QConv | QLinearConv | ConvInteger => product::conv(k),
        MatMul | Gemm | QMatMul | QLinearMatMul | MatMulInteger => product::matmul(k),
        Shape | Size => index::shape(k),
        Gather => index::gather(k),
        Slice => index::slice(k),
        Expand => index::expand(k),
        Tile => index::tile(k),
        Cast => index::cast(k),
        Range => Err("a Range whose operands are computed at run time is not supported by code generation".to_string()),
        Resize => resample::resize(k),
        DepthToSpace | SpaceToDepth => resample::block(k),
        OneHot | GatherElements | GatherND | ScatterND | ScatterElements | Trilu | NonZero => select::emit(k),
    }
}
