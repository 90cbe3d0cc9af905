//! The parser: a character cursor with positions, and recursive descent over the grammar
//! the printer writes. It never panics: every unexpected input is an `IrError::Parse`.

use super::ConstantPool;
use crate::{
    AttrValue, Attrs, DType, Dim, Graph, IrError, Op, OpKind, QuantParams, Shape, Tensor,
    TensorData, TensorType, Value, ValueId,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Parses a graph whose constants are all inline.
pub fn parse(text: &str) -> Result<Graph> {
    Parser::new(text, None).graph()
}

/// Parses a tensor written as a constant is: a type and inline data, e.g.
/// `f32[2,2] [1.0, 2.0, 3.0, 4.0]` (filetests use it for run lines).
pub fn parse_tensor(text: &str) -> Result<Tensor> {
    let mut p = Parser::new(text, None);
    let ty = p.ty()?;
    let Some(shape) = ty.shape.as_fixed() else {
        return p.error("a tensor cannot have the batch dimension");
    };
    let data = p.tensor_data(ty.dtype)?;
    p.skip();
    if p.peek().is_some() {
        return p.error("unexpected text after the tensor");
    }
    Tensor::new(ty.dtype, shape, data).or_else(|e| p.error(e))
}

/// Parses a graph, resolving constants printed as digests through `pool`.
pub fn parse_with_constants(text: &str, pool: &ConstantPool) -> Result<Graph> {
    Parser::new(text, Some(pool)).graph()
}

struct Parser<'a> {
    /// The text, read in place: a `Vec<char>` copy of it took four bytes per character (a
    /// ResNet-18 `.qir` is 50 MB of text, its weights in full).
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    line: usize,
    column: usize,
    pool: Option<&'a ConstantPool>,
    values: HashMap<String, ValueId>,
    graph: Graph,
    /// How many bodies enclose the graph being parsed.
    depth: usize,
}

/// Most levels of bodies the parser follows (a body in a body ...): real models nest two
/// or three; the bound keeps hostile text from exhausting the stack.
pub const MAX_NESTING: usize = 64;

type Result<T> = std::result::Result<T, IrError>;

