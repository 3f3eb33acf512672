//! What the browser tests share: the kiln ui server on a free loopback port, and headless
//! Chromium driven through ChromeDriver (Debian's `chromium` and `chromium-driver`,
//! which `cargo xtask test` installs; `KILN_CHROMIUM` / `KILN_CHROMEDRIVER` point
//! elsewhere).

#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program from `env`, else the first of `names` found in /usr/bin or on PATH.
fn program(env: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .collect();
    for n in names {
        for d in &dirs {
            let p = d.join(n);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "kiln ui's browser tests need headless Chromium and ChromeDriver, and {} was not found: \
         run the tests with `cargo xtask test`, which installs Debian's `chromium` and \
         `chromium-driver` packages (or `apt-get install chromium chromium-driver`), or set {env} \
         to the program",
        names.join(" / ")
    );
}

/// kiln ui serving `runs` on a free loopback port, in the background of the test's
/// runtime.
pub async fn start_ui(runs: &Path) -> SocketAddr {
    let server = kiln_ui::Server::bind(kiln_ui::Options {
        runs_dir: runs.to_path_buf(),
        addr: "127.0.0.1:0".parse().unwrap(),
        allow_hosts: Vec::new(),
    })
    .await
    .unwrap();
    let addr = server.addr();
    tokio::spawn(server.run());
    addr
}

/// ChromeDriver and a headless Chromium session; the driver is killed when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts ChromeDriver on a free port and opens a headless Chromium session.
    pub async fn start() -> Browser {
        let chromium = program("KILN_CHROMIUM", &["chromium", "chromium-browser"]);
        let chromedriver = program("KILN_CHROMEDRIVER", &["chromedriver"]);
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port} within 20 s",
                chromedriver.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--window-size=1360,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "opening a session of {} through {}: {e}",
                    chromium.display(),
                    chromedriver.display()
                )
            });
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of the first element matching `css`, waiting up to 10 s for it.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"));
        self.texts(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("`{css}` went away"))
    }

    /// The texts of every element matching `css`, read in one script so that a page
    /// updating itself (the live view) cannot leave a stale element between the reads.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        self.query(css, "e.innerText.trim()").await
    }

    /// The values of attribute `attr` of every element matching `css` (one script, as
    /// `texts`).
    pub async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        self.query(
            css,
            &format!("e.getAttribute({}) || ''", serde_json::json!(attr)),
        )
        .await
    }

    /// `value` (a JavaScript expression of `e`) for every element matching `css`.
    async fn query(&self, css: &str, value: &str) -> Vec<String> {
        let script = format!(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => {value});"
        );
        let v = self
            .client
            .execute(&script, vec![serde_json::json!(css)])
            .await
            .unwrap_or_else(|e| panic!("reading `{css}`: {e}"));
        serde_json::from_value(v).unwrap_or_else(|e| panic!("reading `{css}`: {e}"))
    }

    /// Saves a screenshot of the page as `name` under `$KILN_UI_SCREENSHOTS`, when set
    /// (the README's pictures are made this way).
    pub async fn screenshot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("KILN_UI_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(Path::new(&dir).join(name), png).unwrap();
        }
    }
}
