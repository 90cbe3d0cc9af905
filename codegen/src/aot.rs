//! Ahead-of-time compilation: the same program as the JIT ([`crate::program::build`]),
//! written as a relocatable object file (cranelift-object) with a C header that declares
//! the entry point, the tensors' shapes, dtypes and quantization, and the arena size.

use crate::error::{bug, CodegenError};
use crate::isa::{target_isa, CodegenOptions};
use crate::program::{build, OutputSource, Program};
use cranelift_module::default_libcall_names;
use cranelift_object::{ObjectBuilder, ObjectModule};
use qlift_ir::{DType, Dim, Graph, TensorType};
use std::fmt::Write;

/// An object file and its header.
#[derive(Debug)]
pub struct AotArtifact {
    /// The relocatable object (ELF, Mach-O or COFF per the target).
    pub object: Vec<u8>,
    /// The C header declaring `PREFIX_run` and the model's interface.
    pub header: String,
    /// The program's layout.
    pub program: Program,
}

/// Compiles `graph` to an object file whose entry is `PREFIX_run` (`prefix` must be a C
/// identifier). The target comes from `opts.target` (the host when `None`); code is
/// position independent so that it links into executables and shared libraries.
pub fn compile_object(
    graph: &Graph,
    prefix: &str,
    opts: &CodegenOptions,
) -> Result<AotArtifact, CodegenError> {
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || prefix.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(CodegenError::Target {
            target: prefix.to_string(),
            message: "the name prefix must be a C identifier".into(),
        });
    }
    if opts.profile {
        return Err(CodegenError::Target {
            target: opts.target.clone().unwrap_or_else(|| "host".into()),
            message: "profiling timers are for the JIT only".into(),
        });
    }
    let isa = target_isa(&CodegenOptions {
        pic: true,
        ..opts.clone()
    })?;
    let builder =
        ObjectBuilder::new(isa, format!("{prefix}.o"), default_libcall_names()).map_err(|e| {
            CodegenError::Target {
                target: opts.target.clone().unwrap_or_else(|| "host".into()),
                message: e.to_string(),
            }
        })?;
    let mut module = ObjectModule::new(builder);
    let program = build(&mut module, graph, &format!("{prefix}_run"), opts, false)?;
    if let Some((name, ..)) = program
        .outputs
        .iter()
        .find(|(_, _, s)| !matches!(s, OutputSource::Computed(_)))
    {
        return Err(CodegenError::Unsupported {
            node: name.clone(),
            op: "output".into(),
            message: "an output that is a graph input, a constant or a repeated output cannot be written by an object file".into(),
        });
    }
    let object = module.finish().emit().map_err(bug)?;
    let header = header(graph, prefix, &program);
    Ok(AotArtifact {
        object,
        header,
        program,
    })
}

fn c_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::I32 => "int32_t",
        DType::I64 => "int64_t",
        DType::I16 => "int16_t",
        DType::I8 | DType::I4 => "int8_t",
        DType::U8 | DType::U4 | DType::Bool => "uint8_t",
    }
}

/// Macros describing one tensor: dtype, rank, per-sample element count, shape (the batch
/// as 0), and quantization parameters when it has them.
fn describe(out: &mut String, upper: &str, kind: &str, index: usize, name: &str, ty: &TensorType) {
    let p = format!("{upper}_{kind}{index}");
    let dims: Vec<String> = ty
        .shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Batch => "0".to_string(),
            Dim::Fixed(n) => n.to_string(),
            // Code generation takes specialized graphs only.
            Dim::Sym(_) | Dim::Dyn => "0".to_string(),
        })
        .collect();
    let per_sample: usize = ty.shape.resolve(1).iter().product();
    let _ = writeln!(
        out,
        "/* {kind} {index}: `{name}`, {} [{}] ({}) */",
        ty.dtype,
        dims.join(", "),
        if ty.shape.has_batch() {
            "axis 0 is the batch"
        } else {
            "no batch axis"
        }
    );
    let _ = writeln!(out, "#define {p}_NAME \"{}\"", name.replace('"', "'"));
    let _ = writeln!(out, "typedef {} {p}_T;", c_type(ty.dtype));
    let _ = writeln!(out, "#define {p}_RANK {}", dims.len());
    let _ = writeln!(out, "#define {p}_SHAPE {{ {} }}", dims.join(", "));
    let _ = writeln!(out, "#define {p}_ELEMENTS_PER_SAMPLE {per_sample}");
    if let Some(q) = &ty.quant {
        if q.axis.is_none() {
            let _ = writeln!(out, "#define {p}_SCALE {:e}f", q.scale[0]);
            let _ = writeln!(out, "#define {p}_ZERO_POINT {}", q.zero_point[0]);
        }
    }
    out.push('\n');
}

fn header(graph: &Graph, prefix: &str, program: &Program) -> String {
    let upper = prefix.to_ascii_uppercase();
    let mut h = String::new();
    let _ = writeln!(
        h,
        "/* Generated by qlift from the model `{}`: do not edit. */",
        graph.name
    );
    let _ = writeln!(h, "#ifndef {upper}_QLIFT_H\n#define {upper}_QLIFT_H\n\n#include <stddef.h>\n#include <stdint.h>\n");
    let _ = writeln!(h, "#ifdef __cplusplus\nextern \"C\" {{\n#endif\n");
    let _ = writeln!(
        h,
        "#define {upper}_NUM_INPUTS {}\n#define {upper}_NUM_OUTPUTS {}\n",
        program.inputs.len(),
        program.outputs.len()
    );
    for (i, (name, ty)) in program.inputs.iter().enumerate() {
        describe(&mut h, &upper, "INPUT", i, name, ty);
    }
    for (i, (name, ty, _)) in program.outputs.iter().enumerate() {
        describe(&mut h, &upper, "OUTPUT", i, name, ty);
    }
    let plan = &program.arena;
    let _ = writeln!(h, "/* Bytes of scratch memory `{prefix}_run` needs for `batch` samples; align it to 64 bytes. */");
    let _ = writeln!(
        h,
        "#define {upper}_SCRATCH_BYTES(batch) ((size_t){} + (size_t){} * (size_t)(batch))\n",
        plan.size.fixed, plan.size.per_sample
    );
    let _ = writeln!(
        h,
        "/* Runs the model on `batch` samples. `inputs[i]` points to input i and `outputs[j]` to"
    );
    let _ = writeln!(
        h,
        "   output j (row-major, the shapes above with axis 0 = batch when it is the batch);"
    );
    let _ = writeln!(
        h,
        "   `scratch` to {upper}_SCRATCH_BYTES(batch) bytes, 64-byte aligned. Returns 0, or"
    );
    let _ = writeln!(
        h,
        "   (step + 1) * 256 + code when the kernel of step `step` failed (see qlift's docs)."
    );
    let _ = writeln!(
        h,
        "   Reentrant: concurrent calls need separate scratch buffers. */"
    );
    let _ = writeln!(h, "int32_t {prefix}_run(const void *const *inputs, void *const *outputs, void *scratch, int64_t batch);\n");
    let _ = writeln!(h, "#ifdef __cplusplus\n}}\n#endif\n\n#endif");
    h
}
