//! HTML building blocks: escaping, the page frame, numbers as shown, tables, the chart
//! placeholders the page's script fills (their data as JSON in the page), and small
//! inline SVG histograms.

use crate::read::Histogram;
use serde::Serialize;
use std::fmt::Write;

/// `s` with HTML's special characters escaped (text and attribute values).
pub fn esc(s: &str) -> String {
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

/// A path segment or query value percent-encoded for a URL (a space as `%20`, which
/// both a path and a query decode).
pub fn url(s: &str) -> String {
    // byte_serialize writes a space as `+` and a `+` as `%2B`, so every `+` is a space
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The page: title, the embedded styles and scripts, the top bar and `body`.
/// `live` is the progress URL a running run's page polls.
pub fn page(title: &str, runs_dir: &str, live: Option<&str>, body: &str) -> String {
    let live = live.map_or(String::new(), |u| format!(" data-live=\"{}\"", esc(u)));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · kiln ui</title>\
<link rel=\"stylesheet\" href=\"/assets/uPlot.min.css\"><link rel=\"stylesheet\" href=\"/assets/ui.css\">\
<script src=\"/assets/uPlot.iife.min.js\" defer></script><script src=\"/assets/ui.js\" defer></script>\
</head><body{live}><header><a class=\"brand\" href=\"/\">kiln ui</a><nav><a href=\"/\">runs</a></nav>\
<span class=\"dir\" title=\"runs folder\">{dir}</span></header><main>{body}</main></body></html>\n",
        title = esc(title),
        dir = esc(runs_dir),
    )
}

/// A metric or loss as shown: 4 decimals, or scientific for very small or large ones.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// Seconds as `0.7 s`, `2 min 05 s`, `1 h 02 min`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    // rounded to tenths first, so 59.97 s is `1 min 00 s`, not `60.0 s`
    let s = (s * 10.0).round() / 10.0;
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{} h {:02} min", t / 3600, t % 3600 / 60)
    }
}

/// Seconds since the Unix epoch as `2026-12-01 05:05:05 UTC`.
pub fn utc(secs: u64) -> String {
    let t = kiln_core::time::Utc::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A table from a header and rows of ready HTML cells.
pub fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("<table class=\"{}\"><thead><tr>", esc(class));
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// A section's problem (an unreadable file), shown in place of its content.
pub fn problem(what: &str, why: &str) -> String {
    format!(
        "<p class=\"problem\"><strong>{}</strong>: {}</p>",
        esc(what),
        esc(why)
    )
}

/// One line of a chart.
#[derive(Debug, Serialize)]
pub struct Series {
    /// The legend's label.
    pub label: String,
    /// One value per x (null where the line has none).
    pub values: Vec<Option<f64>>,
}

/// A chart the page's script draws with uPlot (zoom by dragging, double-click resets).
#[derive(Debug, Serialize)]
pub struct Chart {
    /// Title above it.
    pub title: String,
    /// The x axis' label.
    pub xlabel: String,
    /// The x values (epochs).
    pub x: Vec<f64>,
    /// The lines.
    pub series: Vec<Series>,
    /// The epoch to mark (the kept one).
    pub best: Option<f64>,
}

/// The placeholder of `chart` and its data.
pub fn chart(id: &str, chart: &Chart) -> String {
    // `<`, `>` and `&` as JSON escapes: no text from a run file can end the script
    // element or put the HTML parser into a script-in-comment state
    let data = serde_json::to_string(chart)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    format!(
        "<div class=\"chart\" id=\"{id}\" data-chart=\"{id}-data\"></div>\
<script type=\"application/json\" id=\"{id}-data\">{data}</script>",
        id = esc(id)
    )
}

/// A small inline SVG of a histogram's bars.
pub fn histogram_svg(h: &Histogram) -> String {
    let (w, hgt) = (120.0, 28.0);
    let top = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = w / h.counts.len().max(1) as f64;
    let mut s = format!(
        "<svg class=\"hist\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" role=\"img\"><title>{} to {}</title>",
        h.min, h.max
    );
    for (i, &c) in h.counts.iter().enumerate() {
        let bh = c as f64 / top * hgt;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"/>",
            i as f64 * bw,
            hgt - bh,
            (bw - 1.0).max(0.5)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_numbers_and_times() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(num(0.9), "0.9000");
        assert_eq!(num(2.4e-7), "2.400e-7");
        assert_eq!(duration(0.74), "0.7 s");
        assert_eq!(duration(125.0), "2 min 05 s");
        assert_eq!(duration(59.97), "1 min 00 s");
        assert_eq!(duration(f64::NAN), "?");
        assert_eq!(utc(1_796_101_505), "2026-12-01 05:05:05 UTC");
        assert_eq!(url("a b/c+d"), "a%20b%2Fc%2Bd");
    }

    #[test]
    fn chart_data_cannot_close_its_script() {
        let c = Chart {
            title: "</script><script>alert(1)".into(),
            xlabel: "epoch".into(),
            x: vec![1.0],
            series: vec![],
            best: None,
        };
        let html = chart("c", &c);
        assert!(!html.contains("</script><script>"));
        let json = html
            .split_once("application/json\" id=\"c-data\">")
            .and_then(|(_, r)| r.strip_suffix("</script>"))
            .unwrap();
        assert!(!json.contains(['<', '>']), "{json}");
        let back: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back["title"], "</script><script>alert(1)");
    }
}
