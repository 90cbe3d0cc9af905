//! Control flow in compiled code: a graph with If, Loop or Scan nodes runs as a driver over
//! compiled programs.
//!
//! A compiled program has static extents and no branches between kernels, while a Loop's
//! trip count, and the extents of what it stacks, are only known when it runs. So, as tract
//! runs a Scan's body as an inner plan from the Scan op's state, the driver splits the
//! graph in topological order into *parts*: runs of ordinary nodes, each compiled into a
//! [`JitProgram`] of its own, and the control-flow nodes between them, which the driver
//! executes itself with [`qlift_ir::execute_control`] (the interpreter's semantics,
//! shared) calling each body as a [`FlowProgram`] in turn (bodies nest). A part whose
//! inputs have static types (the batch aside) is compiled when the driver is built: an
//! If's two branches are then both compiled before the first call. A part downstream of
//! values whose extents only a run gives (a stacked Loop output) is compiled at its first
//! call with those extents, and cached per input shapes (a Loop body runs the same program
//! every iteration). An If whose condition is known at compile time never reaches the
//! driver: specialization inlines the branch it takes.

use crate::error::{bug, CodegenError};
use crate::isa::CodegenOptions;
use crate::jit::JitProgram;
use qlift_ir::interp::Options as RunOptions;
use qlift_ir::{Graph, NodeId, NodeOp, Shape, Tensor, TensorType, Value, ValueId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Most programs a part keeps for distinct input shapes: a Loop whose carried value grows
/// compiles its body once per length, and should not keep them all.
const PROGRAMS_PER_PART: usize = 8;

/// A graph with control flow, compiled: see the module documentation.
pub struct FlowProgram {
    graph: Graph,
    parts: Vec<Part>,
    opts: CodegenOptions,
    run: RunOptions,
}

/// One step of the driver.
enum Part {
    /// Ordinary nodes compiled together.
    Code(Code),
    /// A control-flow node and its bodies, by attribute name.
    Control {
        node: NodeId,
        bodies: HashMap<String, FlowProgram>,
    },
}

/// A run of ordinary nodes as a graph of its own: its inputs are the values it reads from
/// earlier parts (or the graph's inputs), its outputs those later parts read.
struct Code {
    graph: Graph,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    /// The program compiled before the first call, when the input types are static.
    eager: Option<Arc<JitProgram>>,
    /// Programs compiled at a call, by input shapes, most recently used last.
    programs: Mutex<Vec<(Vec<Vec<usize>>, Arc<Compiled>)>>,
}

/// What runs a code part for some input shapes.
enum Compiled {
    Jit(JitProgram),
    /// The part specialized on the shapes, for the interpreter: some kernel needs an operand
    /// known when it is compiled that the part computes at run time (a Slice whose starts
    /// come from a Loop's iteration number). Compiling one program per value would compile
    /// one per iteration; the interpreter runs it instead.
    Interpreted(Graph),
}

impl FlowProgram {
    /// Splits `graph` (verified) into parts and compiles those whose extents are static.
    /// `run` caps what the control-flow nodes may iterate.
    pub fn compile(
        graph: &Graph,
        opts: &CodegenOptions,
        run: &RunOptions,
    ) -> Result<FlowProgram, CodegenError> {
        let order = graph.topo_order().map_err(bug)?;
        let mut groups: Vec<Vec<NodeId>> = Vec::new();
        let mut parts_of: Vec<Option<NodeId>> = Vec::new();
        for id in order {
            let NodeOp::Apply(op) = &graph.node(id).op else {
                continue;
            };
            if op.kind.has_subgraphs() {
                groups.push(Vec::new());
                parts_of.push(Some(id));
            } else {
                match parts_of.last() {
                    Some(None) => groups.last_mut().expect("a group per part").push(id),
                    _ => {
                        groups.push(vec![id]);
                        parts_of.push(None);
                    }
                }
            }
        }
        // Which values each part reads, to find what a code part must return.
        let read_later = |from: usize| -> HashSet<ValueId> {
            let mut read: HashSet<ValueId> = graph.outputs().iter().copied().collect();
            for (group, control) in groups.iter().zip(&parts_of).skip(from) {
                for &id in group.iter().chain(control.iter()) {
                    read.extend(graph.node_inputs(id).into_iter().flatten());
                }
            }
            read
        };
        let mut parts = Vec::with_capacity(groups.len());
        for (k, (group, control)) in groups.iter().zip(&parts_of).enumerate() {
            match control {
                Some(id) => {
                    let NodeOp::Apply(op) = &graph.node(*id).op else {
                        return Err(bug("a control part is an op"));
                    };
                    let mut bodies = HashMap::new();
                    for (name, body) in op.attrs.graphs() {
                        let body = FlowProgram::compile(body, opts, run)
                            .map_err(|e| in_body(graph, *id, name, e))?;
                        bodies.insert(name.to_string(), body);
                    }
                    parts.push(Part::Control { node: *id, bodies });
                }
                None => parts.push(Part::Code(Code::new(
                    graph,
                    group,
                    &read_later(k + 1),
                    opts,
                )?)),
            }
        }
        Ok(FlowProgram {
            graph: graph.clone(),
            parts,
            opts: opts.clone(),
            run: run.clone(),
        })
    }

    /// Runs the graph on `inputs` (in graph-input order) and returns its outputs.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        let graph = &self.graph;
        let declared = graph
            .input_value_iter()
            .map(|v| (graph.value(v).name.as_str(), graph.value_type(v)));
        qlift_ir::bind_inputs(&graph.name, declared, inputs).map_err(|e| match e {
            qlift_ir::IrError::Input { name, message } => CodegenError::Input { name, message },
            other => CodegenError::Input {
                name: graph.name.clone(),
                message: other.to_string(),
            },
        })?;
        let mut env: HashMap<ValueId, Tensor> = graph
            .input_value_iter()
            .zip(inputs.iter().cloned())
            .collect();
        for part in &self.parts {
            match part {
                Part::Code(code) => {
                    let args = code
                        .inputs
                        .iter()
                        .map(|&v| self.value(&env, v))
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = code.run(&args, &self.opts, &self.run)?;
                    env.extend(code.outputs.iter().copied().zip(results));
                }
                Part::Control { node, bodies } => {
                    let results = self.control(&env, *node, bodies)?;
                    env.extend(results.into_iter().enumerate().map(|(output, t)| {
                        (
                            ValueId {
                                node: *node,
                                output,
                            },
                            t,
                        )
                    }));
                }
            }
        }
        graph
            .outputs()
            .iter()
            .map(|&v| self.value(&env, v))
            .collect()
    }

    /// A value computed by an earlier part, a graph input, or a constant.
    fn value(&self, env: &HashMap<ValueId, Tensor>, v: ValueId) -> Result<Tensor, CodegenError> {
        if let Some(t) = env.get(&v) {
            return Ok(t.clone());
        }
        match self.graph.const_value(v) {
            Some(t) => Ok((**t).clone()),
            None => Err(bug(format!(
                "value `{}` is read before a part computes it",
                self.graph.value(v).name
            ))),
        }
    }

    /// Runs control-flow node `id` with its bodies compiled.
    fn control(
        &self,
        env: &HashMap<ValueId, Tensor>,
        id: NodeId,
        bodies: &HashMap<String, FlowProgram>,
    ) -> Result<Vec<Tensor>, CodegenError> {
        let node = self.graph.node(id);
        let NodeOp::Apply(op) = &node.op else {
            return Err(bug("a control part is an op"));
        };
        let operands = self
            .graph
            .node_inputs(id)
            .into_iter()
            .map(|v| v.map(|v| self.value(env, v)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<Option<&Tensor>> = operands.iter().map(Option::as_ref).collect();
        let types: Vec<TensorType> = node.outputs.iter().map(|v| v.ty.clone()).collect();
        // A body's error keeps its own kind (a limit, bad input); the driver's say the node.
        let mut failure: Option<CodegenError> = None;
        let mut run_body = |name: &str, inputs: Vec<Tensor>| -> Result<Vec<Tensor>, String> {
            let body = bodies
                .get(name)
                .ok_or_else(|| format!("no body `{name}`"))?;
            body.run(&inputs).map_err(|e| {
                let message = format!("in {name}: {e}");
                failure = Some(in_body(&self.graph, id, name, e));
                message
            })
        };
        qlift_ir::execute_control(op, &refs, &types, &self.run, &mut run_body).map_err(|message| {
            match failure.take() {
                Some(e) => e,
                None => CodegenError::Runtime {
                    node: node.name.clone(),
                    message,
                },
            }
        })
    }

    /// How many programs are compiled now, and how many parts run in the interpreter for
    /// the shapes seen (see `Compiled::Interpreted`), bodies included: tests check that an
    /// If's two branches are compiled before the first call.
    pub fn programs(&self) -> (usize, usize) {
        self.parts.iter().fold((0, 0), |(jit, interp), p| match p {
            Part::Code(c) => {
                let cached = c
                    .programs
                    .lock()
                    .map(|p| {
                        p.iter()
                            .map(|(_, c)| matches!(c.as_ref(), Compiled::Jit(_)) as usize)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let compiled = cached.iter().sum::<usize>();
                (
                    jit + c.eager.is_some() as usize + compiled,
                    interp + cached.len() - compiled,
                )
            }
            Part::Control { bodies, .. } => bodies
                .values()
                .map(FlowProgram::programs)
                .fold((jit, interp), |(a, b), (c, d)| (a + c, b + d)),
        })
    }
}

/// An error of body `name` of node `id`, said to be there.
fn in_body(graph: &Graph, id: NodeId, name: &str, e: CodegenError) -> CodegenError {
    let at = |node: String| format!("{}/{name}/{node}", graph.node(id).name);
    match e {
        CodegenError::Unsupported { node, op, message } => CodegenError::Unsupported {
            node: at(node),
            op,
            message,
        },
        CodegenError::Runtime { node, message } => CodegenError::Runtime {
            node: at(node),
            message,
        },
        CodegenError::Input {
            name: input,
            message,
        } => CodegenError::Runtime {
            node: graph.node(id).name.clone(),
            message: format!("{name} input `{input}`: {message}"),
        },
        other => other,
    }
}

impl Code {
    /// The part of `graph` made of `nodes`, returning what `read_later` holds.
    fn new(
        graph: &Graph,
        nodes: &[NodeId],
        read_later: &HashSet<ValueId>,
        opts: &CodegenOptions,
    ) -> Result<Code, CodegenError> {
        let mut part = Graph::new(&format!("{}_part", graph.name));
        let mut map: HashMap<ValueId, ValueId> = HashMap::new();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let members: HashSet<NodeId> = nodes.iter().copied().collect();
        for &id in nodes {
            let node = graph.node(id);
            let NodeOp::Apply(op) = &node.op else {
                continue;
            };
            let mut operands = Vec::new();
            for v in graph.node_inputs(id) {
                let Some(v) = v else {
                    operands.push(None);
                    continue;
                };
                if !map.contains_key(&v) {
                    let value = graph.value(v);
                    let local = match graph.const_value(v) {
                        Some(t) => part.add_const(&value.name, t.clone(), value.ty.quant.clone()),
                        None => {
                            inputs.push(v);
                            part.add_input(&value.name, value.ty.clone())
                        }
                    };
                    map.insert(v, local);
                }
                operands.push(Some(map[&v]));
            }
            let results: Vec<Value> = node.outputs.clone();
            let local = part
                .add_node(&node.name, op.clone(), &operands, results)
                .map_err(bug)?;
            for output in 0..node.outputs.len() {
                let v = ValueId { node: id, output };
                map.insert(
                    v,
                    ValueId {
                        node: local,
                        output,
                    },
                );
                if read_later.contains(&v) {
                    outputs.push(v);
                }
            }
        }
        debug_assert!(outputs.iter().all(|v| members.contains(&v.node)));
        part.set_outputs(outputs.iter().map(|v| map[v]).collect())
            .map_err(bug)?;
        let static_inputs = part
            .input_value_iter()
            .all(|v| part.value_type(v).shape.is_specialized());
        let eager = match static_inputs {
            true => {
                let specialized =
                    qlift_ir::specialize(&part, &qlift_ir::Binding::default()).map_err(bug)?;
                match qlift_ir::needs_binding(&specialized) {
                    false => Some(Arc::new(JitProgram::compile(&specialized, opts)?)),
                    true => None,
                }
            }
            false => None,
        };
        Ok(Code {
            graph: part,
            inputs,
            outputs,
            eager,
            programs: Mutex::new(Vec::new()),
        })
    }

    /// Runs the part on `args` with the program for their shapes.
    fn run(
        &self,
        args: &[Tensor],
        opts: &CodegenOptions,
        run: &RunOptions,
    ) -> Result<Vec<Tensor>, CodegenError> {
        if let Some(p) = &self.eager {
            return p.run(args);
        }
        let shapes: Vec<Vec<usize>> = args.iter().map(|t| t.shape().to_vec()).collect();
        let cached = {
            let mut programs = self
                .programs
                .lock()
                .map_err(|_| bug("program cache poisoned"))?;
            programs.iter().position(|(s, _)| *s == shapes).map(|i| {
                let entry = programs.remove(i);
                let p = entry.1.clone();
                programs.push(entry);
                p
            })
        };
        let program =
            match cached {
                Some(p) => p,
                None => {
                    // Compiled outside the lock, for exactly these extents.
                    let mut g = self.graph.clone();
                    for (v, t) in g.input_values().into_iter().zip(args) {
                        let value = g.value(v);
                        if t.dtype() != value.ty.dtype || t.shape().len() != value.ty.shape.rank() {
                            return Err(CodegenError::Input {
                                name: value.name.clone(),
                                message: format!(
                                    "got {}{:?}, the part takes {}",
                                    t.dtype(),
                                    t.shape(),
                                    qlift_ir::text::type_to_string(&value.ty)
                                ),
                            });
                        }
                        g.node_mut(v.node).outputs[0].ty.shape = Shape::fixed(t.shape());
                    }
                    let specialized = qlift_ir::specialize(&g, &qlift_ir::Binding::default())
                        .map_err(|e| CodegenError::Runtime {
                            node: g.name.clone(),
                            message: e.to_string(),
                        })?;
                    let p = Arc::new(match qlift_ir::needs_binding(&specialized) {
                        false => Compiled::Jit(JitProgram::compile(&specialized, opts)?),
                        true => Compiled::Interpreted(specialized),
                    });
                    let mut programs = self
                        .programs
                        .lock()
                        .map_err(|_| bug("program cache poisoned"))?;
                    if programs.len() >= PROGRAMS_PER_PART {
                        programs.remove(0);
                    }
                    programs.push((shapes, p.clone()));
                    p
                }
            };
        match program.as_ref() {
            Compiled::Jit(p) => p.run(args),
            Compiled::Interpreted(g) => {
                qlift_ir::interp::run_with(g, args, run).map_err(|e| match e {
                    qlift_ir::IrError::Eval { node, message, .. } => {
                        CodegenError::Runtime { node, message }
                    }
                    other => CodegenError::Runtime {
                        node: g.name.clone(),
                        message: other.to_string(),
                    },
                })
            }
        }
    }
}
