//! Tests of `kiln serve` as a client meets it: the real binary on a free loopback port, raw
//! HTTP over std::net, answers checked against `kiln predict`, errors, /metrics, SIGTERM,
//! and its limits (slow and idle clients, a connection flood, a stuck client at shutdown)
//! with short timeouts so that each test ends in seconds.

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
    spawn(kiln(), extra)
}

/// `kiln serve` under an open-file limit of `fds` (`ulimit -n` in a shell that then
/// execs kiln, so the pid is kiln's).
fn start_with_fd_limit(fds: u32, extra: &[&str]) -> Server {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_kiln"));
    spawn(sh, extra)
}

fn spawn(command: Command, extra: &[&str]) -> Server {
    spawn_model(command, ship(), extra)
}

fn spawn_model(mut command: Command, model: &Path, extra: &[&str]) -> Server {
    let mut child = command
        .arg("serve")
        .arg("--model")
        .arg(model)
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
/// Bounded in time: a server that stops answering fails the test rather than hanging it.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_typed(addr, method, path, "application/json", body)
}

/// [`http`] with a given Content-Type.
fn http_typed(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
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
    let server = start(&["--sessions", "3", "--max-batch", "20000"]);
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
    // 100 times the rows in one request (~300 kB: parsed on the blocking pool)
    let many: Vec<Value> = (0..100)
        .flat_map(|_| rows.iter().map(|r| json!(r)))
        .collect();
    let (status, v) = post(addr, &json!({ "instances": many }).to_string());
    assert_eq!(status, 200);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 100 * rows.len());
    for (i, p) in preds.iter().enumerate() {
        check(
            p,
            &expected[i % rows.len()],
            &format!("row {i} of the large request"),
        );
    }
    let (status, body) = http(addr, "GET", "/readyz", b"");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"], json!(3));
    assert_eq!(v["available"], json!(3), "every session back in the pool");
}

/// The value of the sample `name{labels}` in a Prometheus / OpenMetrics text (labels in
/// any order; 0 when absent, as for a counter never incremented).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, mut got) = match series.split_once('{') {
                Some((n, rest)) => (
                    n,
                    rest.strip_suffix('}')?
                        .split(',')
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                None => (series, Vec::new()),
            };
            got.sort();
            (n == name && got == want).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let v = sample(text, name, labels);
    assert!(v >= 0.0 && v.fract() == 0.0, "{name}: {v}");
    v as u64
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
        let code = code.to_string();
        metric(
            &text,
            "kiln_serve_requests_total",
            &[("route", route), ("status", &code)],
        )
    };
    assert_eq!(req("/v1/predict", 200), 1, "{text}");
    assert_eq!(req("/v1/predict", 400), 1, "{text}");
    assert_eq!(req("/v1/predict", 422), 6, "{text}");
    assert_eq!(req("/v1/predict", 413), 2, "{text}");
    assert_eq!(req("/v1/predict", 405), 1, "{text}");
    assert_eq!(req("/healthz", 200), 9, "{text}");
    assert_eq!(req("unmatched", 404), 1, "{text}");
    let err = |kind: &str| metric(&text, "kiln_serve_errors_total", &[("kind", kind)]);
    assert_eq!(err("malformed_json"), 1, "{text}");
    assert_eq!(err("invalid_input"), 6, "{text}");
    assert_eq!(err("too_large"), 2, "{text}");
    assert_eq!(
        metric(&text, "kiln_serve_rows_predicted_total", &[]),
        1,
        "{text}"
    );
    // 1 good + 9 bad + the GET (405) above
    let predict = [("route", "/v1/predict")];
    assert_eq!(
        metric(&text, "kiln_serve_request_duration_seconds_count", &predict),
        11,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kiln_serve_request_duration_seconds_bucket",
            &[("route", "/v1/predict"), ("le", "+Inf")]
        ),
        11,
        "{text}"
    );
    // cumulative buckets: none above +Inf, none decreasing
    let buckets: Vec<u64> = ["0.001", "0.01", "0.1", "1.0", "5.0", "+Inf"]
        .iter()
        .map(|le| {
            metric(
                &text,
                "kiln_serve_request_duration_seconds_bucket",
                &[("route", "/v1/predict"), ("le", le)],
            )
        })
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(metric(&text, "kiln_serve_sessions", &[]), 2, "{text}");
    assert_eq!(
        metric(&text, "kiln_serve_sessions_available", &[]),
        2,
        "{text}"
    );
    // this /metrics request's own connection (and perhaps the previous one's, closing)
    let open = metric(&text, "kiln_serve_connections_open", &[]);
    assert!((1..=2).contains(&open), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
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

/// How a client's connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server closed it (EOF or reset) after this long, having sent these bytes.
    Closed(Duration, String),
    /// Still open when the client gave up.
    Open,
}

