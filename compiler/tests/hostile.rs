//! Hostile and broken ONNX files: each gives a clear error naming what is wrong, never a
//! panic and never an allocation sized by untrusted data.

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::Dimension;
use onnx_protobuf::type_proto::Tensor as TensorTypeProto;
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::Message;
use qlift::{load_onnx, load_onnx_bytes, Error, ImportOptions};
use qlift_ir::Tensor;
use std::path::{Path, PathBuf};

const FLOAT: i32 = 1;
const INT64: i32 = 7;

/// A value of element type `elem` whose dims are numbers or names.
fn value_info(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        match d.parse::<i64>() {
            Ok(n) => dim.set_dim_value(n),
            Err(_) => dim.set_dim_param(d.to_string()),
        }
        shape.dim.push(dim);
    }
    let mut tt = TensorTypeProto::new();
    tt.elem_type = elem;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tt);
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = FLOAT;
    t.dims = dims.to_vec();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

fn model(graph: GraphProto, opset: i64) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import.push(o);
    m.graph = Some(graph).into();
    m
}

/// x f32[N,1,4,4] → Conv (3x3 weights in raw_data, bias in float_data) → Relu → y.
fn conv_model() -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "tiny".into();
    g.input.push(value_info("x", FLOAT, &["N", "1", "4", "4"]));
    g.output.push(value_info("y", FLOAT, &["N", "2", "2", "2"]));
    g.initializer
        .push(f32_tensor("w", &[2, 1, 3, 3], &[0.5; 18]));
    let mut b = TensorProto::new();
    b.name = "b".into();
    b.data_type = FLOAT;
    b.dims = vec![2];
    b.float_data = vec![1.0, -100.0];
    g.initializer.push(b);
    g.node.push(node("Conv", "conv", &["x", "w", "b"], &["c"]));
    g.node.push(node("Relu", "relu", &["c"], &["y"]));
    model(g, 13)
}

fn bytes(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes().expect("serializes")
}

fn load(m: &ModelProto) -> Result<qlift_ir::Graph, Error> {
    load_onnx_bytes(&bytes(m), None, &ImportOptions::default())
}

fn err(m: &ModelProto) -> Error {
    load(m).expect_err("the model must be refused")
}

