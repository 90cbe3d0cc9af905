//! `qlift ops`: the ONNX ops qlift imports, with the opset versions each accepts, from the
//! importer's registry itself (the README's op table is this command's `--markdown` output,
//! and a test keeps the two equal).

use super::output::print;
use anyhow::Result;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  qlift ops                # one op per line with its opset versions
  qlift ops --markdown     # the table in README.md")]
pub(crate) struct OpsArgs {
    /// Print a Markdown table (the one in README.md) instead of plain lines.
    #[arg(long)]
    markdown: bool,
}

pub(crate) fn exec(args: &OpsArgs) -> Result<()> {
    print(&if args.markdown { markdown() } else { plain() })
}

/// `Op  first..last` lines.
fn plain() -> String {
    let ops = qlift::supported_ops();
    let width = ops.iter().map(|(op, _)| op.len()).max().unwrap_or(0);
    ops.iter()
        .map(|(op, v)| format!("{op:<width$}  ai.onnx {}..{}\n", v.start(), v.end()))
        .collect()
}

/// The README table: ops grouped by the opsets they are supported in (most from their first
/// one on; an op ONNX replaced, such as Upsample, up to its last), several per row.
pub fn markdown() -> String {
    let ops = qlift::supported_ops();
    let mut by_range: std::collections::BTreeMap<(i64, i64), Vec<&str>> =
        std::collections::BTreeMap::new();
    for (op, v) in &ops {
        by_range.entry((*v.start(), *v.end())).or_default().push(op);
    }
    let mut out = format!(
        "{} ONNX ops (default domain, `ai.onnx`):\n\n| opsets | ops |\n|---|---|\n",
        ops.len()
    );
    for ((since, last), names) in by_range {
        out.push_str(&format!("| {since}–{last} | {} |\n", names.join(", ")));
    }
    out
}
