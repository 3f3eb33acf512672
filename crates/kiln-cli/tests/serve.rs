//! Tests of `kiln serve` as a client meets it: the real binary on a free port, raw HTTP
//! over std::net, answers checked against `kiln predict`, errors, /metrics and SIGTERM.

mod common;

use common::{kiln, ok, root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The iris pipeline trained and deployed once per test process by this build, into a
/// folder of its own (earlier processes' folders are removed first, so no test ever
/// serves what an older build wrote), returning the deploy folder.
fn ship() -> &'static Path {
    static SHIP: OnceLock<PathBuf> = OnceLock::new();
    SHIP.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-tests");
        let _ = std::fs::remove_dir_all(&base);
        let runs = base.join(std::process::id().to_string());
        ok(kiln()
            .arg("run")
            .arg(root().join("pipelines/iris.toml"))
            .arg("--runs-dir")
            .arg(&runs));
        runs.join("iris/latest/ship")
    })
}

/// A running `kiln serve`, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = kiln()
        .arg("serve")
        .arg("--model")
        .arg(ship())
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server {
        child,
        addr: String::new(),
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    server.addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
        .to_string();
    server
}

/// One HTTP/1.1 request (Connection: close); returns the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {text:?}"));
    (status, body.to_string())
}

fn post(addr: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, "POST", "/v1/predict", body.as_bytes());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, v)
}

const COLS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

/// The iris rows (raw values) and `kiln predict`'s labels and probabilities for them.
type Expected = (Vec<[f64; 4]>, Vec<(String, [f64; 3])>);

fn iris_and_kiln_predict() -> Expected {
    let iris = root().join("fixtures/iris.csv");
    let rows: Vec<[f64; 4]> = std::fs::read_to_string(&iris)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<f64> = l.split(',').take(4).map(|x| x.parse().unwrap()).collect();
            [c[0], c[1], c[2], c[3]]
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds.csv");
    ok(kiln()
        .args(["predict", "--model"])
        .arg(ship())
        .arg("--input")
        .arg(&iris)
        .arg("--output")
        .arg(&preds));
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("prediction,p_setosa,p_versicolor,p_virginica")
    );
    let expected = lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let p: Vec<f64> = c[1..].iter().map(|x| x.parse().unwrap()).collect();
            (c[0].to_string(), [p[0], p[1], p[2]])
        })
        .collect::<Vec<_>>();
    assert_eq!(expected.len(), rows.len());
    (rows, expected)
}

fn check(pred: &Value, want: &(String, [f64; 3]), what: &str) {
    assert_eq!(pred["label"], json!(want.0), "{what}: {pred}");
    for (j, class) in ["setosa", "versicolor", "virginica"].iter().enumerate() {
        let p = pred["probabilities"][class]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: {pred}"));
        assert!(
            (p - want.1[j]).abs() < 1e-5,
            "{what} {class}: {p} vs {}",
            want.1[j]
        );
    }
}