/// Sends `head` at once, then `drip` one byte every `every` (cycling), until the server
/// closes the connection or `give_up` passes.
fn drip(addr: &str, head: &[u8], drip: &[u8], every: Duration, give_up: Duration) -> End {
    let mut s =
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(every)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let closed = |got: &[u8]| End::Closed(started.elapsed(), String::from_utf8_lossy(got).into());
    if s.write_all(head).is_err() {
        return closed(&got);
    }
    let mut k = 0;
    while started.elapsed() < give_up {
        if !drip.is_empty() {
            if s.write_all(&drip[k % drip.len()..][..1]).is_err() {
                // what the server said before it closed
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                got.extend_from_slice(&rest);
                return closed(&got);
            }
            k += 1;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return closed(&got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return closed(&got),
        }
    }
    End::Open
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn slow_and_idle_clients_are_cut_at_their_timeouts() {
    let server = start(&[
        "--header-timeout-ms",
        "4000",
        "--idle-timeout-ms",
        "1000",
        "--body-timeout-ms",
        "1000",
    ]);
    let addr = server.addr.as_str();
    let tick = Duration::from_millis(200);
    let give_up = Duration::from_secs(15);
    let (slowloris, silent, keep_alive, slow_body) = std::thread::scope(|s| {
        // a head that never ends, a byte every 200 ms: under the idle timeout each time,
        // so only the header timeout (4 s) cuts it
        let slowloris = s.spawn(|| {
            drip(
                addr,
                b"GET /healthz HTTP/1.1\r\nX-Slow: ",
                b"a",
                tick,
                give_up,
            )
        });
        // connects and says nothing: the idle timeout (1 s)
        let silent = s.spawn(|| drip(addr, b"", b"", tick, give_up));
        // one request on a keep-alive connection, then silence: the idle timeout again
        let keep_alive = s.spawn(|| {
            let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            drip(addr, head.as_bytes(), b"", tick, give_up)
        });
        // a body of 100 bytes, one every 200 ms: the body timeout (1 s), answered 408
        let slow_body = s.spawn(|| {
            let head = format!(
                "POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            );
            drip(addr, head.as_bytes(), b" ", tick, give_up)
        });
        (
            slowloris.join().unwrap(),
            silent.join().unwrap(),
            keep_alive.join().unwrap(),
            slow_body.join().unwrap(),
        )
    });
    // Each one is cut by its own limit: not before it, and well before the next one
    // (timers, so only a heavily loaded machine adds to the times).
    let End::Closed(t, got) = slowloris else {
        panic!("slowloris still connected after {give_up:?}")
    };
    assert!((3.8..9.0).contains(&secs(t)), "slowloris cut after {t:?}");
    assert_eq!(got, "", "no answer to an incomplete head");
    let End::Closed(t, got) = silent else {
        panic!("silent connection still open")
    };
    assert!(
        (0.9..3.5).contains(&secs(t)),
        "silent connection cut after {t:?}"
    );
    assert_eq!(got, "");
    let End::Closed(t, got) = keep_alive else {
        panic!("idle keep-alive connection still open")
    };
    assert!(
        (0.9..3.5).contains(&secs(t)),
        "idle keep-alive cut after {t:?}"
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    let End::Closed(t, got) = slow_body else {
        panic!("slow body still connected")
    };
    assert!((0.9..3.5).contains(&secs(t)), "slow body cut after {t:?}");
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(
        got.contains("did not arrive within 1000 ms (--body-timeout-ms)"),
        "{got:?}"
    );

    // the server is fine, and says what it cut
    assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
    let (_, text) = http(addr, "GET", "/metrics", b"");
    let closed = |kind: &str| {
        metric(
            &text,
            "kiln_serve_connections_closed_total",
            &[("kind", kind)],
        )
    };
    assert_eq!(closed("header_timeout"), 1, "{text}");
    assert_eq!(closed("idle_timeout"), 2, "{text}");
    assert_eq!(
        metric(
            &text,
            "kiln_serve_errors_total",
            &[("kind", "body_timeout")]
        ),
        1,
        "{text}"
    );
}

#[test]
fn a_connection_flood_is_capped_and_the_probes_still_answer() {
    // As in the report: 256 descriptors, 300 idle connections. kiln fits its cap to the
    // limit (256 - 64 kept - 32 over-limit answers = 160), refuses the rest, and keeps
    // answering /healthz and /readyz on connections beyond the cap.
    let server = start_with_fd_limit(256, &["--idle-timeout-ms", "3000"]);
    let addr = server.addr.as_str();
    let started = Instant::now();
    let sock = addr.parse().unwrap();
    let flood: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect_timeout(&sock, Duration::from_secs(10)).unwrap())
        .collect();
    // past the over-limit head timeout (1 s) of the refused ones, within the idle timeout
    // (3 s) of the accepted ones
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..5 {
        let (status, body) = http(addr, "GET", "/healthz", b"");
        assert_eq!(status, 200, "{body}");
        let (status, body) = http(addr, "GET", "/readyz", b"");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"ready\""), "{body}");
    }
    // answered while the flood held the cap (its idle timeout is 3 s), not after it left
    let probed = started.elapsed();
    assert!(
        probed < Duration::from_millis(2900),
        "the probes were answered only {probed:?} after the flood began"
    );
    let (status, v) = post(addr, r#"{"instances": [[5.1, 3.5, 1.4, 0.2]]}"#);
    assert_eq!(status, 503, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("160 connections open, its limit (--max-connections)"),
        "{msg}"
    );
    // The accepted 160 are cut by the idle timeout, the rest were closed already, none
    // answered; then the server has room again.
    let (mut answered, mut open) = (0, 0);
    for mut s in flood {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => answered += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                open += 1
            }
            Err(_) => {} // reset
        }
    }
    assert_eq!(
        (answered, open),
        (0, 0),
        "flood connections answered / still open"
    );
    let (status, v) = post(addr, r#"{"instances": [[5.1, 3.5, 1.4, 0.2]]}"#);
    assert_eq!(status, 200, "{v}");
    let (_, text) = http(addr, "GET", "/metrics", b"");
    assert_eq!(
        metric(
            &text,
            "kiln_serve_connections_closed_total",
            &[("kind", "idle_timeout")]
        ),
        160,
        "{text}"
    );
    // beyond the cap: 140 of the flood, the 10 probes and the 503 above
    assert_eq!(
        metric(&text, "kiln_serve_connections_over_limit_total", &[]),
        151,
        "{text}"
    );
    // the probes beyond the cap are counted like any other
    let probes = |route: &str| {
        metric(
            &text,
            "kiln_serve_requests_total",
            &[("route", route), ("status", "200")],
        )
    };
    assert_eq!((probes("/healthz"), probes("/readyz")), (5, 5), "{text}");
}

#[test]
fn sigterm_with_a_stuck_client_exits_within_the_deadline() {
    let mut server = start(&[
        "--shutdown-timeout-ms",
        "1000",
        "--body-timeout-ms",
        "60000",
        "--idle-timeout-ms",
        "60000",
    ]);
    let addr = server.addr.clone();
    // a request whose body stops after 10 of its 1000 bytes
    let mut stuck = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"rows\": ["
    );
    stuck.write_all(head.as_bytes()).unwrap();
    // an idle keep-alive connection too: closed at once by the shutdown
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(idle.read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.child.id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with --shutdown-timeout-ms 1000"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    // it waited for the stuck request up to the deadline, not longer
    assert!(
        (0.9..5.0).contains(&secs(took)),
        "exited {took:?} after SIGTERM"
    );
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(idle.read(&mut buf), Ok(0) | Err(_)),
        "idle connection closed"
    );
    assert!(TcpStream::connect(&addr).is_err(), "no longer listening");
}

