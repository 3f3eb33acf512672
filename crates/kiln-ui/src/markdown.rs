//! Markdown (the model card) to HTML with pulldown-cmark. Raw HTML in the text is shown
//! as text, never passed on, and a link or image whose address is not http(s), mailto,
//! relative or a fragment loses it: a card carries column names and labels from user data.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

/// `text` as HTML, tables on, raw HTML escaped, unsafe link addresses dropped.
pub fn to_html(text: &str) -> String {
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe(dest_url),
            title,
            id,
        }),
        e => e,
    });
    let mut out = String::with_capacity(text.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

/// `url` when its scheme is http, https or mailto, or it has none (relative, `#…`);
/// else `#`.
fn safe(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let scheme = lower
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| !s.contains(['/', '?', '#']));
    match scheme {
        None | Some("http" | "https" | "mailto") => url,
        Some(_) => CowStr::Borrowed("#"),
    }
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

    #[test]
    fn only_safe_link_addresses_survive() {
        let html = super::to_html(
            "[a](javascript:alert(1)) <JavaScript:alert(2)> ![i](data:text/html,x) \
             [b](https://example.com/x) [c](./report.md) [d](#metrics) [e](mailto:a@b.c)",
        );
        assert!(
            !html.to_ascii_lowercase().contains("href=\"javascript"),
            "{html}"
        );
        assert_eq!(html.matches("href=\"#\"").count(), 2, "{html}");
        assert!(!html.contains("data:"), "{html}");
        for kept in [
            "https://example.com/x",
            "./report.md",
            "#metrics",
            "mailto:a@b.c",
        ] {
            assert!(
                html.contains(&format!("href=\"{kept}\"")),
                "{kept} in {html}"
            );
        }
    }
}
