//! `cargo xtask bench ui`'s browser side: loads a page of a running `kiln ui` N times in
//! headless Chromium (through ChromeDriver, as the browser tests do) and prints one JSON
//! line with each load's time from navigation start to the end of the load event (the
//! HTML, the embedded assets, the page's script and its charts), in ms.
//!
//! Usage: `bench_ui_browser URL TIMES`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

/// The navigation's time to the end of its load event, from the Navigation Timing API.
const LOAD_MS: &str = "const n = performance.getEntriesByType('navigation')[0]; \
     return n.loadEventEnd - n.startTime;";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(times)) = (args.next(), args.next()) else {
        return Err("usage: bench_ui_browser URL TIMES".into());
    };
    let times: usize = times.parse().map_err(|e| format!("TIMES `{times}`: {e}"))?;
    let b = common::Browser::start().await;
    let mut ms = Vec::with_capacity(times);
    for _ in 0..times {
        b.client
            .goto(&url)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        // the load event has ended when goto returns; its end time is set just after
        let mut t = 0.0;
        for _ in 0..50 {
            t = b
                .client
                .execute(LOAD_MS, vec![])
                .await
                .map_err(|e| e.to_string())?
                .as_f64()
                .unwrap_or(0.0);
            if t > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if t <= 0.0 {
            return Err(format!(
                "{url}: the load event had not ended 1 s after the page loaded"
            ));
        }
        ms.push(t);
    }
    let list: Vec<String> = ms.iter().map(|m| format!("{m:.1}")).collect();
    println!("{{\"ms\": [{}]}}", list.join(", "));
    b.client.clone().close().await.map_err(|e| e.to_string())?;
    Ok(())
}
