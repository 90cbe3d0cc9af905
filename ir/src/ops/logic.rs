//! Comparisons (Equal, Greater, GreaterOrEqual, Less, LessOrEqual), logic on bools (Not,
//! And, Or, Xor) and selection (Where), all broadcasting. Comparisons give bools; an
//! ordered comparison with NaN is false, and so is `NaN == NaN`.

use super::arith::{
    broadcast_all, broadcast_types, common_dtype, is_numeric, operand_types, operand_values,
};
use super::{EvalCtx, InferCtx};
use crate::{DType, OpKind, SymInt, Tensor, TensorData, TensorType};

pub(crate) fn infer(cx: &InferCtx) -> Result<Vec<TensorType>, String> {
    use OpKind::*;
    let types = operand_types(cx)?;
    let shape = broadcast_types(&types)?;
    let dtype = match cx.op.kind {
        Equal | Greater | GreaterOrEqual | Less | LessOrEqual => {
            let d = common_dtype(&types)?;
            if !(is_numeric(d) || (d == DType::Bool && cx.op.kind == Equal)) {
                return Err(format!("{} of {d} operands is not supported", cx.op.kind));
            }
            DType::Bool
        }
        Not | And | Or | Xor => match common_dtype(&types)? {
            DType::Bool => DType::Bool,
            other => return Err(format!("expects bool operands, found {other}")),
        },
        Where => {
            if types[0].dtype != DType::Bool {
                return Err(format!(
                    "the condition must be bool, found {}",
                    types[0].dtype
                ));
            }
            common_dtype(&types[1..])?
        }
        other => return Err(format!("{other} is not a comparison or logic op")),
    };
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn eval(cx: &EvalCtx) -> Result<Vec<Tensor>, String> {
    let kind = cx.op.kind;
    let ts = operand_values(cx)?;
    let arity = match kind {
        OpKind::Not => 1,
        OpKind::Where => 3,
        _ => 2,
    };
    if ts.len() != arity {
        return Err(format!("{kind} takes {arity} operands, found {}", ts.len()));
    }
    let (shape, idx) = broadcast_all(&ts)?;
    let count: usize = shape.iter().product();
    if kind == OpKind::Where {
        let cond = ts[0].to_i64_vec()?;
        let pick = |k: usize| {
            if cond[idx[0][k]] != 0 {
                (1, idx[1][k])
            } else {
                (2, idx[2][k])
            }
        };
        return Ok(vec![select(&ts[1..], count, pick, shape)?]);
    }
    let bools: Vec<u8> = if ts[0].dtype() == DType::F32 {
        let xs = ts
            .iter()
            .map(|t| t.as_f32())
            .collect::<Result<Vec<_>, _>>()?;
        let (a, b) = (xs[0], xs.get(1).copied().unwrap_or(xs[0]));
        (0..count)
            .map(|k| compare(kind, a[idx[0][k]], b[idx[idx.len() - 1][k]]))
            .collect::<Result<_, _>>()?
    } else {
        let xs = ts
            .iter()
            .map(|t| t.to_i64_vec())
            .collect::<Result<Vec<_>, _>>()?;
        let (a, b) = (&xs[0], xs.get(1).unwrap_or(&xs[0]));
        (0..count)
            .map(|k| compare(kind, a[idx[0][k]], b[idx[idx.len() - 1][k]]))
            .collect::<Result<_, _>>()?
    };
    Ok(vec![Tensor::new(
        DType::Bool,
        shape,
        TensorData::U8(bools),
    )?])
}

/// One comparison or logic op on two elements (Not reads only the first); 0 or 1.
fn compare<T: PartialOrd + Default>(kind: OpKind, a: T, b: T) -> Result<u8, String> {
    let truth = |v: &T| *v != T::default();
    Ok(u8::from(match kind {
        OpKind::Equal => a == b,
        OpKind::Greater => a > b,
        OpKind::GreaterOrEqual => a >= b,
        OpKind::Less => a < b,
        OpKind::LessOrEqual => a <= b,
        OpKind::Not => !truth(&a),
        OpKind::And => truth(&a) && truth(&b),
        OpKind::Or => truth(&a) || truth(&b),
        OpKind::Xor => truth(&a) != truth(&b),
        other => return Err(format!("{other} is not a comparison or logic op")),
    }))
}

/// A tensor of `shape` whose element `k` is element `pick(k).1` of `sources[pick(k).0 - 1]`
/// (Where's two branches, of one dtype).
fn select(
    sources: &[&Tensor],
    count: usize,
    pick: impl Fn(usize) -> (usize, usize),
    shape: Vec<usize>,
) -> Result<Tensor, String> {
    fn gather<T: Copy>(
        a: &[T],
        b: &[T],
        count: usize,
        pick: &dyn Fn(usize) -> (usize, usize),
    ) -> Vec<T> {
        (0..count)
            .map(|k| match pick(k) {
                (1, i) => a[i],
                (_, i) => b[i],
            })
            .collect()
    }
    let (x, y) = (sources[0], sources[1]);
    let data = match (x.data(), y.data()) {
        (TensorData::F32(a), TensorData::F32(b)) => TensorData::F32(gather(a, b, count, &pick)),
        (TensorData::I8(a), TensorData::I8(b)) => TensorData::I8(gather(a, b, count, &pick)),
        (TensorData::U8(a), TensorData::U8(b)) => TensorData::U8(gather(a, b, count, &pick)),
        (TensorData::I32(a), TensorData::I32(b)) => TensorData::I32(gather(a, b, count, &pick)),
        (TensorData::I64(a), TensorData::I64(b)) => TensorData::I64(gather(a, b, count, &pick)),
        _ => {
            return Err(format!(
                "branch types differ: {} and {}",
                x.dtype(),
                y.dtype()
            ))
        }
    };
    Tensor::new(x.dtype(), shape, data)
}

/// What the specializer can know of a comparison's or a Where's elements computed from
/// shapes: exporters guard shape values with `Where(Equal(s, -1), ones, s)` (torch's
/// `expand` and `view`), and an extent is never negative, so such guards fold while the
/// extents are still symbols. `None` when nothing is known.
pub(crate) fn symbolic(cx: &InferCtx, result: &crate::TensorType) -> Option<Vec<SymInt>> {
    if result.shape.rank() > 1 {
        return None;
    }
    let len = |v: &[SymInt]| v.len();
    // Element `i` of a 1-D operand broadcast to the result (a scalar-like `[1]` repeats).
    let at = |v: &[SymInt], i: usize| {
        if v.len() == 1 {
            Some(v[0])
        } else {
            v.get(i).copied()
        }
    };
    match cx.op.kind {
        OpKind::Equal => {
            let (a, b) = (cx.ints(0)?, cx.ints(1)?);
            let n = len(&a).max(len(&b));
            (0..n)
                .map(|i| {
                    let truth = match (at(&a, i)?, at(&b, i)?) {
                        (SymInt::Int(p), SymInt::Int(q)) => p == q,
                        (SymInt::Dim(d), SymInt::Dim(e)) if d == e && d != crate::Dim::Dyn => true,
                        // A symbolic extent is non-negative.
                        (SymInt::Dim(_), SymInt::Int(q)) | (SymInt::Int(q), SymInt::Dim(_))
                            if q < 0 =>
                        {
                            false
                        }
                        _ => return None,
                    };
                    Some(SymInt::Int(truth as i64))
                })
                .collect()
        }
        OpKind::Where => {
            let (c, x, y) = (cx.ints(0)?, cx.ints(1)?, cx.ints(2)?);
            let n = len(&c).max(len(&x)).max(len(&y));
            (0..n)
                .map(|i| match at(&c, i)? {
                    SymInt::Int(0) => at(&y, i),
                    SymInt::Int(_) => at(&x, i),
                    SymInt::Dim(_) => None,
                })
                .collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::run_op;
    use crate::{Attrs, Dim};

    fn bools(v: &[u8]) -> Tensor {
        Tensor::new(DType::Bool, vec![v.len()], TensorData::U8(v.to_vec())).unwrap()
    }

    fn run(kind: OpKind, inputs: Vec<Tensor>) -> Result<Tensor, String> {
        run_op(
            kind,
            Attrs::new(),
            inputs.into_iter().map(|t| (t, None)).collect(),
            None,
        )
    }

    #[test]
    fn comparisons_give_bools() {
        let a = Tensor::from_f32(&[3], vec![1.0, f32::NAN, 3.0]);
        let b = Tensor::from_f32(&[], vec![1.0]);
        let eq = run(OpKind::Equal, vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(eq.dtype(), DType::Bool);
        assert_eq!(eq.to_i64_vec().unwrap(), vec![1, 0, 0]);
        assert_eq!(
            run(OpKind::GreaterOrEqual, vec![a, b])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![1, 0, 1]
        );
        let i = Tensor::from_i64(&[2, 1], vec![-1, 5]);
        let j = Tensor::from_i64(&[2], vec![5, -1]);
        assert_eq!(
            run(OpKind::Less, vec![i, j]).unwrap().to_i64_vec().unwrap(),
            vec![1, 0, 0, 0]
        );
        assert!(run(OpKind::Greater, vec![bools(&[1]), bools(&[0])]).is_err());
        assert_eq!(
            run(OpKind::Equal, vec![bools(&[1, 0]), bools(&[1, 1])])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![1, 0]
        );
    }

    #[test]
    fn logic_and_where() {
        let (p, q) = (bools(&[0, 0, 1, 1]), bools(&[0, 1, 0, 1]));
        assert_eq!(
            run(OpKind::And, vec![p.clone(), q.clone()])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![0, 0, 0, 1]
        );
        assert_eq!(
            run(OpKind::Or, vec![p.clone(), q.clone()])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![0, 1, 1, 1]
        );
        assert_eq!(
            run(OpKind::Xor, vec![p.clone(), q])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![0, 1, 1, 0]
        );
        assert_eq!(
            run(OpKind::Not, vec![p.clone()])
                .unwrap()
                .to_i64_vec()
                .unwrap(),
            vec![1, 1, 0, 0]
        );
        let w = run(
            OpKind::Where,
            vec![
                p,
                Tensor::from_i64(&[4], vec![1, 2, 3, 4]),
                Tensor::from_i64(&[], vec![-1]),
            ],
        )
        .unwrap();
        assert_eq!(w.to_i64_vec().unwrap(), vec![-1, -1, 3, 4]);
        let bad = run(
            OpKind::Where,
            vec![
                bools(&[1]),
                Tensor::from_f32(&[1], vec![1.0]),
                Tensor::from_i64(&[1], vec![1]),
            ],
        );
        assert!(bad.unwrap_err().contains("differ"));
    }

    #[test]
    fn guards_on_symbolic_extents_fold() {
        use crate::{Graph, Op, Shape};
        // Where(Equal(Shape(x), -1), 1, Shape(x)) on x: f32[N, seq]: stays [N, seq].
        let mut g = Graph::new("t");
        let seq = Dim::Sym(crate::Symbol::new("seq"));
        let x = g.add_input(
            "x",
            TensorType::new(DType::F32, Shape(vec![Dim::Batch, seq])),
        );
        let shape_attrs = Attrs::new()
            .with("start", crate::AttrValue::Int(0))
            .with("end", crate::AttrValue::Int(2));
        let s = g
            .add_op("s", Op::new(OpKind::Shape, shape_attrs), &[Some(x)], &["s"])
            .unwrap()[0];
        let minus = g.add_const(
            "m",
            std::sync::Arc::new(Tensor::from_i64(&[2], vec![-1, -1])),
            None,
        );
        let one = g.add_const(
            "one",
            std::sync::Arc::new(Tensor::from_i64(&[], vec![1])),
            None,
        );
        let eq = g
            .add_op(
                "eq",
                Op::new(OpKind::Equal, Attrs::new()),
                &[Some(s), Some(minus)],
                &["eq"],
            )
            .unwrap()[0];
        let w = g
            .add_op(
                "w",
                Op::new(OpKind::Where, Attrs::new()),
                &[Some(eq), Some(one), Some(s)],
                &["w"],
            )
            .unwrap()[0];
        let e = g
            .add_op(
                "e",
                Op::new(OpKind::Expand, Attrs::new()),
                &[Some(x), Some(w)],
                &["e"],
            )
            .unwrap()[0];
        g.set_outputs(vec![e]).unwrap();
        let g = crate::specialize(&g, &crate::Binding::default()).unwrap();
        let out = g.outputs()[0];
        assert_eq!(g.value_type(out).shape, Shape(vec![Dim::Batch, seq]));
    }
}
