//! The report's plots as inline SVG, written by hand: a plot here is a frame, axes with a
//! few ticks, and bars, lines or points. That is a hundred lines, where a plotting crate
//! would add a font stack and several times the bytes per plot (the report of a
//! transformer holds hundreds of plots, and its size is bounded).

use std::fmt::Write;

/// Text escaped for HTML and SVG, in element content and in quoted attributes alike.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number short enough for a tick or a label: 3 significant digits, exponent form when it
/// is very large or small.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// A plot area: data coordinates `[x0, x1] × [y0, y1]` mapped onto a `w × h` pixel box with
/// room for tick labels on the left and below.
pub(crate) struct Frame {
    w: f64,
    h: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

/// Pixels left of the plot area (y tick labels).
const LEFT: f64 = 46.0;
/// Pixels below the plot area (x tick labels and the axis title).
const BOTTOM: f64 = 30.0;
/// Pixels above and right of the plot area.
const PAD: f64 = 8.0;

impl Frame {
    /// A frame for the data ranges; an empty or non-finite range is widened so that every
    /// mapping stays finite.
    pub(crate) fn new(w: f64, h: f64, x: (f64, f64), y: (f64, f64)) -> Frame {
        let widen = |(a, b): (f64, f64)| {
            let (a, b) = if a.is_finite() && b.is_finite() {
                (a.min(b), a.max(b))
            } else {
                (0.0, 1.0)
            };
            if b - a > 0.0 {
                (a, b)
            } else {
                (a - 0.5 - a.abs() * 0.05, b + 0.5 + b.abs() * 0.05)
            }
        };
        let ((x0, x1), (y0, y1)) = (widen(x), widen(y));
        Frame {
            w,
            h,
            x0,
            x1,
            y0,
            y1,
        }
    }

    /// Pixel column of data `x`.
    pub(crate) fn x(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (self.w - LEFT - PAD)
    }

    /// Pixel row of data `y`.
    pub(crate) fn y(&self, y: f64) -> f64 {
        self.h - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (self.h - BOTTOM - PAD)
    }

    /// The `<svg>` start tag and the axes with their ticks and titles; the caller draws and
    /// then closes with `</svg>`.
    pub(crate) fn open(&self, out: &mut String, x_title: &str, y_title: &str) {
        let (w, h) = (self.w, self.h);
        let _ = write!(
            out,
            r#"<svg class="plot" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#,
            esc(y_title)
        );
        let (l, r, t, b) = (LEFT, w - PAD, PAD, h - BOTTOM);
        let _ = write!(out, r#"<path class="ax" d="M{l} {t}V{b}H{r}"/>"#);
        for i in 0..=4 {
            let xv = self.x0 + (self.x1 - self.x0) * i as f64 / 4.0;
            let yv = self.y0 + (self.y1 - self.y0) * i as f64 / 4.0;
            let (px, py) = (self.x(xv), self.y(yv));
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = write!(
                out,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                b + 11.0,
                num(xv)
            );
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                l - 3.0,
                py + 3.0,
                num(yv)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (l + r) / 2.0,
            h - 4.0,
            esc(x_title)
        );
        let _ = write!(
            out,
            r#"<text x="10" y="{:.1}" transform="rotate(-90 10 {:.1})" text-anchor="middle">{}</text>"#,
            (t + b) / 2.0,
            (t + b) / 2.0,
            esc(y_title)
        );
    }

    /// Bars of `counts` over equal bins from `lo` to `hi`, heights `height(count)`.
    pub(crate) fn bars(
        &self,
        out: &mut String,
        class: &str,
        lo: f64,
        hi: f64,
        counts: &[u64],
        height: impl Fn(u64) -> f64,
    ) {
        let step = (hi - lo) / counts.len().max(1) as f64;
        let _ = write!(out, r#"<path class="{class}" d=""#);
        for (i, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
            let (a, b) = (
                self.x(lo + step * i as f64),
                self.x(lo + step * (i + 1) as f64),
            );
            let (top, base) = (self.y(height(c)), self.y(self.y0));
            let _ = write!(
                out,
                "M{a:.1} {base:.1}V{top:.1}H{:.1}V{base:.1}Z",
                b.max(a + 0.8)
            );
        }
        out.push_str(r#""/>"#);
    }

    /// A vertical line at data `x` over the whole plot height, with a hover title.
    pub(crate) fn vline(&self, out: &mut String, class: &str, x: f64, title: &str) {
        let px = self.x(x.clamp(self.x0, self.x1));
        let _ = write!(
            out,
            r#"<line class="{class}" x1="{px:.1}" x2="{px:.1}" y1="{PAD}" y2="{:.1}"><title>{}</title></line>"#,
            self.y(self.y0),
            esc(title)
        );
    }

    /// A polyline through `points` (data coordinates).
    pub(crate) fn line(&self, out: &mut String, class: &str, points: &[(f64, f64)]) {
        let _ = write!(out, r#"<path class="{class}" d=""#);
        for (i, &(x, y)) in points.iter().enumerate() {
            let _ = write!(
                out,
                "{}{:.1} {:.1}",
                if i == 0 { "M" } else { "L" },
                self.x(x),
                self.y(y)
            );
        }
        out.push_str(r#""/>"#);
    }

    /// Small squares at `points`, all in one path (thousands of points stay one element).
    pub(crate) fn dots(&self, out: &mut String, class: &str, points: &[(f64, f64)]) {
        let _ = write!(out, r#"<path class="{class}" d=""#);
        for &(x, y) in points {
            let _ = write!(
                out,
                "M{:.1} {:.1}h2v2h-2Z",
                self.x(x) - 1.0,
                self.y(y) - 1.0
            );
        }
        out.push_str(r#""/>"#);
    }

    /// Vertical segments from `lo` to `hi` at `x`, all in one path (a per-channel band).
    pub(crate) fn segments(&self, out: &mut String, class: &str, segments: &[(f64, f64, f64)]) {
        let _ = write!(out, r#"<path class="{class}" d=""#);
        for &(x, lo, hi) in segments {
            let (a, b) = (self.y(lo), self.y(hi));
            let _ = write!(
                out,
                "M{:.1} {a:.1}V{:.1}",
                self.x(x),
                if (a - b).abs() < 1.0 { a - 1.0 } else { b }
            );
        }
        out.push_str(r#""/>"#);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(-0.0001), "-1.00e-4");
        assert_eq!(num(12.25), "12.2");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(250000.0), "2.50e5");
        assert_eq!(num(f64::INFINITY), "∞");
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn frames_map_data_into_the_box() {
        let f = Frame::new(200.0, 100.0, (0.0, 10.0), (5.0, 5.0));
        assert_eq!(f.x(0.0), LEFT);
        assert_eq!(f.x(10.0), 200.0 - PAD);
        // A flat range is widened, not divided by zero.
        assert!(f.y(5.0).is_finite() && f.y(5.0) > PAD && f.y(5.0) < 100.0 - BOTTOM);
        let mut s = String::new();
        f.open(&mut s, "x", "y");
        f.bars(&mut s, "bar", 0.0, 10.0, &[1, 0, 3], |c| c as f64);
        s.push_str("</svg>");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("Z").count(), 2, "one bar per nonzero count");
    }
}
