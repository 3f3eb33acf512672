//! Markdown (the model card) to HTML with pulldown-cmark. Raw HTML in the text is shown
//! as text, never passed on: a card carries column names and labels from user data.

use pulldown_cmark::{Event, Options, Parser};

/// `text` as HTML, tables on, raw HTML escaped.
pub fn to_html(text: &str) -> String {
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        e => e,
    });
    let mut out = String::with_capacity(text.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_render_and_raw_html_is_text() {
        let html = super::to_html("# Card\n\n| a | b |\n|---|---|\n| 1 | <script>x</script> |\n");
        assert!(html.contains("<h1>Card</h1>"), "{html}");
        assert!(html.contains("<td>1</td>"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
}