/// A fresh directory for files of one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qlift-hostile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic pseudo-random numbers (no extra crate needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn the_valid_model_loads_and_runs() {
    let g = load(&conv_model()).unwrap();
    let y = qlift_ir::interp::run(&g, &[Tensor::from_f32(&[1, 1, 4, 4], vec![1.0; 16])]).unwrap();
    assert_eq!(y[0].shape(), &[1, 2, 2, 2]);
    assert_eq!(
        y[0].as_f32().unwrap(),
        &[5.5, 5.5, 5.5, 5.5, 0.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn every_truncation_is_an_error() {
    let full = bytes(&conv_model());
    for len in 0..full.len() {
        let result = std::panic::catch_unwind(|| {
            load_onnx_bytes(&full[..len], None, &ImportOptions::default())
        });
        let result = result.unwrap_or_else(|_| panic!("panic on a {len}-byte prefix"));
        assert!(
            result.is_err(),
            "a {len}-byte prefix of a {}-byte model loaded",
            full.len()
        );
    }
}

#[test]
fn bit_flips_and_garbage_never_panic() {
    let full = bytes(&conv_model());
    let mut rng = Lcg(42);
    for _ in 0..500 {
        let mut m = full.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = rng.next() as usize % m.len();
            m[i] ^= 1 << (rng.next() % 8);
        }
        let r = std::panic::catch_unwind(|| load_onnx_bytes(&m, None, &ImportOptions::default()));
        assert!(r.is_ok(), "panic on a mutated model");
    }
    for _ in 0..200 {
        let garbage: Vec<u8> = (0..rng.next() % 512).map(|_| rng.next() as u8).collect();
        let r =
            std::panic::catch_unwind(|| load_onnx_bytes(&garbage, None, &ImportOptions::default()));
        assert!(r.expect("no panic on garbage").is_err());
    }
}

#[test]
fn every_unsupported_op_is_listed_at_once() {
    let mut m = conv_model();
    let g = m.graph.as_mut().unwrap();
    g.node.push(node("Foo", "foo_node", &["y"], &["f"]));
    g.node.push(node("Bar", "", &["f"], &["b2"]));
    let mut ms = node("FusedConv", "ms_node", &["b2"], &["z"]);
    ms.domain = "com.microsoft".into();
    g.node.push(ms);
    match err(&m) {
        Error::Unsupported(ops) => {
            let names: Vec<(&str, &str)> = ops
                .iter()
                .map(|o| (o.op_type.as_str(), o.node.as_str()))
                .collect();
            assert_eq!(
                names,
                [
                    ("Foo", "foo_node"),
                    ("Bar", "Bar_3"),
                    ("FusedConv", "ms_node")
                ]
            );
            assert_eq!(ops[2].domain, "com.microsoft");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn unsupported_opsets_are_refused() {
    for version in [6, 99] {
        let mut m = conv_model();
        m.opset_import[0].version = version;
        assert!(matches!(err(&m), Error::Opset { version: v, .. } if v == version));
    }
}

#[test]
fn inconsistent_shapes_name_the_node() {
    let mut m = conv_model();
    m.graph.as_mut().unwrap().initializer[0] = f32_tensor("w", &[2, 3, 3, 3], &[0.0; 54]);
    let e = err(&m);
    assert!(
        e.to_string().contains("`conv`") && e.to_string().contains("input has 1 channels"),
        "{e}"
    );
}

#[test]
fn absurd_and_inconsistent_tensor_sizes_are_refused_before_allocating() {
    let cases: [(&[i64], usize); 4] = [
        (&[1 << 40, 1 << 40], 4),
        (&[i64::MAX, 4], 4),
        (&[-1, 2], 4),
        (&[3, 3], 8),
    ];
    for (dims, raw_bytes) in cases {
        let mut m = conv_model();
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        t.dims = dims.to_vec();
        t.raw_data = vec![0; raw_bytes];
        match err(&m) {
            Error::Value { name, message } => assert_eq!(name, "w", "{message}"),
            Error::Limit { what, .. } => assert!(what.contains("`w`"), "{what}"),
            e => panic!("{dims:?}: {e}"),
        }
    }
}

#[test]
fn the_memory_limits_apply() {
    let mut opts = ImportOptions::default();
    opts.limits.max_model_bytes = 10;
    assert!(matches!(
        load_onnx_bytes(&bytes(&conv_model()), None, &opts),
        Err(Error::Limit { .. })
    ));
    let mut opts = ImportOptions::default();
    opts.limits.max_tensor_bytes = 16;
    assert!(
        matches!(load_onnx_bytes(&bytes(&conv_model()), None, &opts), Err(Error::Limit { what, .. }) if what.contains("`w`"))
    );
}

/// The conv model with its weights in `location` (relative to the model's directory).
fn external_model(location: &str, offset: Option<u64>) -> ModelProto {
    let mut m = conv_model();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.raw_data.clear();
    t.data_location = DataLocation::EXTERNAL.into();
    let mut entry = |k: &str, v: String| {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        t.external_data.push(e);
    };
    entry("location", location.into());
    if let Some(o) = offset {
        entry("offset", o.to_string());
    }
    m
}

fn write_model(dir: &Path, m: &ModelProto) -> PathBuf {
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes(m)).unwrap();
    path
}

#[test]
fn external_data_stays_inside_the_model_directory() {
    let root = temp_dir("external");
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let weights: Vec<u8> = [0.5f32; 18].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("w.bin"), &weights).unwrap();
    std::fs::write(root.join("secret.bin"), &weights).unwrap();
    std::os::unix::fs::symlink(root.join("secret.bin"), dir.join("link.bin")).unwrap();

    // Inside the directory: loads and computes what the raw_data model computes.
    let inside = load_onnx(
        &write_model(&dir, &external_model("w.bin", None)),
        &ImportOptions::default(),
    )
    .unwrap();
    let x = [Tensor::from_f32(&[1, 1, 4, 4], vec![1.0; 16])];
    let reference = load(&conv_model()).unwrap();
    assert_eq!(
        qlift_ir::interp::run(&inside, &x).unwrap(),
        qlift_ir::interp::run(&reference, &x).unwrap()
    );

    for (location, offset, complaint) in [
        ("../secret.bin", None, "relative path inside"),
        ("/etc/passwd", None, "relative path inside"),
        ("link.bin", None, "through a symlink"),
        ("w.bin", Some(8), "runs past the end"),
        ("missing.bin", None, "No such file"),
    ] {
        let path = write_model(&dir, &external_model(location, offset));
        match load_onnx(&path, &ImportOptions::default()) {
            Err(Error::ExternalData {
                tensor,
                path,
                message,
            }) => {
                assert_eq!((tensor.as_str(), path.as_str()), ("w", location));
                assert!(message.contains(complaint), "{location}: {message}");
            }
            other => panic!("{location}: {other:?}"),
        }
    }
    // Loaded from memory there is no directory to read from.
    assert!(matches!(
        load(&external_model("w.bin", None)),
        Err(Error::ExternalData { .. })
    ));
}

/// x f32[N,6] → Reshape(x, shape) where shape is a graph input.
fn reshape_model() -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "reshape".into();
    g.input.push(value_info("x", FLOAT, &["N", "6"]));
    g.input.push(value_info("shape", INT64, &["2"]));
    g.output.push(value_info("y", FLOAT, &["N", "2", "3"]));
    g.node
        .push(node("Reshape", "reshape", &["x", "shape"], &["y"]));
    model(g, 14)
}

#[test]
fn shapes_computed_at_run_time_import_and_can_be_frozen() {
    // A Reshape whose shape is a graph input: its extents are known only when it runs.
    let g = load_onnx_bytes(&bytes(&reshape_model()), None, &ImportOptions::default()).unwrap();
    assert_eq!(
        qlift_ir::text::type_to_string(g.value_type(g.outputs()[0])),
        "f32[?,?]"
    );
    let x = Tensor::from_f32(&[2, 6], vec![0.5; 12]);
    let y = qlift_ir::interp::run(&g, &[x.clone(), Tensor::from_i64(&[2], vec![0, -1])]).unwrap();
    assert_eq!(y[0].shape(), &[2, 6]);
    let bad = qlift_ir::interp::run(&g, &[x, Tensor::from_i64(&[2], vec![5, -1])]).unwrap_err();
    assert!(bad.to_string().contains("reshape"), "{bad}");
    let mut opts = ImportOptions::default();
    opts.constant_inputs
        .insert("shape".into(), Tensor::from_i64(&[2], vec![0, -1]));
    let g = load_onnx_bytes(&bytes(&reshape_model()), None, &opts).unwrap();
    assert_eq!(
        qlift_ir::text::type_to_string(g.value_type(g.outputs()[0])),
        "f32[N,6]"
    );
}

#[test]
fn named_dimensions_after_the_batch_are_symbols() {
    let mut m = conv_model();
    m.graph.as_mut().unwrap().input[0] = value_info("x", FLOAT, &["N", "1", "H", "4"]);
    let g = load_onnx_bytes(&bytes(&m), None, &ImportOptions::default()).unwrap();
    let x = g.input_values()[0];
    assert_eq!(
        qlift_ir::text::type_to_string(g.value_type(x)),
        "f32[N,1,H,4]"
    );
    // The convolution's spatial extents are known once H is bound.
    let y = qlift_ir::interp::run(&g, &[Tensor::from_f32(&[2, 1, 5, 4], vec![1.0; 40])]).unwrap();
    assert_eq!(y[0].shape(), &[2, 2, 3, 2]);
}

#[test]
fn broken_wiring_names_the_node() {
    let mut m = conv_model();
    m.graph.as_mut().unwrap().node.swap(0, 1);
    let e = err(&m);
    assert!(
        e.to_string().contains("`relu`") && e.to_string().contains("used before it is defined"),
        "{e}"
    );
    let mut m = conv_model();
    m.graph
        .as_mut()
        .unwrap()
        .node
        .push(node("Relu", "again", &["y"], &["c"]));
    let e = err(&m);
    assert!(
        e.to_string().contains("`again`") && e.to_string().contains("produced twice"),
        "{e}"
    );
}

#[test]
fn bad_attributes_name_the_node() {
    let mut m = conv_model();
    let mut pads = AttributeProto::new();
    pads.name = "pads".into();
    pads.ints = vec![1, 1];
    m.graph.as_mut().unwrap().node[0].attribute.push(pads);
    let e = err(&m);
    assert!(
        e.to_string().contains("`conv`") && e.to_string().contains("pads"),
        "{e}"
    );
}

#[test]
fn huge_intermediate_values_are_refused_at_import() {
    let mut g = GraphProto::new();
    g.name = "pad".into();
    g.input.push(value_info("x", FLOAT, &["N", "4"]));
    g.output.push(value_info("y", FLOAT, &["N", "4"]));
    let mut pads = TensorProto::new();
    pads.name = "pads".into();
    pads.data_type = INT64;
    pads.dims = vec![4];
    pads.int64_data = vec![0, 0, 0, 1 << 40];
    g.initializer.push(pads);
    g.node.push(node("Pad", "pad", &["x", "pads"], &["y"]));
    match err(&model(g, 18)) {
        Error::Limit { what, .. } => assert!(what.contains("node `pad`"), "{what}"),
        e => panic!("{e}"),
    }
}

// ---- Resampling, padding and indexing: scales, sizes, pads, depths and indices are data.

fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = INT64;
    t.dims = dims.to_vec();
    t.int64_data = values.to_vec();
    t
}