#[test]
fn out_of_range_limits_are_usage_errors() {
    for (flag, value, phrase) in [
        (
            "--sessions",
            "99999999999999",
            "99999999999999 is not in 1..=256",
        ),
        ("--sessions", "0", "0 is not in 1..=256"),
        ("--max-connections", "0", "0 is not in 1..=1000000"),
        ("--idle-timeout-ms", "0", "0 is not in 1..=3600000"),
        (
            "--max-body",
            "2000000000",
            "2000000000 is not in 1..=1073741824",
        ),
    ] {
        let out = kiln()
            .args(["serve", "--model", "nowhere", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(phrase),
            "{flag} {value}: {err}"
        );
    }
    let help = kiln().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--header-timeout-ms",
        "--body-timeout-ms",
        "--idle-timeout-ms",
        "--max-connections",
        "--shutdown-timeout-ms",
        "--sessions",
    ] {
        assert!(help.contains(flag), "{flag} not in\n{help}");
    }
    assert!(help.contains("[default: 512]"), "{help}");
}

/// A CNN trained on the image-folder fixture and deployed, once per test process; returns
/// the deploy folder and the training folder (kiln's reference model).
fn image_ship() -> &'static (PathBuf, PathBuf) {
    static SHIP: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SHIP.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-image-tests");
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let pipe = dir.join("images.toml");
        std::fs::write(
            &pipe,
            common::image_pipeline(&root().join("fixtures/images/digits")),
        )
        .unwrap();
        let runs = dir.join("runs");
        ok(kiln().arg("run").arg(&pipe).arg("--runs-dir").arg(&runs));
        (
            runs.join("images/latest/ship"),
            runs.join("images/latest/train"),
        )
    })
}

