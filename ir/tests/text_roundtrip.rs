//! The text format round-trips: `parse(print(g)) == g` for random graphs (full constants, and
//! digests resolved through the constant pool), and the parser never panics.

use proptest::prelude::*;
use qlift_ir::text::{constant_pool, parse, parse_with_constants, print, PrintOptions};
use qlift_ir::{
    AttrValue, Attrs, DType, Dim, Graph, IrError, Op, OpKind, QuantParams, Shape, Tensor,
    TensorData, TensorType, Value, ValueId,
};
use std::sync::Arc;

/// Names with the characters ONNX models use, plus ones that need quoting.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,6}",
        "[A-Za-z0-9_./-]{1,10}",
        "[ -~]{0,8}",
        Just(String::new()),
        Just("tab\there \"q\" \\ é\n".to_string()),
    ]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>().prop_filter("no NaN (constants compare by value)", |f| !f.is_nan()),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-0.0f32),
        Just(1.0f32),
    ]
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<i64>().prop_map(AttrValue::Int),
        float().prop_map(AttrValue::Float),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(AttrValue::Ints),
        prop::collection::vec(float(), 0..4).prop_map(AttrValue::Floats),
        name().prop_map(AttrValue::Str),
    ]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn ty() -> impl Strategy<Value = TensorType> {
    let dims = prop::collection::vec(
        prop_oneof![
            Just(Dim::Batch),
            Just(Dim::Dyn),
            Just(Dim::Sym(qlift_ir::Symbol::new("sequence"))),
            (0usize..5).prop_map(Dim::Fixed)
        ],
        0..4,
    );
    let quant = prop_oneof![
        Just(None),
        (float(), any::<i8>()).prop_map(|(s, z)| Some(QuantParams::per_tensor(s, z as i32))),
        (
            0usize..3,
            prop::collection::vec((float(), any::<i8>()), 1..4)
        )
            .prop_map(|(a, v)| Some(QuantParams::per_axis(
                a,
                v.iter().map(|p| p.0).collect(),
                v.iter().map(|p| p.1 as i32).collect()
            ))),
    ];
    (dtype(), dims, quant).prop_map(|(dtype, dims, quant)| TensorType {
        dtype,
        shape: Shape(dims),
        quant,
    })
}

/// A constant of any dtype with values in its range.
fn constant() -> impl Strategy<Value = Tensor> {
    (dtype(), prop::collection::vec(0usize..4, 0..3)).prop_flat_map(|(dtype, shape)| {
        let n: usize = shape.iter().product();
        let data: BoxedStrategy<TensorData> = match dtype {
            DType::F32 => prop::collection::vec(float(), n)
                .prop_map(TensorData::F32)
                .boxed(),
            DType::I8 => prop::collection::vec(any::<i8>(), n)
                .prop_map(TensorData::I8)
                .boxed(),
            DType::I4 => prop::collection::vec(-8i8..=7, n)
                .prop_map(TensorData::I8)
                .boxed(),
            DType::U8 => prop::collection::vec(any::<u8>(), n)
                .prop_map(TensorData::U8)
                .boxed(),
            DType::I16 => prop::collection::vec(any::<i16>(), n)
                .prop_map(TensorData::I16)
                .boxed(),
            DType::U4 => prop::collection::vec(0u8..=15, n)
                .prop_map(TensorData::U8)
                .boxed(),
            DType::Bool => prop::collection::vec(0u8..=1, n)
                .prop_map(TensorData::U8)
                .boxed(),
            DType::I32 => prop::collection::vec(any::<i32>(), n)
                .prop_map(TensorData::I32)
                .boxed(),
            DType::I64 => prop::collection::vec(any::<i64>(), n)
                .prop_map(TensorData::I64)
                .boxed(),
        };
        data.prop_map(move |d| Tensor::new(dtype, shape.clone(), d).expect("generated in range"))
    })
}

#[derive(Debug, Clone)]
enum Step {
    Input(String, TensorType),
    Const(String, Tensor, Option<QuantParams>),
    Node {
        name: String,
        kind: OpKind,
        attrs: Vec<(String, AttrValue)>,
        operands: Vec<Option<usize>>,
        results: Vec<(String, TensorType)>,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (name(), ty()).prop_map(|(n, t)| Step::Input(n, t)),
        (name(), constant(), prop::option::of((float(), any::<i8>()))).prop_map(|(n, t, q)| {
            Step::Const(n, t, q.map(|(s, z)| QuantParams::per_tensor(s, z as i32)))
        }),
        (
            name(),
            prop::sample::select(OpKind::ALL.to_vec()),
            prop::collection::vec((name(), attr_value()), 0..3),
            prop::collection::vec(prop::option::of(any::<usize>()), 0..4),
            prop::collection::vec((name(), ty()), 1..3),
        )
            .prop_map(|(name, kind, attrs, operands, results)| Step::Node {
                name,
                kind,
                attrs,
                operands,
                results
            }),
    ]
}