fn attr_str(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.s = value.as_bytes().to_vec();
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::STRING.into();
    a
}

/// x f32[N,3,4,4] → Resize (opset 13) with constant scales or sizes → y.
fn resize_model(scales: Option<&[f32]>, sizes: Option<&[i64]>) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "resize".into();
    g.input.push(value_info("x", FLOAT, &["N", "3", "4", "4"]));
    g.output.push(value_info("y", FLOAT, &["N", "3", "H", "W"]));
    if let Some(s) = scales {
        g.initializer
            .push(f32_tensor("scales", &[s.len() as i64], s));
    }
    if let Some(s) = sizes {
        g.initializer
            .push(i64_tensor("sizes", &[s.len() as i64], s));
    }
    let inputs: &[&str] = if scales.is_some() {
        &["x", "", "scales"]
    } else {
        &["x", "", "", "sizes"]
    };
    g.node.push(node("Resize", "resize", inputs, &["y"]));
    model(g, 13)
}

/// The error's text, asserting that it is bad input naming `node`.
fn node_message(e: Error, node: &str) -> String {
    let text = e.to_string();
    assert!(
        !e.is_internal() && text.contains(&format!("`{node}`")),
        "expected an error naming node `{node}`, got: {text}"
    );
    text
}

#[test]
fn resize_to_huge_empty_or_negative_extents_is_refused_at_import() {
    for (scales, want) in [
        (vec![1.0, 1.0, 1e30, 1e30], "above the limit"),
        (vec![1.0, 1.0, 0.0, 2.0], "must be positive"),
        (vec![1.0, 1.0, -2.0, 2.0], "must be positive"),
        (vec![1.0, 1.0, f32::NAN, 2.0], "must be positive"),
        (vec![1.0, 1.0, 0.1, 1.0], "empty"),
        (vec![1.0, 1.0, 2.0], "3 scales or sizes for 4 axes"),
    ] {
        let message = node_message(err(&resize_model(Some(&scales), None)), "resize");
        assert!(message.contains(want), "scales {scales:?}: {message}");
    }
    for (sizes, want) in [
        (vec![1, 3, 0, 4], "size 0"),
        (vec![1, 3, -4, 4], "size -4"),
        (vec![1, 3, 1 << 40, 4], "above the limit"),
    ] {
        let message = node_message(err(&resize_model(None, Some(&sizes))), "resize");
        assert!(message.contains(want), "sizes {sizes:?}: {message}");
    }
    // Within the per-axis limit, but too large for the tensor budget.
    match err(&resize_model(None, Some(&[1, 3, 1 << 20, 1 << 20]))) {
        Error::Limit { what, .. } => assert!(what.contains("node `resize`"), "{what}"),
        e => panic!("{e}"),
    }
}