impl<'a> Parser<'a> {
    fn new(text: &'a str, pool: Option<&'a ConstantPool>) -> Parser<'a> {
        Parser {
            text,
            pos: 0,
            line: 1,
            column: 1,
            pool,
            values: HashMap::new(),
            graph: Graph::default(),
            depth: 0,
        }
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(IrError::Parse {
            line: self.line,
            column: self.column,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Skips white space and `;` comments.
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c == ';' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Consumes `s` (after white space) if it is next.
    fn eat(&mut self, s: &str) -> bool {
        self.skip();
        if self.text[self.pos..].starts_with(s) {
            for _ in s.chars() {
                self.bump();
            }
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<()> {
        if self.eat(s) {
            return Ok(());
        }
        let found = self
            .peek()
            .map_or("the end of the text".to_string(), |c| format!("`{c}`"));
        self.error(format!("expected `{s}`, found {found}"))
    }

    /// A run of word characters (names, numbers, keywords).
    fn word(&mut self) -> String {
        self.word_str().to_string()
    }

    /// [`Parser::word`] as a slice of the text: numbers are read without an allocation each
    /// (a weight tensor is millions of them).
    fn word_str(&mut self) -> &'a str {
        self.skip();
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || "_./-+".contains(c))
        {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    /// A plain or quoted name.
    fn name(&mut self) -> Result<String> {
        self.skip();
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let w = self.word();
        if w.is_empty() {
            return self.error("expected a name");
        }
        Ok(w)
    }

    fn quoted(&mut self) -> Result<String> {
        self.expect("\"")?;
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return self.error("unterminated string"),
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('u') => {
                        self.expect("{")?;
                        let hex = self.word();
                        self.expect("}")?;
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) => s.push(c),
                            None => return self.error(format!("bad escape \\u{{{hex}}}")),
                        }
                    }
                    _ => return self.error("unknown escape"),
                },
                Some(c) => s.push(c),
            }
        }
    }

    /// `%name`
    fn value_name(&mut self) -> Result<String> {
        self.expect("%")?;
        self.name()
    }

    fn number<T: std::str::FromStr>(&mut self, what: &str) -> Result<T> {
        let w = self.word_str();
        match w.parse() {
            Ok(v) => Ok(v),
            Err(_) => self.error(format!("expected {what}, found `{w}`")),
        }
    }

    /// A comma-separated list between `open` and `close`.
    fn list<T>(
        &mut self,
        open: &str,
        close: &str,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.expect(open)?;
        let mut items = Vec::new();
        if self.eat(close) {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat(close) {
                return Ok(items);
            }
            self.expect(",")?;
        }
    }

    fn graph(mut self) -> Result<Graph> {
        self.expect("graph")?;
        let graph = self.graph_body()?;
        self.skip();
        if self.peek().is_some() {
            return self.error("unexpected text after the graph");
        }
        Ok(graph)
    }

    /// A graph after its `graph` keyword, with names of its own: the top-level graph or a
    /// body in an attribute (which sees nothing of the enclosing graph's values).
    fn graph_body(&mut self) -> Result<Graph> {
        let outer_values = std::mem::take(&mut self.values);
        let outer_graph = std::mem::take(&mut self.graph);
        let parsed = self.graph_contents();
        self.values = outer_values;
        self.graph = outer_graph;
        parsed
    }

    fn graph_contents(&mut self) -> Result<Graph> {
        let name = self.name()?;
        self.graph.name = name;
        let inputs = self.list("(", ")", |p| {
            let at = p.here();
            let n = p.value_name()?;
            p.expect(":")?;
            Ok((n, p.ty()?, at))
        })?;
        for (n, ty, at) in inputs {
            let v = self.graph.add_input(&n, ty);
            self.define(n, v, at)?;
        }
        self.expect("->")?;
        let (line, column) = (self.line, self.column);
        let outputs = self.list("(", ")", |p| p.value_name())?;
        self.expect("{")?;
        while !self.eat("}") {
            if self.peek().is_none() {
                return self.error("expected `}` at the end of the graph");
            }
            self.node()?;
        }
        let mut ids = Vec::new();
        for o in outputs {
            match self.values.get(&o) {
                Some(&v) => ids.push(v),
                None => {
                    return Err(IrError::Parse {
                        line,
                        column,
                        message: format!("graph output `%{o}` is never defined"),
                    })
                }
            }
        }
        self.graph.set_outputs(ids)?;
        Ok(std::mem::take(&mut self.graph))
    }

    /// Binds a value name; `(line, column)` is where the name was written.
    fn define(&mut self, name: String, v: ValueId, (line, column): (usize, usize)) -> Result<()> {
        if self.values.insert(name.clone(), v).is_some() {
            return Err(IrError::Parse {
                line,
                column,
                message: format!("value `%{name}` is defined twice"),
            });
        }
        Ok(())
    }

    /// Where the next token starts.
    fn here(&mut self) -> (usize, usize) {
        self.skip();
        (self.line, self.column)
    }

    fn node(&mut self) -> Result<()> {
        let at = self.here();
        let mut results = vec![self.value_name()?];
        while self.eat(",") {
            results.push(self.value_name()?);
        }
        self.expect("=")?;
        let (line, column) = self.here();
        let op_name = self.word();
        if op_name == "const" {
            return self.constant(results, at);
        }
        let kind: OpKind = match op_name.parse() {
            Ok(k) => k,
            Err(e) => {
                return Err(IrError::Parse {
                    line,
                    column,
                    message: e,
                })
            }
        };
        let operands = self.list("(", ")", |p| {
            if p.eat("_") {
                return Ok(None);
            }
            let n = p.value_name()?;
            match p.values.get(&n) {
                Some(&v) => Ok(Some(v)),
                None => p.error(format!("value `%{n}` is used before it is defined")),
            }
        })?;
        self.skip();
        let attrs = if self.peek() == Some('{') {
            self.attrs()?
        } else {
            Attrs::new()
        };
        self.expect(":")?;
        let mut types = vec![self.ty()?];
        while self.eat(",") {
            types.push(self.ty()?);
        }
        if types.len() != results.len() {
            return self.error(format!(
                "{} results but {} types",
                results.len(),
                types.len()
            ));
        }
        let node_name = if self.eat("@") {
            self.name()?
        } else {
            results[0].clone()
        };
        let outputs = results
            .iter()
            .zip(types)
            .map(|(n, ty)| Value {
                name: n.clone(),
                ty,
            })
            .collect();
        let id = self
            .graph
            .add_node(&node_name, Op::new(kind, attrs), &operands, outputs)?;
        for (output, n) in results.into_iter().enumerate() {
            self.define(n, ValueId { node: id, output }, at)?;
        }
        Ok(())
    }

    fn constant(&mut self, results: Vec<String>, at: (usize, usize)) -> Result<()> {
        if results.len() != 1 {
            return self.error("a constant has one result");
        }
        let ty = self.ty()?;
        let Some(shape) = ty.shape.as_fixed() else {
            return self.error("a constant cannot have the batch dimension");
        };
        let (line, column) = self.here();
        let tensor = if self.eat("#") {
            let hex = self.word();
            let fail = |message: String| {
                Err(IrError::Parse {
                    line,
                    column,
                    message,
                })
            };
            let Ok(digest) = u64::from_str_radix(&hex, 16) else {
                return fail(format!("bad digest `{hex}`"));
            };
            let Some(pool) = self.pool else {
                return fail(format!("constant #{hex} is given by digest; print the graph with full constants to parse it alone"));
            };
            match pool.get(&digest) {
                Some(t) if t.dtype() == ty.dtype && t.shape() == shape.as_slice() => t.clone(),
                Some(t) => {
                    return fail(format!(
                        "constant #{hex} is {}{:?} in the pool",
                        t.dtype(),
                        t.shape()
                    ))
                }
                None => return fail(format!("constant #{hex} is not in the constant pool")),
            }
        } else {
            let data = self.tensor_data(ty.dtype)?;
            match Tensor::new(ty.dtype, shape, data) {
                Ok(t) => Arc::new(t),
                Err(e) => return self.error(e),
            }
        };
        let node_name = if self.eat("@") {
            self.name()?
        } else {
            results[0].clone()
        };
        let v = self.graph.add_const(&node_name, tensor, ty.quant);
        self.graph.node_mut(v.node).outputs[0].name = results[0].clone();
        let name = results.into_iter().next().expect("one result");
        self.define(name, v, at)
    }

    fn tensor_data(&mut self, dtype: DType) -> Result<TensorData> {
        if dtype == DType::F32 {
            return Ok(TensorData::F32(self.list("[", "]", |p| p.float())?));
        }
        Ok(match dtype {
            DType::I8 | DType::I4 => TensorData::I8(self.ints(dtype, |v| v as i8)?),
            DType::U8 | DType::U4 | DType::Bool => TensorData::U8(self.ints(dtype, |v| v as u8)?),
            DType::I16 => TensorData::I16(self.ints(dtype, |v| v as i16)?),
            DType::I32 => TensorData::I32(self.ints(dtype, |v| v as i32)?),
            _ => TensorData::I64(self.ints(dtype, |v| v)?),
        })
    }

    /// A list of integers of `dtype`, stored narrowed as they are read (not as `i64` first:
    /// eight bytes per int8 weight); the first value outside the range is reported after
    /// the list, as a whole-constant error.
    fn ints<T>(&mut self, dtype: DType, narrow: impl Fn(i64) -> T) -> Result<Vec<T>> {
        let (lo, hi) = dtype.int_range().expect("integer dtype");
        let mut outside = None;
        let values = self.list("[", "]", |p| {
            let v: i64 = p.number("an integer")?;
            if outside.is_none() && !(lo..=hi).contains(&v) {
                outside = Some(v);
            }
            Ok(narrow(v))
        })?;
        match outside {
            Some(v) => self.error(format!("{v} is outside the {dtype} range")),
            None => Ok(values),
        }
    }

    fn float(&mut self) -> Result<f32> {
        let w = self.word_str();
        match w {
            "nan" => Ok(f32::NAN),
            "inf" => Ok(f32::INFINITY),
            "-inf" => Ok(f32::NEG_INFINITY),
            _ => match w.parse() {
                Ok(v) => Ok(v),
                Err(_) => self.error(format!("expected a number, found `{w}`")),
            },
        }
    }

    fn ty(&mut self) -> Result<TensorType> {
        let d = self.word();
        let dtype: DType = match d.parse() {
            Ok(d) => d,
            Err(e) => return self.error(e),
        };
        let dims = self.list("[", "]", |p| {
            if p.eat("?") {
                return Ok(Dim::Dyn);
            }
            let w = p.word();
            match w.as_str() {
                "N" => Ok(Dim::Batch),
                _ if w.starts_with(|c: char| c.is_ascii_digit()) => match w.parse() {
                    Ok(n) => Ok(Dim::Fixed(n)),
                    Err(_) => p.error(format!("expected a dimension, found `{w}`")),
                },
                _ if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                    Ok(Dim::Sym(crate::Symbol::new(&w)))
                }
                _ => p.error(format!("expected a dimension, found `{w}`")),
            }
        })?;
        let quant = if self.eat("quant") {
            Some(self.quant()?)
        } else {
            None
        };
        Ok(TensorType {
            dtype,
            shape: Shape(dims),
            quant,
        })
    }

    fn quant(&mut self) -> Result<QuantParams> {
        self.expect("(")?;
        let axis = if self.eat("axis") {
            self.expect("=")?;
            let a = self.number("an axis")?;
            self.expect(",")?;
            Some(a)
        } else {
            None
        };
        self.expect("scale")?;
        self.expect("=")?;
        let (scale, zero_point) = if axis.is_some() {
            let s = self.list("[", "]", |p| p.float())?;
            self.expect(",")?;
            self.expect("zero_point")?;
            self.expect("=")?;
            (s, self.list("[", "]", |p| p.number("a zero point"))?)
        } else {
            let s = self.float()?;
            self.expect(",")?;
            self.expect("zero_point")?;
            self.expect("=")?;
            (vec![s], vec![self.number("a zero point")?])
        };
        self.expect(")")?;
        if scale.len() != zero_point.len() {
            return self.error(format!(
                "{} scales but {} zero points",
                scale.len(),
                zero_point.len()
            ));
        }
        Ok(QuantParams {
            scale,
            zero_point,
            axis,
        })
    }

    fn attrs(&mut self) -> Result<Attrs> {
        let pairs = self.list("{", "}", |p| {
            let k = p.name()?;
            p.expect("=")?;
            Ok((k, p.attr_value()?))
        })?;
        let mut attrs = Attrs::new();
        for (k, v) in pairs {
            if attrs.0.insert(k.clone(), v).is_some() {
                return self.error(format!("attribute `{k}` is given twice"));
            }
        }
        Ok(attrs)
    }

    fn attr_value(&mut self) -> Result<AttrValue> {
        self.skip();
        match self.peek() {
            Some('"') => return self.quoted().map(AttrValue::Str),
            Some('[') => {
                let words = self.list("[", "]", |p| Ok(p.word()))?;
                return if words.iter().any(|w| is_float_word(w)) {
                    words
                        .iter()
                        .map(|w| self.float_word(w))
                        .collect::<Result<_>>()
                        .map(AttrValue::Floats)
                } else {
                    words
                        .iter()
                        .map(|w| self.int_word(w))
                        .collect::<Result<_>>()
                        .map(AttrValue::Ints)
                };
            }
            _ => {}
        }
        let w = self.word();
        if w == "graph" {
            if self.depth >= MAX_NESTING {
                return self.error(format!("bodies nest deeper than {MAX_NESTING} levels"));
            }
            self.depth += 1;
            let body = self.graph_body();
            self.depth -= 1;
            return Ok(AttrValue::Graph(Arc::new(body?)));
        }
        if w == "floats" {
            self.expect("[")?;
            self.expect("]")?;
            return Ok(AttrValue::Floats(Vec::new()));
        }
        if is_float_word(&w) {
            self.float_word(&w).map(AttrValue::Float)
        } else {
            self.int_word(&w).map(AttrValue::Int)
        }
    }

    fn float_word(&self, w: &str) -> Result<f32> {
        match w {
            "nan" => Ok(f32::NAN),
            "inf" => Ok(f32::INFINITY),
            "-inf" => Ok(f32::NEG_INFINITY),
            _ => w
                .parse()
                .or_else(|_| self.error(format!("expected a float, found `{w}`"))),
        }
    }

    fn int_word(&self, w: &str) -> Result<i64> {
        w.parse()
            .or_else(|_| self.error(format!("expected an integer, found `{w}`")))
    }
}

/// Whether a number is written as a float (the printer always marks floats).
fn is_float_word(w: &str) -> bool {
    w.contains(['.', 'e', 'E']) || matches!(w, "nan" | "inf" | "-inf")
}