/// Builds a graph from steps; names are made unique by a numeric suffix after an
/// underscore (the suffix after the last `_` is the counter, so no two names collide: a
/// bare suffix made `1` + `1` and `` + `11` the same name).
fn build(steps: &[Step], outputs: &[usize]) -> Graph {
    let mut g = Graph::new("random graph");
    let mut values: Vec<ValueId> = Vec::new();
    let mut count = 0;
    let mut unique = |n: &str| {
        count += 1;
        format!("{n}_{count}")
    };
    for s in steps {
        match s {
            Step::Input(n, t) => values.push(g.add_input(&unique(n), t.clone())),
            Step::Const(n, t, q) => {
                let n = unique(n);
                values.push(g.add_const(&n, Arc::new(t.clone()), q.clone()));
            }
            Step::Node {
                name,
                kind,
                attrs,
                operands,
                results,
            } => {
                let mut a = Attrs::new();
                for (k, v) in attrs {
                    a.set(k, v.clone());
                }
                let operands: Vec<Option<ValueId>> = operands
                    .iter()
                    .map(|o| {
                        o.filter(|_| !values.is_empty())
                            .map(|i| values[i % values.len()])
                    })
                    .collect();
                let results: Vec<Value> = results
                    .iter()
                    .map(|(n, t)| Value {
                        name: unique(n),
                        ty: t.clone(),
                    })
                    .collect();
                let count = results.len();
                let id = g
                    .add_node(name, Op::new(*kind, a), &operands, results)
                    .unwrap();
                values.extend((0..count).map(|output| ValueId { node: id, output }));
            }
        }
    }
    if !values.is_empty() {
        g.set_outputs(outputs.iter().map(|&i| values[i % values.len()]).collect())
            .unwrap();
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn print_parse_round_trips(steps in prop::collection::vec(step(), 0..12), outputs in prop::collection::vec(any::<usize>(), 0..3)) {
        let g = build(&steps, &outputs);
        let full = print(&g, &PrintOptions { full_constants: true, ..Default::default() });
        let parsed = parse(&full).map_err(|e| TestCaseError::fail(format!("{e}\n{full}")))?;
        prop_assert!(parsed == g, "full text does not round-trip:\n{}", full);
        let dump = print(&g, &PrintOptions { full_constants: false, inline_limit: 2 });
        let parsed = parse_with_constants(&dump, &constant_pool(&g)).map_err(|e| TestCaseError::fail(format!("{e}\n{dump}")))?;
        prop_assert!(parsed == g, "digest text does not round-trip:\n{}", dump);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn parser_never_panics_on_edited_graphs(steps in prop::collection::vec(step(), 1..8), at in any::<usize>(), cut in any::<bool>(), byte in any::<char>()) {
        let text = print(&build(&steps, &[0]), &PrintOptions { full_constants: true, ..Default::default() });
        let chars: Vec<char> = text.chars().collect();
        let at = at % chars.len();
        let edited: String = if cut { chars[..at].iter().collect() } else {
            chars.iter().enumerate().map(|(i, &c)| if i == at { byte } else { c }).collect()
        };
        let _ = parse(&edited);
    }
}

fn parse_error(text: &str) -> String {
    match parse(text) {
        Err(e @ IrError::Parse { .. }) => e.to_string(),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn errors_say_where_and_what() {
    insta::assert_snapshot!(parse_error("graph g() -> (%y) {\n  %y = Relu(%x) : f32[1]\n}"), @"line 2, column 15: value `%x` is used before it is defined");
    insta::assert_snapshot!(parse_error("graph g(%x: f32[2]) -> (%x) {\n  %x = Relu(%x) : f32[2]\n}"), @"line 2, column 3: value `%x` is defined twice");
    insta::assert_snapshot!(parse_error("graph g(%x: f32[2]) -> (%y) {\n  %y = Frobnicate(%x) : f32[2]\n}"), @"line 2, column 8: unknown op `Frobnicate`");
    insta::assert_snapshot!(parse_error("graph g(%x: f33[2]) -> () {\n}"), @"line 1, column 16: unknown dtype `f33`");
    insta::assert_snapshot!(parse_error("graph g() -> (%w) {\n  %w = const f32[100] #00000000deadbeef\n}"), @"line 2, column 23: constant #00000000deadbeef is given by digest; print the graph with full constants to parse it alone");
    insta::assert_snapshot!(parse_error("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x"), @"line 2, column 15: expected `,`, found the end of the text");
    insta::assert_snapshot!(parse_error("graph g() -> (%c) {\n  %c = const u8[2] [1, 300]\n}"), @"line 2, column 28: 300 is outside the u8 range");
    // Columns count characters, not bytes (the parser reads the text in place, as UTF-8).
    insta::assert_snapshot!(parse_error("graph g(%\"é\": f33[2]) -> () {\n}"), @"line 1, column 18: unknown dtype `f33`");
}

#[test]
fn small_quantized_graph_prints_readably() {
    let text = "graph small(%x: f32[N,4]) -> (%y) {
  %w = const i8[2,4] quant(axis=0, scale=[0.5, 0.25], zero_point=[0, 0]) [1, -2, 3, -4, 5, -6, 7, -8]
  %xq = QuantizeLinear(%x) : u8[N,4] quant(scale=0.1, zero_point=128) @quantize_x
  %y = QLinearMatMul(%xq, %w) : u8[N,2] quant(scale=0.2, zero_point=3)
}
";
    let g = parse(text).unwrap();
    assert_eq!(print(&g, &PrintOptions::default()), text);
    insta::assert_snapshot!(qlift_ir::dot::to_dot(&g));
}