#[test]
fn one_hot_depth_and_pads_are_checked_at_import() {
    for (depth, want) in [
        (1i64 << 40, "depth 1099511627776 is not in [1, 16777216]"),
        (0, "depth 0"),
        (-3, "depth -3"),
    ] {
        let mut g = GraphProto::new();
        g.name = "one_hot".into();
        g.input.push(value_info("i", INT64, &["N", "3"]));
        g.output.push(value_info("y", FLOAT, &["N", "3", "D"]));
        g.initializer.push(i64_tensor("depth", &[], &[depth]));
        g.initializer.push(f32_tensor("values", &[2], &[0.0, 1.0]));
        g.node
            .push(node("OneHot", "one_hot", &["i", "depth", "values"], &["y"]));
        let message = node_message(err(&model(g, 11)), "one_hot");
        assert!(message.contains(want), "depth {depth}: {message}");
    }
    for (mode, pads, want) in [
        ("reflect", [0, 0, -5, 0, 0, 0, 0, 1], "crop more"),
        ("edge", [0, 0, 0, -4, 0, 0, 0, 1], "no element left"),
    ] {
        let mut g = GraphProto::new();
        g.name = "pad".into();
        g.input.push(value_info("x", FLOAT, &["N", "3", "4", "4"]));
        g.output.push(value_info("y", FLOAT, &["N", "3", "H", "W"]));
        g.initializer.push(i64_tensor("pads", &[8], &pads));
        let mut n = node("Pad", "pad", &["x", "pads"], &["y"]);
        n.attribute.push(attr_str("mode", mode));
        g.node.push(n);
        let message = node_message(err(&model(g, 18)), "pad");
        assert!(message.contains(want), "{mode} {pads:?}: {message}");
    }
}