#[test]
fn concurrent_requests_match_kiln_predict() {
    let (rows, expected) = iris_and_kiln_predict();
    let server = start(&["--sessions", "3"]);
    let addr = server.addr.as_str();
    let (rows, expected) = (&rows, &expected);
    std::thread::scope(|s| {
        for t in 0..8usize {
            s.spawn(move || {
                for k in 0..6usize {
                    // each request a different slice of rows, alternating the two formats
                    let start = (t * 17 + k * 23) % rows.len();
                    let idx: Vec<usize> = (start..start + 1 + (t + k) % 9)
                        .map(|i| i % rows.len())
                        .collect();
                    let body = if k % 2 == 0 {
                        let objs: Vec<Value> = idx
                            .iter()
                            .map(|&i| {
                                let r = rows[i];
                                json!({COLS[3]: r[3], COLS[0]: r[0], COLS[2]: r[2], COLS[1]: r[1]})
                            })
                            .collect();
                        json!({ "rows": objs })
                    } else {
                        let arrs: Vec<Value> = idx.iter().map(|&i| json!(rows[i])).collect();
                        json!({ "instances": arrs })
                    };
                    let (status, v) = post(addr, &body.to_string());
                    assert_eq!(status, 200, "{v}");
                    let preds = v["predictions"].as_array().unwrap();
                    assert_eq!(preds.len(), idx.len());
                    for (p, &i) in preds.iter().zip(&idx) {
                        check(p, &expected[i], &format!("thread {t} request {k} row {i}"));
                    }
                }
            });
        }
    });
    // all 150 rows in one request
    let all: Vec<Value> = rows.iter().map(|r| json!(r)).collect();
    let (status, v) = post(addr, &json!({ "instances": all }).to_string());
    assert_eq!(status, 200);
    for (i, p) in v["predictions"].as_array().unwrap().iter().enumerate() {
        check(p, &expected[i], &format!("row {i}"));
    }
    let (status, body) = http(addr, "GET", "/readyz", b"");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"], json!(3));
    assert_eq!(v["available"], json!(3), "every session back in the pool");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn bad_requests_get_json_4xx_and_are_counted() {
    let server = start(&["--max-body", "2000", "--max-batch", "5"]);
    let addr = server.addr.as_str();
    let good = r#"{"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}"#;
    let (status, v) = post(addr, good);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["predictions"][0]["label"], json!("setosa"));

    let cases: [(&str, u16, &str); 9] = [
        (r#"{"rows": [{"sepal_length": 5.1,"#, 400, "malformed JSON"),
        (
            r#"{"instances": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 1.4]]}"#,
            422,
            "instances[1] has 3 values but the model takes 4",
        ),
        (
            r#"{"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_widht": 0.2}]}"#,
            422,
            "rows[0]: unknown column `petal_widht` (did you mean `petal_width`?)",
        ),
        (
            r#"{"rows": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}]}"#,
            422,
            "rows[0]: missing column `petal_width`",
        ),
        (
            r#"{"instances": [[5.1, 3.5, 1.4, 0.2], [5.1, null, 1.4, 0.2]]}"#,
            422,
            "instances[1][1] (column `sepal_width`) is null",
        ),
        (
            r#"{"instances": [[5.1, 3.5, "NaN", 0.2]]}"#,
            422,
            "instances[0][2] (column `petal_length`) is the string \"NaN\"",
        ),
        (
            r#"{"rows": [{"sepal_length": 1e39, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]}"#,
            422,
            "rows[0] column `sepal_length` is 1e+39, not finite",
        ),
        (
            r#"{"instances": [[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}"#,
            413,
            "6 rows exceed the batch limit of 5",
        ),
        ("", 413, "larger than 2000 bytes (--max-body)"),
    ];
    let big = format!(r#"{{"instances": [{}]}}"#, vec!["[1,2,3,4]"; 400].join(","));
    assert!(big.len() > 2000);
    for (body, want_status, phrase) in cases {
        let body = if body.is_empty() { big.as_str() } else { body };
        let (status, v) = post(addr, body);
        assert_eq!(status, want_status, "{body}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(msg.contains(phrase), "{msg:?} lacks {phrase:?}");
        let (status, _) = http(addr, "GET", "/healthz", b"");
        assert_eq!(status, 200, "the server stays up after {body}");
    }
    // an unknown route and a wrong method are plain HTTP errors, counted too
    assert_eq!(http(addr, "GET", "/nope", b"").0, 404);
    assert_eq!(http(addr, "GET", "/v1/predict", b"").0, 405);

    let (status, text) = http(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let req = |route: &str, code: u16| {
        metric(
            &text,
            &format!("kiln_serve_requests_total{{route=\"{route}\",status=\"{code}\"}}"),
        )
    };
    assert_eq!(req("/v1/predict", 200), 1, "{text}");
    assert_eq!(req("/v1/predict", 400), 1, "{text}");
    assert_eq!(req("/v1/predict", 422), 6, "{text}");
    assert_eq!(req("/v1/predict", 413), 2, "{text}");
    assert_eq!(req("/v1/predict", 405), 1, "{text}");
    assert_eq!(req("/healthz", 200), 9, "{text}");
    assert_eq!(req("unmatched", 404), 1, "{text}");
    let err = |kind: &str| {
        metric(
            &text,
            &format!("kiln_serve_errors_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(err("malformed_json"), 1, "{text}");
    assert_eq!(err("invalid_input"), 6, "{text}");
    assert_eq!(err("too_large"), 2, "{text}");
    assert_eq!(
        metric(&text, "kiln_serve_rows_predicted_total"),
        1,
        "{text}"
    );
    // 1 good + 9 bad + the GET (405) above
    assert_eq!(
        metric(
            &text,
            "kiln_serve_request_duration_seconds_count{route=\"/v1/predict\"}"
        ),
        11,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kiln_serve_request_duration_seconds_bucket{route=\"/v1/predict\",le=\"+Inf\"}"
        ),
        11,
        "{text}"
    );
}

#[test]
fn sigterm_and_ctrl_c_stop_the_server_with_status_0() {
    for sig in ["-TERM", "-INT"] {
        let mut server = start(&[]);
        assert_eq!(http(&server.addr, "GET", "/healthz", b"").0, 200);
        let pid = server.child.id().to_string();
        let sent = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(sent.success());
        // generous: a loaded machine must not fail this; a server that ignores the
        // signal still does
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = server.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "still running 30 s after kill {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "kill {sig}: {status:?}");
    }
}
