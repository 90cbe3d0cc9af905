//! Graph → Cranelift module: one kernel function per node, then an entry function that
//! calls them in topological order on buffers placed by the memory plan. The same code
//! path serves the JIT (`cranelift-jit`) and ahead-of-time object files
//! (`cranelift-object`), through the `Module` trait.
//!
//! The entry is `fn(inputs: *const *const u8, outputs: *const *mut u8, arena: *mut u8,
//! batch: i64) -> i32`: pointer arrays in graph-input and computed-output order, an arena
//! of [`Program::arena`] bytes (64-byte aligned), and a status: 0, or `(step + 1) << 8 |
//! code` when the kernel of `steps[step]` failed with its code `code`.

use crate::emit;
use crate::error::{bug, CodegenError};
use crate::fusion;
use crate::isa::CodegenOptions;
use crate::kernels::{self, Kernel, Operand};
use crate::plan::{self, Buffer, Plan};
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, UserFuncName, Value as ClValue,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use qlift_ir::{Dim, Graph, NodeOp, Tensor, TensorType, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// Where a graph output comes from.
#[derive(Clone, Debug)]
pub enum OutputSource {
    /// Written by a kernel into the entry's output pointer number `n`.
    Computed(usize),
    /// A graph input, copied by the caller.
    Input(usize),
    /// A constant, copied by the caller.
    Constant(Arc<Tensor>),
    /// The same value as an earlier output.
    Alias(usize),
}

/// One kernel call of the entry function.
#[derive(Clone, Debug)]
pub struct Step {
    /// The node's name (errors name it).
    pub node: String,
    /// The op's name.
    pub op: String,
    /// What the kernel's failure codes mean (`code - 1` indexes it).
    pub messages: Vec<String>,
    /// The form of its op the kernel was emitted in (see `Kernel::form`).
    pub form: String,
    /// Its functions (the kernel, its tasks and micro-kernels): id, role, bytes of code
    /// (what `QLIFT_PERF_MAP` writes for `perf`).
    pub functions: Vec<(FuncId, &'static str, usize)>,
}

/// What the caller of the entry function needs to know.
#[derive(Clone, Debug)]
pub struct Program {
    /// The entry function.
    pub entry: FuncId,
    /// Graph inputs: names and types, in entry order.
    pub inputs: Vec<(String, TensorType)>,
    /// Graph outputs: names, types and sources, in graph order.
    pub outputs: Vec<(String, TensorType, OutputSource)>,
    /// Number of output pointers the entry takes.
    pub computed_outputs: usize,
    /// The kernel calls, in order.
    pub steps: Vec<Step>,
    /// The arena layout.
    pub arena: Plan,
    /// Whether some kernel computes across the batch axis (a recurrent layer whose sequence
    /// is the batch): a call must then not be split into parts of the batch.
    pub batch_coupled: bool,
    /// The per-step timer counters when built with `CodegenOptions::profile`: a writable
    /// data object of [`PROFILE_SLOTS`] u64 per step (nanoseconds, calls).
    pub profile: Option<DataId>,
}

/// u64 counters per step in the profile data: total nanoseconds, calls.
pub const PROFILE_SLOTS: usize = 2;

/// The timer functions a profiled entry calls (resolved by the JIT): `START() -> i64`
/// (nanoseconds on a monotonic clock), `STOP(counters, step, start)`.
pub const PROFILE_START: &str = "qlift_profile_start";
/// See [`PROFILE_START`].
pub const PROFILE_STOP: &str = "qlift_profile_stop";

/// Where a value lives while the entry runs.
#[derive(Clone)]
enum Location {
    Input(usize),
    Constant(Arc<Tensor>),
    Output(usize),
    Arena(usize),
}

/// Compiles `graph` into `module`: kernels, then the entry function named `entry_name`
/// (exported, for object files). With `opts.profile`, the entry times every kernel call
/// (see [`Program::profile`]).
/// With `parallel`, kernels may split their work across the JIT's thread pool (they call
/// [`kernels::PARALLEL_FOR`], which the JIT resolves); object files are built without.
pub fn build(
    module: &mut dyn Module,
    graph: &Graph,
    entry_name: &str,
    opts: &CodegenOptions,
    parallel: bool,
) -> Result<Program, CodegenError> {
    let profile = opts.profile;
    let wide = wide_isa(module.isa(), opts);
    let order = graph.topo_order().map_err(bug)?;
    // Kernels are specialized on extents: every one must be known, or the batch.
    for &id in &order {
        let node = graph.node(id);
        if let Some(v) = node.outputs.iter().find(|v| !v.ty.shape.is_specialized()) {
            let message = match node.op.kind() {
                Some(qlift_ir::OpKind::NonZero) => kernels::select::NONZERO.to_string(),
                _ => format!("value `{}` has extents {} that are not known yet: bind the input shapes first (qlift_ir::specialize)", v.name, v.ty.shape),
            };
            return Err(CodegenError::Unsupported {
                node: node.name.clone(),
                op: node.op.name().to_string(),
                message,
            });
        }
    }
    let mut location: HashMap<ValueId, Location> = HashMap::new();
    let inputs: Vec<(String, TensorType)> = graph
        .input_values()
        .iter()
        .map(|&v| (graph.value(v).name.clone(), graph.value_type(v).clone()))
        .collect();
    for (k, v) in graph.input_values().into_iter().enumerate() {
        location.insert(v, Location::Input(k));
    }
    // Outputs: a computed value gets an entry output pointer the first time it is listed.
    let mut outputs = Vec::new();
    let mut computed_outputs = 0;
    for (j, &v) in graph.outputs().iter().enumerate() {
        let (name, ty) = (graph.value(v).name.clone(), graph.value_type(v).clone());
        let source = match (&graph.node(v.node).op, location.get(&v)) {
            (_, Some(Location::Output(n))) => OutputSource::Alias(
                graph.outputs()[..j]
                    .iter()
                    .position(|&o| o == v)
                    .unwrap_or(*n),
            ),
            (NodeOp::Input, _) => OutputSource::Input(
                graph
                    .inputs()
                    .iter()
                    .position(|&n| n == v.node)
                    .unwrap_or(0),
            ),
            (NodeOp::Const(t), _) => OutputSource::Constant(t.clone()),
            (NodeOp::Apply(_), _) => {
                location.insert(v, Location::Output(computed_outputs));
                computed_outputs += 1;
                OutputSource::Computed(computed_outputs - 1)
            }
        };
        outputs.push((name, ty, source));
    }
    // Chains of elementwise nodes computed as one kernel, at their last node's place.
    let fusion = if opts.no_fusion {
        fusion::Fusion::default()
    } else {
        fusion::chains(graph, &order)
    };
    // Kernels, in order; arena buffers for the other computed values, and workspaces.
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut calls: Vec<Call> = Vec::new();
    let mut steps = Vec::new();
    let mut last_use: HashMap<ValueId, usize> = HashMap::new();
    let mut batch_coupled = false;
    // Weight-only weights behind constants (see `Operand::blocks`).
    let mut blocked: HashMap<ValueId, Arc<kernels::dynamic::BlockWeights>> = HashMap::new();
    for &id in &order {
        let node = graph.node(id);
        match &node.op {
            NodeOp::Const(t) => {
                location.insert(
                    ValueId {
                        node: id,
                        output: 0,
                    },
                    Location::Constant(t.clone()),
                );
                continue;
            }
            NodeOp::Input => continue,
            NodeOp::Apply(_) => {}
        }
        let NodeOp::Apply(op) = &node.op else {
            continue;
        };
        if fusion.absorbed.contains(&id) {
            continue;
        }
        let chain = fusion.chains.get(&id);
        let operands: Vec<Option<ValueId>> = match chain {
            Some((_, operands)) => operands.iter().copied().map(Some).collect(),
            None => graph.node_inputs(id),
        };
        // Weight-only weights become constants here (see `kernels::dynamic`).
        let result = ValueId {
            node: id,
            output: 0,
        };
        if !location.contains_key(&result) {
            let constants: Vec<Option<&Arc<Tensor>>> = operands
                .iter()
                .map(|v| match v.map(|v| &location[&v]) {
                    Some(Location::Constant(t)) => Some(t),
                    _ => None,
                })
                .collect();
            if let Some((t, blocks)) =
                kernels::dynamic::compile_time_value(op.kind, &op.attrs, &constants)
            {
                location.insert(result, Location::Constant(Arc::new(t)));
                if let Some(b) = blocks.filter(|_| !opts.weight_only_f32) {
                    blocked.insert(result, Arc::new(b));
                }
                continue;
            }
        }
        let step = steps.len();
        let rank = operands
            .iter()
            .flatten()
            .map(|&v| graph.value_type(v).shape.rank())
            .max()
            .unwrap_or(0);
        batch_coupled |= across_axis_zero(op, rank)
            && operands
                .first()
                .copied()
                .flatten()
                .is_some_and(|x| graph.value_type(x).shape.dims().first() == Some(&Dim::Batch));
        let results: Vec<ValueId> = (0..node.outputs.len())
            .map(|output| ValueId { node: id, output })
            .collect();
        for r in &results {
            if !location.contains_key(r) {
                let ty = graph.value_type(*r);
                location.insert(*r, Location::Arena(buffers.len()));
                buffers.push(buffer_of(ty, step));
            }
        }
        for v in operands.iter().flatten() {
            last_use.insert(*v, step);
        }
        let unsupported = |message: String| CodegenError::Unsupported {
            node: node.name.clone(),
            op: op.kind.name().to_string(),
            message,
        };
        // The kernel's signature: runtime operands, results, workspace, batch.
        let ptr = module.isa().pointer_type();
        let runtime: Vec<ValueId> = operands
            .iter()
            .flatten()
            .filter(|v| !matches!(location[v], Location::Constant(_)))
            .copied()
            .collect();
        let mut sig = module.make_signature();
        sig.params
            .extend((0..runtime.len() + results.len() + 1).map(|_| AbiParam::new(ptr)));
        sig.params.push(AbiParam::new(types::I64));
        sig.returns.push(AbiParam::new(types::I32));
        let func = module.declare_anonymous_function(&sig).map_err(bug)?;
        // A leading extent the kernel may treat as its batch (see `leading_samples`); when
        // the kernel cannot take that form (a limitation of its emitter), it is built again
        // as written. A chain takes it when every one of its nodes does.
        let preferred = match chain {
            None => node_samples(graph, id, &location),
            Some((c, _)) => {
                let each: Option<Vec<_>> = c
                    .links
                    .iter()
                    .map(|l| node_samples(graph, l.node, &location))
                    .collect();
                each.and_then(|mut each| {
                    let b = each.first()?.0;
                    let root = each.pop()?;
                    each.iter().all(|e| e.0 == b).then_some(root)
                })
            }
        };
        let forms = if preferred.is_some() {
            vec![preferred, None]
        } else {
            vec![None]
        };
        let last_form = forms.len() - 1;
        let mut built = None;
        for (attempt, samples) in forms.into_iter().enumerate() {
            ctx.func.clear();
            ctx.func.signature = sig.clone();
            ctx.func.name = UserFuncName::user(0, func.as_u32());
            let retype = |ty: &TensorType, is_constant: bool| -> TensorType {
                match samples {
                    Some((b, _))
                        if !is_constant && ty.shape.dims().first() == Some(&Dim::Fixed(b)) =>
                    {
                        batch_leading(ty)
                    }
                    _ => ty.clone(),
                }
            };
            let emitted = (|| -> Result<_, CodegenError> {
                let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let block = fb.create_block();
                fb.append_block_params_for_function_params(block);
                fb.switch_to_block(block);
                let params = fb.block_params(block).to_vec();
                let mut next = 0;
                let mut operand_args = Vec::new();
                for v in &operands {
                    let Some(v) = v else {
                        operand_args.push(None);
                        continue;
                    };
                    let ty = retype(
                        graph.value_type(*v),
                        matches!(location[v], Location::Constant(_)),
                    );
                    operand_args.push(Some(match &location[v] {
                        Location::Constant(t) => (ty, None, Some(t.clone()), blocked.get(v)),
                        _ => {
                            next += 1;
                            (ty, Some(params[next - 1]), None, None)
                        }
                    }));
                }
                let result_args: Vec<Operand> = results
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Operand {
                        ty: retype(graph.value_type(*r), false),
                        ptr: params[next + i],
                        constant: None,
                        blocks: None,
                    })
                    .collect();
                let (workspace, batch) = (
                    params[next + results.len()],
                    params[next + results.len() + 1],
                );
                // Constants become read-only data objects (an emitter may ignore them and repack).
                let mut kernel = Kernel::new(
                    &mut fb,
                    module,
                    op,
                    Vec::new(),
                    result_args,
                    workspace,
                    batch,
                );
                kernel.wide = wide;
                kernel.chain = chain.map(|(c, _)| c);
                kernel.parallel = parallel;
                kernel.winograd = !opts.no_winograd;
                kernel.parallel_min_work =
                    opts.parallel_min_macs.unwrap_or(kernels::PARALLEL_MIN_WORK);
                for arg in operand_args {
                    let operand = match arg {
                        None => None,
                        Some((ty, Some(ptr), _, _)) => Some(Operand {
                            ty,
                            ptr,
                            constant: None,
                            blocks: None,
                        }),
                        // Weight-only weights: defined when a form reads the f32 value.
                        Some((ty, None, Some(t), Some(blocks))) => Some(Operand {
                            ty,
                            ptr: kernel.fb.ins().iconst(ptr, 0),
                            constant: Some(t),
                            blocks: Some(blocks.clone()),
                        }),
                        Some((ty, None, Some(t), None)) => {
                            let ptr = kernel
                                .data(t.data().as_bytes().to_vec(), 16)
                                .map_err(&unsupported)?;
                            Some(Operand {
                                ty,
                                ptr,
                                constant: Some(t),
                                blocks: None,
                            })
                        }
                        Some(_) => unreachable!("an operand has a pointer or a constant"),
                    };
                    kernel.inputs.push(operand);
                }
                kernels::emit(&mut kernel).map_err(&unsupported)?;
                let out = (
                    kernel.workspace_bytes,
                    std::mem::take(&mut kernel.messages),
                    kernel.form,
                    std::mem::take(&mut kernel.functions),
                );
                let ok = fb.ins().iconst(types::I32, 0);
                fb.ins().return_(&[ok]);
                fb.seal_all_blocks();
                fb.finalize(module.target_config());
                Ok(out)
            })();
            match emitted {
                Ok(out) => {
                    built = Some((out, samples));
                    break;
                }
                Err(e) if attempt == last_form => return Err(e),
                // The builder's context is cleared only when a function is finalized.
                Err(_) => fctx = FunctionBuilderContext::new(),
            }
        }
        let Some(((workspace_bytes, messages, form, mut functions), samples)) = built else {
            return Err(bug("no kernel form was tried"));
        };
        let form = match chain {
            Some((c, _)) => format!("fused({} ops)", c.links.len()),
            None => form.to_string(),
        };
        let label = match chain {
            Some((c, _)) => {
                let ops: Vec<String> = c
                    .links
                    .iter()
                    .map(|l| graph.node(l.node).op.name().to_string())
                    .collect();
                format!("{form}: {}", ops.join(", "))
            }
            None => op.kind.to_string(),
        };
        let disasm = std::env::var_os("QLIFT_DISASM").is_some();
        ctx.set_disasm(disasm);
        module
            .define_function(func, &mut ctx)
            .map_err(|e| bug(format!("node `{}`: {e:?}", node.name)))?;
        let bytes = ctx
            .compiled_code()
            .map_or(0, |c| c.code_info().total_size as usize);
        functions.insert(0, (func, "kernel", bytes));
        if let Some(code) = ctx
            .compiled_code()
            .and_then(|c| c.vcode.as_ref())
            .filter(|_| disasm)
        {
            eprintln!("; kernel of node `{}` ({label})\n{code}", node.name);
        }
        module.clear_context(&mut ctx);
        let workspace = buffers.len();
        buffers.push(Buffer {
            per_sample: 0,
            fixed: workspace_bytes,
            first: step,
            last: step,
        });
        calls.push(Call {
            func,
            operands: runtime,
            results,
            workspace,
            samples: samples.map(|(b, _)| b),
        });
        steps.push(Step {
            node: node.name.clone(),
            op: op.kind.name().to_string(),
            messages,
            form,
            functions,
        });
    }
    // Arena values live from their step to their last reader.
    for (v, loc) in &location {
        if let (Location::Arena(b), Some(&last)) = (loc, last_use.get(v)) {
            buffers[*b].last = buffers[*b].last.max(last);
        }
    }
    let arena = plan::plan(&buffers);
    let profile = if profile {
        Some(profile_counters(module, calls.len())?)
    } else {
        None
    };
    let entry = entry_function(module, entry_name, &calls, &location, &arena, profile)?;
    Ok(Program {
        entry,
        inputs,
        outputs,
        computed_outputs,
        steps,
        arena,
        batch_coupled,
        profile,
    })
}

/// The zeroed, writable counters of a profiled program (see [`Program::profile`]).
fn profile_counters(module: &mut dyn Module, steps: usize) -> Result<DataId, CodegenError> {
    let id = module.declare_anonymous_data(true, false).map_err(bug)?;
    let mut desc = DataDescription::new();
    desc.set_align(8);
    desc.define_zeroinit((steps * PROFILE_SLOTS * 8).max(8));
    module.define_data(id, &desc).map_err(bug)?;
    Ok(id)
}

/// The wide-vector micro-kernels `isa` can run within `opts.max_vector_bits`: 256-bit ones
/// need AVX2, and VNNI's `vpdpwssd`/`vpdpbusd` on ymm where the target has it: VEX with
/// AVX-VNNI, else EVEX with AVX-512 VNNI + VL (`CodegenOptions::no_vnni` turns both flags off).
pub(crate) fn wide_isa(
    isa: &dyn cranelift_codegen::isa::TargetIsa,
    opts: &CodegenOptions,
) -> Option<kernels::ukernel::Isa> {
    let has = |name: &str| {
        isa.isa_flags()
            .iter()
            .any(|f| f.name == name && f.as_bool() == Some(true))
    };
    if opts.max_vector_bits.is_some_and(|b| b < 256)
        || !has("has_avx2")
        || isa.triple().architecture != target_lexicon::Architecture::X86_64
    {
        return None;
    }
    Some(if has("has_avx_vnni") {
        kernels::ukernel::Isa::AvxVnni
    } else if has("has_avx512vnni") && has("has_avx512vl") {
        kernels::ukernel::Isa::Avx512Vnni
    } else {
        kernels::ukernel::Isa::Avx2
    })
}

/// The arena buffer of a value defined at `step`.
fn buffer_of(ty: &TensorType, step: usize) -> Buffer {
    let bytes = ty.shape.resolve(1).iter().product::<usize>() * ty.dtype.size_of();
    match ty.shape.dims().first() {
        Some(Dim::Batch) => Buffer {
            per_sample: bytes,
            fixed: 0,
            first: step,
            last: step,
        },
        _ => Buffer {
            per_sample: 0,
            fixed: bytes,
            first: step,
            last: step,
        },
    }
}

/// One kernel call of the entry function.
struct Call {
    func: FuncId,
    /// Its run-time operands and results, in parameter order.
    operands: Vec<ValueId>,
    results: Vec<ValueId>,
    /// Its workspace buffer.
    workspace: usize,
    /// The batch it is called with, when it is not the entry's (a fixed leading extent).
    samples: Option<usize>,
}

/// `ty` with its leading extent made the batch.
fn batch_leading(ty: &TensorType) -> TensorType {
    let mut t = ty.clone();
    if let Some(d) = t.shape.0.first_mut() {
        *d = Dim::Batch;
    }
    t
}

/// [`leading_samples`] of node `id`, whose operands are constants where `location` says so
/// (an operand computed inside a fused chain has no location and is not one).
fn node_samples(
    graph: &Graph,
    id: qlift_ir::NodeId,
    location: &HashMap<ValueId, Location>,
) -> Option<(usize, Vec<TensorType>)> {
    let NodeOp::Apply(op) = &graph.node(id).op else {
        return None;
    };
    let operands = graph.node_inputs(id);
    let operand_types: Vec<Option<TensorType>> = operands
        .iter()
        .map(|v| v.map(|v| graph.value_type(v).clone()))
        .collect();
    let constant: Vec<bool> = operands
        .iter()
        .map(|v| v.is_some_and(|v| matches!(location.get(&v), Some(Location::Constant(_)))))
        .collect();
    let result_types: Vec<TensorType> = graph
        .node(id)
        .outputs
        .iter()
        .map(|v| v.ty.clone())
        .collect();
    leading_samples(op, &operand_types, &constant, &result_types)
}

/// A node whose operands and results have a fixed leading extent `b > 1` (a model exported
/// with batch 8, or a graph specialized to a batch) is compiled as if that axis were the
/// batch and called with batch `b`: kernels compute sample by sample along the batch, and
/// treat an operand without the batch as one whole sample, so the leading axis must be the
/// batch for them to see every sample. Allowed when the op's type inference, on the
/// operands retyped so, gives exactly the results retyped so (the batch then stays the
/// leading axis of every result, which rules out ops that move or merge it), and the op does
/// not compute across axis 0 (a Softmax, normalization or reduction along it). Returns `b`
/// with the retyped results.
fn leading_samples(
    op: &qlift_ir::Op,
    operands: &[Option<TensorType>],
    constant: &[bool],
    results: &[TensorType],
) -> Option<(usize, Vec<TensorType>)> {
    let b = match results.first()?.shape.dims().first()? {
        Dim::Fixed(b) if *b > 1 => *b,
        _ => return None,
    };
    if across_axis_zero(
        op,
        operands
            .iter()
            .flatten()
            .map(|t| t.shape.rank())
            .max()
            .unwrap_or(0),
    ) {
        return None;
    }
    let retyped: Vec<Option<TensorType>> = operands
        .iter()
        .zip(constant)
        .map(|(t, &c)| {
            t.as_ref().map(|t| {
                if !c && t.shape.dims().first() == Some(&Dim::Fixed(b)) {
                    batch_leading(t)
                } else {
                    t.clone()
                }
            })
        })
        .collect();
    if !retyped.iter().flatten().any(|t| t.shape.has_batch()) {
        return None;
    }
    let want: Vec<TensorType> = results.iter().map(batch_leading).collect();
    let refs: Vec<Option<&TensorType>> = retyped.iter().map(Option::as_ref).collect();
    let declared: Vec<TensorType> = if op.kind.declares_result_type() {
        want.clone()
    } else {
        Vec::new()
    };
    let inferred = qlift_ir::infer_op(op, &refs, &declared).ok()?;
    (inferred == want).then_some((b, want))
}

/// Whether `op`, on operands of rank up to `rank`, computes across axis 0 (so that axis
/// cannot be treated as the batch). Axes may be negative (`-rank` is axis 0).
fn across_axis_zero(op: &qlift_ir::Op, rank: usize) -> bool {
    use qlift_ir::OpKind::*;
    let is_zero = |a: i64| a == 0 || a == -(rank as i64);
    let axis_zero = |name: &str| op.attrs.int(name).is_ok_and(is_zero);
    let axes_have_zero = op
        .attrs
        .ints("axes")
        .map_or(true, |a| a.iter().any(|&a| is_zero(a)));
    match op.kind {
        Softmax | LogSoftmax | Hardmax | LayerNormalization | LpNormalization | CumSum | ArgMax
        | ArgMin => axis_zero("axis"),
        ReduceMean | ReduceSum | ReduceMax | ReduceMin | ReduceProd | ReduceL1 | ReduceL2
        | ReduceSumSquare | ReduceLogSum | ReduceLogSumExp => axes_have_zero,
        Concat | QConcat | Gather => axis_zero("axis"),
        // Indices address the leading axes (or any axis) of the data: never per sample.
        GatherElements | GatherND | ScatterND | ScatterElements | NonZero => true,
        // The row index of a matrix is part of the result.
        Trilu => rank <= 2,
        // Axis 0 is the sequence (layout 0) or the batch whose rows are walked one by one.
        LSTM | GRU | RNN => true,
        // One range for the whole tensor, every sample included.
        DynamicQuantizeLinear => true,
        _ => false,
    }
}

/// The entry function: computes every buffer's address and calls the kernels in order.
fn entry_function(
    module: &mut dyn Module,
    name: &str,
    calls: &[Call],
    location: &HashMap<ValueId, Location>,
    arena: &Plan,
    profile: Option<DataId>,
) -> Result<FuncId, CodegenError> {
    let ptr = module.isa().pointer_type();
    let mut sig = module.make_signature();
    sig.params.extend([
        AbiParam::new(ptr),
        AbiParam::new(ptr),
        AbiParam::new(ptr),
        AbiParam::new(types::I64),
    ]);
    sig.returns.push(AbiParam::new(types::I32));
    let entry = module
        .declare_function(name, Linkage::Export, &sig)
        .map_err(bug)?;
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, entry.as_u32());
    let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let block = fb.create_block();
    fb.append_block_params_for_function_params(block);
    fb.switch_to_block(block);
    let p = fb.block_params(block).to_vec();
    let (inputs, outputs, base, batch) = (p[0], p[1], p[2], p[3]);
    let pointer_bytes = ptr.bytes() as i32;
    let at = |fb: &mut FunctionBuilder, offset: plan::Offset| -> ClValue {
        let scaled = fb.ins().imul_imm_s(batch, offset.per_sample as i64);
        let bytes = fb.ins().iadd_imm_s(scaled, offset.fixed as i64);
        fb.ins().iadd(base, bytes)
    };
    let address = |fb: &mut FunctionBuilder, v: &ValueId| -> ClValue {
        match &location[v] {
            Location::Input(k) => fb.ins().load(
                ptr,
                MemFlagsData::trusted(),
                inputs,
                *k as i32 * pointer_bytes,
            ),
            Location::Output(n) => fb.ins().load(
                ptr,
                MemFlagsData::trusted(),
                outputs,
                *n as i32 * pointer_bytes,
            ),
            Location::Arena(b) => at(fb, arena.offsets[*b]),
            Location::Constant(_) => unreachable!("constants are not kernel parameters"),
        }
    };
    // The timer functions and the counters' address, when profiling.
    let timers = match profile {
        None => None,
        Some(data) => {
            let mut start_sig = module.make_signature();
            start_sig.returns.push(AbiParam::new(types::I64));
            let mut stop_sig = module.make_signature();
            stop_sig.params.extend([
                AbiParam::new(ptr),
                AbiParam::new(types::I64),
                AbiParam::new(types::I64),
            ]);
            let start = module
                .declare_function(PROFILE_START, Linkage::Import, &start_sig)
                .map_err(bug)?;
            let stop = module
                .declare_function(PROFILE_STOP, Linkage::Import, &stop_sig)
                .map_err(bug)?;
            let (start, stop) = (
                module.declare_func_in_func(start, fb.func),
                module.declare_func_in_func(stop, fb.func),
            );
            let gv = module.declare_data_in_func(data, fb.func);
            Some((start, stop, gv))
        }
    };
    for (
        step,
        Call {
            func,
            operands,
            results,
            workspace,
            samples,
        },
    ) in calls.iter().enumerate()
    {
        let callee = module.declare_func_in_func(*func, fb.func);
        let mut args: Vec<ClValue> = operands
            .iter()
            .chain(results)
            .map(|v| address(&mut fb, v))
            .collect();
        args.push(at(&mut fb, arena.offsets[*workspace]));
        let kernel_batch = match samples {
            Some(b) => emit::iconst(&mut fb, *b as i64),
            None => batch,
        };
        args.push(kernel_batch);
        let started = timers.map(|(start, _, _)| {
            let call = fb.ins().call(start, &[]);
            fb.inst_results(call)[0]
        });
        let call = fb.ins().call(callee, &args);
        let status = fb.inst_results(call)[0];
        if let (Some((_, stop, gv)), Some(started)) = (timers, started) {
            let counters = fb.ins().symbol_value(ptr, gv);
            let step = emit::iconst(&mut fb, step as i64);
            fb.ins().call(stop, &[counters, step, started]);
        }
        let (fail, ok) = (fb.create_block(), fb.create_block());
        fb.ins().brif(status, fail, &[], ok, &[]);
        fb.switch_to_block(fail);
        let code = fb.ins().iadd_imm_s(status, ((step + 1) as i64) << 8);
        fb.ins().return_(&[code]);
        fb.switch_to_block(ok);
    }
    let zero = emit::iconst(&mut fb, 0);
    let zero = fb.ins().ireduce(types::I32, zero);
    fb.ins().return_(&[zero]);
    fb.seal_all_blocks();
    fb.finalize(module.target_config());
    module
        .define_function(entry, &mut ctx)
        .map_err(|e| bug(format!("entry: {e:?}")))?;
    Ok(entry)
}