#[test]
fn pads_and_sizes_computed_at_run_time_are_checked_before_allocating() {
    // Pads and sizes from graph inputs: the interpreter checks them when they arrive.
    let mut g = GraphProto::new();
    g.name = "runtime".into();
    g.input.push(value_info("x", FLOAT, &["1", "3", "4", "4"]));
    g.input.push(value_info("pads", INT64, &["8"]));
    g.input.push(value_info("sizes", INT64, &["4"]));
    g.output.push(value_info("p", FLOAT, &["1", "A", "B", "C"]));
    g.output.push(value_info("r", FLOAT, &["1", "A", "B", "C"]));
    let mut n = node("Pad", "pad", &["x", "pads"], &["p"]);
    n.attribute.push(attr_str("mode", "wrap"));
    g.node.push(n);
    g.node
        .push(node("Resize", "resize", &["x", "", "", "sizes"], &["r"]));
    let graph = load(&model(g, 19)).unwrap();
    let run = |pads: &[i64], sizes: &[i64]| {
        let x = Tensor::from_f32(&[1, 3, 4, 4], vec![0.5; 48]);
        qlift_ir::interp::run(
            &graph,
            &[
                x,
                Tensor::from_i64(&[8], pads.to_vec()),
                Tensor::from_i64(&[4], sizes.to_vec()),
            ],
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    run(&[0, 0, 1, 2, 0, 0, 3, 4], &[1, 3, 8, 2]).unwrap();
    let e = run(&[0, 0, 0, 1 << 40, 0, 0, 0, 0], &[1, 3, 8, 2]).unwrap_err();
    assert!(e.contains("`pad`") && e.contains("limit"), "{e}");
    let e = run(&[0, 0, 0, 0, 0, 0, 0, 0], &[1, 3, 1 << 20, 1 << 20]).unwrap_err();
    assert!(e.contains("`resize`") && e.contains("limit"), "{e}");
    let e = run(&[0, 0, 0, 0, 0, 0, 0, 0], &[1, 3, 0, 2]).unwrap_err();
    assert!(e.contains("`resize`") && e.contains("size 0"), "{e}");
}

#[test]
fn indices_out_of_range_are_errors_in_both_engines() {
    use qlift::{CompileOptions, CompiledModel, Engine};
    let mut g = GraphProto::new();
    g.name = "gather".into();
    g.input.push(value_info("x", FLOAT, &["N", "4"]));
    g.input.push(value_info("i", INT64, &["N", "2"]));
    g.input.push(value_info("t", INT64, &["2", "1"]));
    g.output.push(value_info("e", FLOAT, &["N", "2"]));
    g.output.push(value_info("s", FLOAT, &["3", "2"]));
    let mut n = node("GatherElements", "gather", &["x", "i"], &["e"]);
    let mut axis = AttributeProto::new();
    axis.name = "axis".into();
    axis.i = 1;
    axis.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
    n.attribute.push(axis);
    g.node.push(n);
    g.initializer.push(f32_tensor("data", &[3, 2], &[1.0; 6]));
    g.initializer
        .push(f32_tensor("updates", &[2, 2], &[2.0; 4]));
    g.node.push(node(
        "ScatterND",
        "scatter",
        &["data", "t", "updates"],
        &["s"],
    ));
    let bytes = bytes(&model(g, 16));
    let x = Tensor::from_f32(&[2, 4], vec![0.0; 8]);
    for engine in [Engine::Jit, Engine::Interpreter] {
        let m = CompiledModel::from_onnx_bytes(
            &bytes,
            None,
            &CompileOptions {
                engine,
                ..Default::default()
            },
        )
        .unwrap();
        let run = |i: Vec<i64>, t: Vec<i64>| {
            m.run(&[
                x.clone(),
                Tensor::from_i64(&[2, 2], i),
                Tensor::from_i64(&[2, 1], t),
            ])
        };
        run(vec![0, -4, 3, 2], vec![2, -3]).unwrap();
        for (i, t, node) in [
            (vec![0, 4, 0, 0], vec![0, 0], "gather"),
            (vec![0, 0, -5, 0], vec![0, 0], "gather"),
            (vec![0, 0, 0, 0], vec![3, 0], "scatter"),
        ] {
            let e = run(i, t).unwrap_err();
            assert!(
                !e.is_internal()
                    && e.to_string().contains(node)
                    && e.to_string().contains("out of range"),
                "{engine:?}: {e}"
            );
        }
    }
}

// ---- Limits: every one configured in `Limits` is enforced; nesting cannot exhaust the stack.

/// Appends `v` as a protobuf varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> u64 {
    let mut buf = vec![];
    varint(&mut buf, v);
    buf.len() as u64
}

/// A message nested through `fields` (length-delimited field numbers, outermost first): the
/// lengths are computed inside out, the bytes written outside in (no quadratic copying).
fn nested(fields: &[u64]) -> Vec<u8> {
    let mut lens = vec![0u64; fields.len() + 1];
    for i in (0..fields.len()).rev() {
        let tag = fields[i] << 3 | 2;
        lens[i] = varint_len(tag) + varint_len(lens[i + 1]) + lens[i + 1];
    }
    let mut out = Vec::with_capacity(lens[0] as usize);
    for (i, &f) in fields.iter().enumerate() {
        varint(&mut out, f << 3 | 2);
        varint(&mut out, lens[i + 1]);
    }
    out
}

#[test]
fn deeply_nested_protobuf_is_an_error_not_a_stack_overflow() {
    // ModelProto.graph(7) → GraphProto.node(1) → NodeProto.attribute(5) → AttributeProto.g(6)
    // → GraphProto.node(1) → ... : subgraphs inside subgraphs.
    for levels in [10usize, 40, 100_000] {
        let mut fields = vec![7];
        for _ in 0..levels {
            fields.extend([1, 5, 6]);
        }
        let m = nested(&fields);
        let r = std::panic::catch_unwind(|| load_onnx_bytes(&m, None, &ImportOptions::default()));
        let e = r
            .unwrap_or_else(|_| panic!("panic at nesting depth {levels}"))
            .expect_err("a nest of empty subgraphs loaded");
        if levels > 100 {
            // protobuf's recursion limit (100 messages) stops it while decoding.
            assert!(matches!(e, Error::Decode(_)), "depth {levels}: {e}");
        }
    }
    // Unknown fields are skipped, also nested groups (wire types 3/4) of an unknown field.
    for depth in [10usize, 100_000] {
        let mut m = bytes(&conv_model());
        for _ in 0..depth {
            varint(&mut m, 99 << 3 | 3);
        }
        for _ in 0..depth {
            varint(&mut m, 99 << 3 | 4);
        }
        let r = std::panic::catch_unwind(|| load_onnx_bytes(&m, None, &ImportOptions::default()));
        let r = r.unwrap_or_else(|_| panic!("panic on {depth} nested unknown groups"));
        if depth > 100 {
            assert!(
                matches!(r, Err(Error::Decode(_))),
                "{depth} nested groups: {:?}",
                r.err()
            );
        }
    }
}

#[test]
fn node_count_rank_and_total_constant_limits_apply() {
    let mut opts = ImportOptions::default();
    opts.limits.max_nodes = 1;
    match load_onnx_bytes(&bytes(&conv_model()), None, &opts) {
        Err(Error::Limit {
            what,
            value: 2,
            limit: 1,
        }) => assert!(what.contains("node count"), "{what}"),
        other => panic!("{other:?}"),
    }
    // Each tensor under the per-tensor limit, together over the total.
    let mut opts = ImportOptions::default();
    opts.limits.max_total_bytes = 79; // w is 72 bytes, b 8
    match load_onnx_bytes(&bytes(&conv_model()), None, &opts) {
        Err(Error::Limit { what, .. }) => assert!(what.contains("total constant data"), "{what}"),
        other => panic!("{other:?}"),
    }
    // Rank: of a graph input and of an initializer.
    let mut m = conv_model();
    m.graph.as_mut().unwrap().input[0] =
        value_info("x", FLOAT, &["N", "1", "1", "1", "1", "1", "1", "4", "4"]);
    match err(&m) {
        Error::Value { name, message } => assert!(
            name == "x" && message.contains("rank 9"),
            "{name}: {message}"
        ),
        e => panic!("{e}"),
    }
    let mut m = conv_model();
    m.graph.as_mut().unwrap().initializer[0] =
        f32_tensor("w", &[2, 1, 3, 3, 1, 1, 1, 1, 1], &[0.5; 18]);
    let e = err(&m);
    assert!(
        e.to_string().contains("`w`") && e.to_string().contains("rank 9"),
        "{e}"
    );
}

#[test]
fn absurd_graph_input_dims_are_refused() {
    for dims in [
        ["N", "1", "1099511627776", "1099511627776"],
        ["N", "1", "-4", "4"],
        ["N", "1", "9223372036854775807", "4"],
    ] {
        let mut m = conv_model();
        m.graph.as_mut().unwrap().input[0] = value_info("x", FLOAT, &dims);
        let r =
            std::panic::catch_unwind(|| load(&m)).unwrap_or_else(|_| panic!("{dims:?} panicked"));
        let e = r.expect_err("absurd input dims were accepted");
        assert!(!e.is_internal(), "{dims:?}: {e}");
    }
}

#[test]
fn external_data_offsets_and_lengths_cannot_overflow() {
    let dir = temp_dir("external-overflow");
    let weights: Vec<u8> = [0.5f32; 18].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("w.bin"), &weights).unwrap();
    for (offset, length, complaint) in [
        (Some(u64::MAX), None, "runs past the end"),
        (Some(u64::MAX - 8), None, "runs past the end"),
        (None, Some(u64::MAX), "disagrees"),
        (None, Some(1 << 40), "disagrees"),
    ] {
        let mut m = external_model("w.bin", offset);
        if let Some(l) = length {
            let mut e = StringStringEntryProto::new();
            e.key = "length".into();
            e.value = l.to_string();
            m.graph.as_mut().unwrap().initializer[0]
                .external_data
                .push(e);
        }
        let path = write_model(&dir, &m);
        match std::panic::catch_unwind(|| load_onnx(&path, &ImportOptions::default()))
            .expect("no panic")
        {
            Err(Error::ExternalData { message, .. }) => assert!(
                message.contains(complaint),
                "{offset:?} {length:?}: {message}"
            ),
            other => panic!("{offset:?} {length:?}: {other:?}"),
        }
    }
}