/// `kiln serve` takes images for an image model — base64 in JSON (a `data:` URL too) and
/// multipart uploads — and answers as kiln's reference predicts the same decoded,
/// preprocessed pixels (a grey and an RGB file of another size); bad images, bad base64,
/// a bad multipart body, and images sent to a table model are each a clear 4xx.
#[test]
fn image_bodies_match_the_reference() {
    use base64::Engine as _;
    let (ship, train) = image_ship();
    let digits = root().join("fixtures/images/digits");
    let files: Vec<PathBuf> = ["0", "7"]
        .iter()
        .map(|c| {
            let mut f: Vec<PathBuf> = std::fs::read_dir(digits.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            f.sort();
            f.pop().unwrap()
        })
        .collect();
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    // the reference: the same decode, the schema's preprocessing, kiln's forward pass
    let schema: kiln_core::Schema =
        serde_json::from_str(&std::fs::read_to_string(ship.join("schema.json")).unwrap()).unwrap();
    let mut model = kiln_core::NativeModel::load(train).unwrap();
    let mut values = Vec::new();
    for f in &files {
        values.extend(kiln_preprocess::images::read_image(f, [8, 8], 1).unwrap());
    }
    let features = schema
        .features(&kiln_core::Rows {
            n_rows: 2,
            values,
            text: vec![],
        })
        .unwrap();
    let want = kiln_core::Predictor::predict(&mut model, &features, 2).unwrap();
    let check_images = |v: &Value, what: &str| {
        let preds = v["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {v}"));
        assert_eq!(preds.len(), 2, "{what}: {v}");
        for (i, p) in preds.iter().enumerate() {
            let c = want.argmax()[i] as usize;
            assert_eq!(p["label"], json!(schema.class_labels[c]), "{what}: {p}");
            for (j, class) in schema.class_labels.iter().enumerate() {
                let got = p["probabilities"][class].as_f64().unwrap();
                let w = f64::from(want.probabilities[i * schema.class_labels.len() + j]);
                assert!((got - w).abs() < 1e-5, "{what} {class}: {got} vs {w}");
            }
        }
    };
    let server = spawn_model(kiln(), ship, &[]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let body =
        json!({"images": [b64(&bytes[0]), format!("data:image/png;base64,{}", b64(&bytes[1]))]});
    let (status, v) = post(&server.addr, &body.to_string());
    assert_eq!(status, 200, "{v}");
    check_images(&v, "base64");

    let boundary = "kiln-test-boundary-7d1f";
    let mut multipart = Vec::new();
    for (i, (f, b)) in files.iter().zip(&bytes).enumerate() {
        multipart.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image{i}\"; filename=\"{}\"\r\nContent-Type: image/png\r\n\r\n",
                f.file_name().unwrap().to_string_lossy()
            )
            .as_bytes(),
        );
        multipart.extend_from_slice(b);
        multipart.extend_from_slice(b"\r\n");
    }
    multipart.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let (status, text) = http_typed(&server.addr, "POST", "/v1/predict", &ct, &multipart);
    assert_eq!(status, 200, "{text}");
    check_images(&serde_json::from_str(&text).unwrap(), "multipart");

    // bad inputs: each a 4xx naming what is wrong
    let truncated = b64(&bytes[0][..bytes[0].len() / 2]);
    for (body, code, says) in [
        (
            json!({"images": [b64(&bytes[0]), "%%%"]}).to_string(),
            422,
            "images[1]: not base64",
        ),
        (
            json!({"images": [truncated]}).to_string(),
            422,
            "images[0]: not a readable image",
        ),
        (
            json!({"images": [b64(b"plain text, not a picture")]}).to_string(),
            422,
            "images[0]: not a readable image",
        ),
        (
            json!({"images": [7]}).to_string(),
            422,
            "images[0]: expected a base64 string, got a number",
        ),
        (
            json!({"images": "x"}).to_string(),
            422,
            "`images` must be an array",
        ),
        (
            json!({"images": [], "rows": []}).to_string(),
            422,
            "give `images` alone",
        ),
    ] {
        let (status, v) = post(&server.addr, &body);
        assert_eq!(status, code, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let (status, text) = http_typed(
        &server.addr,
        "POST",
        "/v1/predict",
        &ct,
        b"--kiln-test-boundary-7d1f\r\nno headers end here",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed multipart body"), "{text}");
    let (status, text) = http_typed(
        &server.addr,
        "POST",
        "/v1/predict",
        "multipart/form-data",
        b"x",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("without a usable boundary"), "{text}");
    // the server still answers
    let (status, v) = post(&server.addr, &body.to_string());
    assert_eq!(status, 200, "{v}");
    drop(server);

    // a table model refuses images
    let iris = start(&[]);
    let (status, v) = post(&iris.addr, &json!({"images": [b64(&bytes[0])]}).to_string());
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not trained on images"),
        "{v}"
    );
}