/// `n` Relu/Sigmoid nodes in one dependency chain x → … → y.
fn chain_model(n: usize) -> Vec<u8> {
    let mut g = GraphProto::new();
    g.name = "chain".into();
    g.input.push(value_info("x", FLOAT, &["N", "4"]));
    g.output.push(value_info("y", FLOAT, &["N", "4"]));
    let name = |i: usize| {
        if i == 0 {
            "x".to_string()
        } else if i == n {
            "y".to_string()
        } else {
            format!("v{i}")
        }
    };
    for i in 0..n {
        g.node.push(node(
            if i % 2 == 0 { "Relu" } else { "Sigmoid" },
            &format!("n{i}"),
            &[&name(i)],
            &[&name(i + 1)],
        ));
    }
    bytes(&model(g, 13))
}

#[test]
fn a_long_chain_of_nodes_does_not_recurse_deeply() {
    // Import, verification and the interpreter walk 100,000 chained nodes: no recursion
    // as deep as the graph (a test thread has a 2 MiB stack).
    let x = [Tensor::from_f32(&[1, 4], vec![-1.0, 0.0, 1.0, f32::NAN])];
    let graph = load_onnx_bytes(&chain_model(100_000), None, &ImportOptions::default()).unwrap();
    let y = qlift_ir::interp::run(&graph, &x).unwrap();
    assert_eq!(y[0].shape(), &[1, 4]);
    // The rewrites and the JIT, on 500 (debug builds spend about 5 ms per node on them).
    let m = chain_model(500);
    let graph = load_onnx_bytes(&m, None, &ImportOptions::default()).unwrap();
    let reference = qlift_ir::interp::run(&graph, &x).unwrap();
    let model = qlift::CompiledModel::from_onnx_bytes(&m, None, &Default::default()).unwrap();
    let y = model.run(&x).unwrap();
    let (a, b) = (reference[0].as_f32().unwrap(), y[0].as_f32().unwrap());
    assert!(
        a.iter()
            .zip(b)
            .all(|(a, b)| (a.is_nan() && b.is_nan()) || (a - b).abs() < 1e-6),
        "{a:?} vs {b:?}"
    );
}

/// Runs `f` on another thread and fails the test if it has not finished within `seconds`
/// (a hang is a failure, not a stuck test run).
fn within<T: Send + 'static>(
    seconds: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(seconds))
        .unwrap_or_else(|_| panic!("{what} did not finish within {seconds} s"))
}

#[test]
fn external_data_must_be_a_regular_file() {
    // A named pipe as external data hung (opening it waits for a writer); a device would
    // never end.
    let dir = temp_dir("external-special");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("w.fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.bin")).unwrap_or(());
    for (location, complaint) in [
        ("w.fifo", "is a pipe; external data must be a regular file"),
        ("zero.bin", "through a symlink"),
    ] {
        let path = write_model(&dir, &external_model(location, None));
        let result = within(
            20,
            "loading a model with special external data",
            move || load_onnx(&path, &ImportOptions::default()),
        );
        match result {
            Err(Error::ExternalData { message, .. }) => {
                assert!(message.contains(complaint), "{location}: {message}")
            }
            other => panic!("{location}: {other:?}"),
        }
    }
}

#[test]
fn a_model_from_a_pipe_loads_and_an_endless_one_is_cut_at_the_limit() {
    let dir = temp_dir("model-fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.onnx");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A writer that gives the model and closes: it loads (`qlift dump <(cat m.onnx)`).
    let (path, model_bytes) = (fifo.clone(), bytes(&conv_model()));
    let writer = std::thread::spawn(move || std::fs::write(&path, model_bytes));
    let graph = within(20, "loading from a pipe", {
        let fifo = fifo.clone();
        move || load_onnx(&fifo, &ImportOptions::default())
    });
    writer.join().unwrap().unwrap();
    assert!(graph.is_ok(), "{graph:?}");
    // A writer that never stops: the read ends at the limit.
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        while std::io::Write::write_all(&mut w, &[0u8; 4096]).is_ok() {}
    });
    let mut opts = ImportOptions::default();
    opts.limits.max_model_bytes = 1 << 20;
    let result = within(20, "loading from an endless pipe", move || {
        load_onnx(&fifo, &opts)
    });
    assert!(
        matches!(&result, Err(Error::Limit { limit: 1048576, .. })),
        "{result:?}"
    );
    writer.join().unwrap();
}

#[test]
fn qir_text_gets_the_limits_of_onnx_imports() {
    let text = "graph s(%x: f32[N,4]) -> (%y) {\n  %a = Relu(%x) : f32[N,4]\n  %y = Sigmoid(%a) : f32[N,4]\n}\n";
    assert!(qlift::load_qir_text(text, &ImportOptions::default()).is_ok());
    let mut opts = ImportOptions::default();
    opts.limits.max_nodes = 2;
    let e = qlift::load_qir_text(text, &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("node count is 3, above the limit of 2"),
        "{e}"
    );
    let deep = "graph d(%x: f32[N,1,1,1,1,1,1,1,1,1]) -> (%y) {\n  %y = Relu(%x) : f32[N,1,1,1,1,1,1,1,1,1]\n}\n";
    let e = qlift::load_qir_text(deep, &ImportOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("rank 10 is above the limit of 8"),
        "{e}"
    );
    let mut small = ImportOptions::default();
    small.limits.max_model_bytes = 4 * 40;
    let e = qlift::load_qir_text(text, &small).unwrap_err();
    assert!(
        e.to_string()
            .contains("IR text is 91, above the limit of 40"),
        "{e}"
    );
    let big = "graph b(%x: f32[N,1073741824]) -> (%y) {\n  %y = Relu(%x) : f32[N,1073741824]\n}\n";
    let e = qlift::load_qir_text(big, &ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("value `x` of node `x`"), "{e}");
}

#[test]
fn a_run_too_large_for_the_memory_limit_is_refused_before_allocating() {
    let graph = load(&conv_model()).unwrap();
    for engine in [qlift::Engine::Jit, qlift::Engine::Interpreter] {
        let mut opts = qlift::CompileOptions {
            engine,
            ..Default::default()
        };
        opts.import.limits.max_run_bytes = 64 << 10;
        let model = qlift::CompiledModel::from_graph(&graph, None, &opts).unwrap();
        let small = [Tensor::from_f32(&[1, 1, 4, 4], vec![1.0; 16])];
        assert!(model.run_bytes(&small).unwrap() <= 64 << 10);
        model.run(&small).unwrap();
        // 10,000 samples need more than 64 KiB of outputs alone.
        let large = [Tensor::from_f32(&[10_000, 1, 4, 4], vec![1.0; 160_000])];
        match model.run(&large) {
            Err(Error::Limit { what, limit, .. }) => {
                assert!(
                    what.contains("batch of 10000") && limit == 64 << 10,
                    "{what}"
                );
            }
            other => panic!("{engine:?}: {other:?}"),
        }
    }
}

#[test]
fn calibration_runs_in_batches_that_fit_the_memory_limit() {
    let graph = load(&conv_model()).unwrap();
    let samples = Tensor::from_f32(
        &[100, 1, 4, 4],
        (0..1600).map(|i| (i % 7) as f32 - 3.0).collect(),
    );
    let opts = qlift::QuantizeOptions::default();
    let pipeline = qlift_passes::PipelineOptions::default();
    let reference = qlift::quantize(
        &graph,
        std::slice::from_ref(&samples),
        &opts,
        &pipeline,
        &|_, _| {},
    )
    .unwrap();
    // A limit that fits a few samples at a time: the batches shrink, the result is the same.
    let mut limits = qlift::Limits::default();
    let per_sample = qlift::limits::interpreter_bytes(&graph, 1).unwrap();
    limits.max_run_bytes = per_sample * 3;
    let batches = std::sync::Mutex::new(Vec::new());
    let q = qlift::quantize::quantize_limited(
        &graph,
        std::slice::from_ref(&samples),
        &opts,
        &pipeline,
        &limits,
        &|done, _| batches.lock().unwrap().push(done),
    )
    .unwrap();
    assert_eq!(q.samples, 100);
    assert!(
        batches.lock().unwrap().len() > 10,
        "{:?}",
        batches.lock().unwrap()
    );
    assert_eq!(
        qlift_ir::text::print(&q.lowered, &Default::default()),
        qlift_ir::text::print(&reference.lowered, &Default::default())
    );
    // Not even one sample fits: an error, not an allocation.
    limits.max_run_bytes = 8;
    let e = qlift::quantize::quantize_limited(
        &graph,
        std::slice::from_ref(&samples),
        &opts,
        &pipeline,
        &limits,
        &|_, _| {},
    )
    .err()
    .expect("refused");
    assert!(
        e.to_string().contains("memory for calibrating one sample"),
        "{e}"
    );
}

/// x f32[seq,batch,2] → LSTM (hidden 3, W and R initializers) → only Y_h.
fn lstm_model(attrs: Vec<AttributeProto>) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "lstm".into();
    g.input.push(value_info("x", FLOAT, &["seq", "batch", "2"]));
    g.output.push(value_info("yh", FLOAT, &["1", "batch", "3"]));
    g.initializer
        .push(f32_tensor("w", &[1, 12, 2], &[0.25; 24]));
    g.initializer
        .push(f32_tensor("r", &[1, 12, 3], &[-0.125; 36]));
    let mut n = node("LSTM", "the_lstm", &["x", "w", "r"], &["", "yh"]);
    n.attribute = attrs;
    g.node.push(n);
    model(g, 14)
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.i = v;
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
    a
}

fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::STRINGS.into();
    a
}

fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.s = v.as_bytes().to_vec();
    a.type_ = onnx_protobuf::attribute_proto::AttributeType::STRING.into();
    a
}

#[test]
fn bad_recurrent_layers_name_the_node() {
    // The valid layer imports (symbolic sequence and batch) and runs.
    let g = load(&lstm_model(vec![])).unwrap();
    let y = qlift_ir::interp::run(&g, &[Tensor::from_f32(&[4, 2, 2], vec![0.5; 16])]).unwrap();
    assert_eq!(y[0].shape(), &[1, 2, 3]);
    let cases: Vec<(Vec<AttributeProto>, &str)> = vec![
        (
            vec![attr_strings("activations", &["Swish", "Tanh", "Tanh"])],
            "Swish",
        ),
        (
            vec![attr_strings("activations", &["Sigmoid", "Tanh"])],
            "activations",
        ),
        (vec![attr_int("hidden_size", 5)], "W"),
        (vec![attr_int("hidden_size", -2)], "hidden_size"),
        (vec![attr_string("direction", "sideways")], "sideways"),
        (vec![attr_int("layout", 2)], "layout"),
        (vec![attr_int("input_forget", 3)], "input_forget"),
    ];
    for (attrs, what) in cases {
        let e = err(&lstm_model(attrs)).to_string();
        assert!(e.contains("the_lstm") && e.contains(what), "{what}: {e}");
    }
    // W whose gate rows do not divide into the gates.
    let mut m = lstm_model(vec![]);
    m.graph.as_mut().unwrap().initializer[0] = f32_tensor("w", &[1, 10, 2], &[0.25; 20]);
    let e = err(&m).to_string();
    assert!(e.contains("the_lstm") && e.contains("W"), "{e}");
    // A run-time sequence length past the sequence.
    let mut m = lstm_model(vec![]);
    let g_ = m.graph.as_mut().unwrap();
    g_.input.push(value_info("lens", 6, &["batch"]));
    g_.node[0]
        .input
        .extend(["".to_string(), "lens".to_string()]);
    let g = load(&m).unwrap();
    let lens = Tensor::new(
        qlift_ir::DType::I32,
        vec![2],
        qlift_ir::TensorData::I32(vec![2, 9]),
    )
    .unwrap();
    let e = qlift_ir::interp::run(&g, &[Tensor::from_f32(&[4, 2, 2], vec![0.5; 16]), lens])
        .unwrap_err()
        .to_string();
    assert!(e.contains("the_lstm") && e.contains("sequence_lens"), "{e}");
    // `seq` is the batch, `batch` (also on sequence_lens' axis 0) a symbol: the compiled
    // model runs any sequence with any batch, as the interpreter does.
    assert_eq!(
        qlift_ir::text::type_to_string(g.value_type(g.input_values()[0])),
        "f32[N,batch,2]"
    );
    let compiled =
        qlift::CompiledModel::from_onnx_bytes(&bytes(&m), None, &qlift::CompileOptions::default())
            .unwrap();
    for (seq, batch) in [(4, 2), (7, 3)] {
        let x = Tensor::from_f32(
            &[seq, batch, 2],
            (0..seq * batch * 2)
                .map(|i| (i as f32 * 0.37).sin())
                .collect(),
        );
        let lens = Tensor::new(
            qlift_ir::DType::I32,
            vec![batch],
            qlift_ir::TensorData::I32((0..batch as i32).map(|b| seq as i32 - b).collect()),
        )
        .unwrap();
        let want = qlift_ir::interp::run(&g, &[x.clone(), lens.clone()]).unwrap();
        let got = compiled.run(&[x, lens]).unwrap();
        let (a, b) = (got[0].as_f32().unwrap(), want[0].as_f32().unwrap());
        assert!(
            a.iter()
                .zip(b)
                .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)),
            "{a:?} vs {b:?}"
        );
    }
}

/// Recurrent layers past the limits: a hidden size above `max_recurrent_hidden` is refused
/// at import naming the layer; a run that would take more steps than `max_recurrent_steps`
/// is refused before it starts, by both engines, while shorter runs (a stream's chunks) go.
#[test]
fn recurrent_layers_past_the_limits() {
    let model = bytes(&lstm_model(vec![]));
    let import = |limits: qlift::Limits| ImportOptions {
        limits,
        ..ImportOptions::default()
    };
    let e = load_onnx_bytes(
        &model,
        None,
        &import(qlift::Limits {
            max_recurrent_hidden: 2,
            ..Default::default()
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the_lstm") && e.contains("hidden_size 3 is above the limit of 2"),
        "{e}"
    );
    for engine in [qlift::Engine::Jit, qlift::Engine::Interpreter] {
        let opts = qlift::CompileOptions {
            engine,
            import: import(qlift::Limits {
                max_recurrent_steps: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let compiled = qlift::CompiledModel::from_onnx_bytes(&model, None, &opts).unwrap();
        // x [seq, batch, 2]: 600 steps of 2 samples are 1,200 steps.
        let e = compiled
            .run(&[Tensor::from_f32(&[600, 2, 2], vec![0.5; 2400])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recurrent steps of layer `the_lstm`")
                && e.contains("1200")
                && e.contains("1000"),
            "{engine:?}: {e}"
        );
        compiled
            .run(&[Tensor::from_f32(&[400, 2, 2], vec![0.5; 1600])])
            .unwrap();
    }
}
