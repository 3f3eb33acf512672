//! The bad-input corpus under `fixtures/bad/`, run against the `kiln` binary: pipeline
//! files (`pipelines/*.toml`, expected messages in `*.expected`), data files
//! (`data/cases.toml`), `kiln predict` inputs (`predict/cases.toml`) and HTTP requests to
//! `kiln serve` (`http/cases.toml`). Every case must give its expected outcome — exit
//! code or HTTP status, and a message naming the place, key, column or row — and none
//! may panic, abort or hang (every process runs under a deadline).

mod common;

use common::{kiln, ok, root};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest any one case may run.
const DEADLINE: Duration = Duration::from_secs(60);

fn bad() -> PathBuf {
    root().join("fixtures/bad")
}

/// Runs `c` to the end within [`DEADLINE`] (killed past it, which fails the case).
fn run_bounded(c: &mut Command, name: &str) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{name}: still running after {DEADLINE:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No panic, no abort: the process ended with an exit code of its own.
fn assert_clean(name: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "{name}: killed by a signal (abort?): {err}"
    );
    assert!(!err.contains("panicked"), "{name}: panicked: {err}");
    assert_ne!(
        out.status.code(),
        Some(101),
        "{name}: exit 101 (a panic): {err}"
    );
}

/// Checks an exit code and that stderr holds each of `want`; what differs, in words.
fn outcome(name: &str, out: &Output, exit: i32, want: &[String]) -> Result<(), String> {
    assert_clean(name, out);
    let err = String::from_utf8_lossy(&out.stderr).replace(&root().display().to_string(), "");
    let missing: Vec<&String> = want.iter().filter(|w| !err.contains(w.as_str())).collect();
    if out.status.code() != Some(exit) || !missing.is_empty() {
        return Err(format!(
            "{name}: exit {:?} (want {exit}), stderr lacks {missing:?}:\n{err}",
            out.status.code()
        ));
    }
    Ok(())
}

/// Fails with every case that did not give its outcome.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every invalid pipeline file is refused by `kiln validate` and `kiln run` with exit
/// code 2 and the located messages of its snapshot, and `run` writes nothing.
#[test]
fn pipeline_files() {
    let dir = bad().join("pipelines");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 50, "{} pipeline cases", names.len());
    let runs = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for file in &names {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read_to_string(file.with_extension("expected")).unwrap();
        // the messages' first lines (`file:line:col: message`), with the file as run here
        let want: Vec<String> = expected
            .lines()
            .filter(|l| l.starts_with("fixtures/bad/pipelines/"))
            .map(|l| format!("/{l}"))
            .collect();
        assert!(!want.is_empty(), "{name}: empty snapshot");
        for cmd in ["validate", "run"] {
            let mut c = kiln();
            c.arg(cmd).arg(file);
            if cmd == "run" {
                c.arg("--runs-dir").arg(runs.path().join("r"));
            }
            let out = run_bounded(&mut c, &name);
            failures.extend(outcome(&format!("{name} ({cmd})"), &out, 2, &want).err());
        }
    }
    report(failures);
    assert!(
        !runs.path().join("r").exists(),
        "an invalid file created runs/"
    );
}

/// One data-file case: a pipeline reading `file` (a preprocess stage, and a one-epoch
/// train stage after it) run by `kiln run`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataCase {
    name: String,
    /// The data file under fixtures/bad/data/ (`{file}` in `source`).
    file: String,
    /// The source table, e.g. `{ format = "csv", path = "{file}" }` (`{dir}` is the
    /// data folder, for IDX prefixes).
    #[serde(default = "csv_source")]
    source: String,
    /// The target column.
    #[serde(default = "default_target")]
    target: String,
    /// More keys of the preprocess stage, TOML lines.
    #[serde(default)]
    preprocess: String,
    /// More keys of the train stage, TOML lines.
    #[serde(default)]
    train: String,
    exit: i32,
    stderr: Vec<String>,
}

fn csv_source() -> String {
    r#"{ format = "csv", path = "{file}" }"#.into()
}

fn default_target() -> String {
    "y".into()
}

#[derive(Deserialize)]
struct Cases<T> {
    case: Vec<T>,
}

fn cases<T: for<'de> Deserialize<'de>>(family: &str) -> Vec<T> {
    let text = std::fs::read_to_string(bad().join(family).join("cases.toml")).unwrap();
    toml::from_str::<Cases<T>>(&text)
        .unwrap_or_else(|e| panic!("fixtures/bad/{family}/cases.toml: {e}"))
        .case
}

/// Every bad data file gives its exit code and a message naming the file and the row,
/// column or value at fault; a case with exit 0 must run through.
#[test]
fn data_files() {
    data_files_read("");
}

/// The data cases again with the preprocess stage streaming its table: every case that
/// can stream gives the in-memory outcome and messages.
#[test]
fn data_files_streamed() {
    data_files_read("load = \"stream\"");
}

/// Runs every data case with `load` added to its preprocess stage (a case whose source
/// cannot stream is skipped when `load` asks to stream).
fn data_files_read(load: &str) {
    let all: Vec<DataCase> = cases("data");
    assert!(all.len() >= 20, "{} data cases", all.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let mut streamed = 0;
    for c in &all {
        assert!(seen.insert(c.name.clone()), "two cases named {}", c.name);
        let data = bad().join("data").join(&c.file);
        assert!(data.exists(), "{}: no file {}", c.name, data.display());
        let slash = |p: &Path| p.display().to_string().replace('\\', "/");
        let source = c
            .source
            .replace("{file}", &slash(&data))
            .replace("{dir}", &slash(&bad().join("data")));
        let model = if c.train.contains("model") {
            ""
        } else {
            "model = { hidden = [4] }"
        };
        let pipeline = format!(
            "version = 1\nname = \"bad-data\"\nseed = 1\n[stages.data]\nuses = \"preprocess\"\nsource = {source}\ntarget = \"{}\"\nsplit = {{ valid = 0.25, test = 0.25 }}\n{}\n{load}\n[stages.train]\nuses = \"train\"\ninput = \"data\"\n{model}\nepochs = 1\n{}\n",
            c.target, c.preprocess, c.train
        );
        let file = tmp.path().join(format!("{}.toml", c.name));
        std::fs::write(&file, pipeline).unwrap();
        let out = run_bounded(
            kiln()
                .arg("run")
                .arg(&file)
                .arg("--runs-dir")
                .arg(tmp.path().join("runs")),
            &c.name,
        );
        if !load.is_empty() && String::from_utf8_lossy(&out.stderr).contains("cannot stream") {
            assert_clean(&c.name, &out);
            continue;
        }
        streamed += 1;
        failures.extend(outcome(&c.name, &out, c.exit, &c.stderr).err());
    }
    report(failures);
    assert!(streamed >= 20, "only {streamed} cases ran");
}

/// One `kiln predict` case.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictCase {
    name: String,
    /// The input under fixtures/bad/predict/ (copied to a scratch folder first).
    input: String,
    /// `--model`: `ship` (the iris bundle), or a path relative to the bundle's run
    /// folder, or `none` (a folder that does not exist), `empty` (an empty folder).
    #[serde(default = "ship")]
    model: String,
    /// `--output` in the scratch folder; `{input}` is the input itself, `{symlink}` and
    /// `{hardlink}` a link to it.
    #[serde(default = "preds_csv")]
    output: String,
    /// More arguments.
    #[serde(default)]
    args: Vec<String>,
    exit: i32,
    stderr: Vec<String>,
}

fn ship() -> String {
    "ship".into()
}

fn preds_csv() -> String {
    "preds.csv".into()
}

/// The iris pipeline trained and deployed by this test process; its run folder.
fn iris_run(runs: &Path) -> PathBuf {
    ok(kiln()
        .arg("run")
        .arg(root().join("pipelines/iris.toml"))
        .arg("--runs-dir")
        .arg(runs));
    runs.join("iris/latest")
}

/// Every bad `kiln predict` input or argument gives its exit code and message, and
/// nothing is written over the input.
#[test]
fn predict_inputs() {
    let all: Vec<PredictCase> = cases("predict");
    assert!(all.len() >= 20, "{} predict cases", all.len());
    let tmp = tempfile::tempdir().unwrap();
    let run = iris_run(&tmp.path().join("runs"));
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let mut failures = Vec::new();
    for c in &all {
        let scratch = tmp.path().join(&c.name);
        std::fs::create_dir_all(&scratch).unwrap();
        let src = bad().join("predict").join(&c.input);
        let input = scratch.join(&c.input);
        if src.exists() {
            std::fs::copy(&src, &input).unwrap();
        }
        let before = std::fs::read(&input).ok();
        let model = match c.model.as_str() {
            "none" => tmp.path().join("no-such-folder"),
            "empty" => tmp.path().join("empty"),
            m => run.join(m),
        };
        let output = match c.output.as_str() {
            "{input}" => input.clone(),
            "{symlink}" => {
                let link = scratch.join("link.csv");
                std::os::unix::fs::symlink(&input, &link).unwrap();
                link
            }
            "{hardlink}" => {
                let link = scratch.join("link.csv");
                std::fs::hard_link(&input, &link).unwrap();
                link
            }
            o => scratch.join(o),
        };
        let out = run_bounded(
            kiln()
                .args(["predict", "--model"])
                .arg(&model)
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&output)
                .args(&c.args),
            &c.name,
        );
        failures.extend(outcome(&c.name, &out, c.exit, &c.stderr).err());
        assert_eq!(
            std::fs::read(&input).ok(),
            before,
            "{}: the input changed",
            c.name
        );
    }
    report(failures);
}

/// One HTTP request to `kiln serve` on the iris bundle.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCase {
    name: String,
    #[serde(default = "post")]
    method: String,
    #[serde(default = "predict_path")]
    path: String,
    /// Header lines besides Host, Content-Length and Connection.
    #[serde(default = "json_type")]
    headers: Vec<String>,
    /// The body.
    #[serde(default)]
    body: String,
    /// Send this Content-Length instead of the body's.
    #[serde(default)]
    content_length: Option<String>,
    status: u16,
    /// The response body holds each of these.
    body_contains: Vec<String>,
}

fn post() -> String {
    "POST".into()
}

fn predict_path() -> String {
    "/v1/predict".into()
}

fn json_type() -> Vec<String> {
    vec!["Content-Type: application/json".into()]
}

/// One raw HTTP/1.1 exchange (Connection: close), bounded in time.
fn exchange(addr: &str, c: &HttpCase) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let length = c
        .content_length
        .clone()
        .unwrap_or_else(|| c.body.len().to_string());
    let mut req = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\n", c.method, c.path);
    for h in &c.headers {
        req += &format!("{h}\r\n");
    }
    req += &format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n{}",
        c.body
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{}: no HTTP status in {text:?}", c.name));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Every bad request gets its status and a JSON error naming the field, row or column;
/// the server answers /healthz after each.
#[test]
fn http_requests() {
    let all: Vec<HttpCase> = cases("http");
    assert!(all.len() >= 20, "{} http cases", all.len());
    let tmp = tempfile::tempdir().unwrap();
    let run = iris_run(&tmp.path().join("runs"));
    let mut child = kiln()
        .args(["serve", "--model"])
        .arg(run.join("ship"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--max-batch",
            "100",
            "--max-body",
            "65536",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let health = HttpCase {
        name: "healthz".into(),
        method: "GET".into(),
        path: "/healthz".into(),
        headers: vec![],
        body: String::new(),
        content_length: None,
        status: 200,
        body_contains: vec![],
    };
    let mut failures = Vec::new();
    for c in &all {
        let (status, body) = exchange(&addr, c);
        let missing: Vec<&String> = c
            .body_contains
            .iter()
            .filter(|w| !body.contains(w.as_str()))
            .collect();
        if status != c.status || !missing.is_empty() {
            failures.push(format!(
                "{}: status {status} (want {}), body {body:?} lacks {missing:?}",
                c.name, c.status
            ));
        }
        assert_eq!(
            exchange(&addr, &health).0,
            200,
            "{}: /healthz after it",
            c.name
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One `kiln init` case.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitCase {
    name: String,
    /// The table under fixtures/bad/init/.
    file: String,
    /// `--target` (default `y`).
    #[serde(default = "default_target")]
    target: String,
    exit: i32,
    /// What stdout (exit 0) or stderr must hold.
    out: Vec<String>,
    /// What the written pipeline file must hold (exit 0).
    #[serde(default)]
    file_has: Vec<String>,
}

/// `kiln init` on degenerate tables: a clear refusal naming the file, or a pipeline
/// file that validates and a summary naming what was dropped and why.
#[test]
fn init_tables() {
    let all: Vec<InitCase> = cases("init");
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for c in &all {
        let output = tmp.path().join(format!("{}.toml", c.name));
        let out = run_bounded(
            kiln()
                .arg("init")
                .arg(bad().join("init").join(&c.file))
                .args(["--target", &c.target, "--output"])
                .arg(&output),
            &c.name,
        );
        assert_clean(&c.name, &out);
        let said = String::from_utf8_lossy(if c.exit == 0 {
            &out.stdout
        } else {
            &out.stderr
        });
        let missing: Vec<&String> = c
            .out
            .iter()
            .filter(|w| !said.contains(w.as_str()))
            .collect();
        if out.status.code() != Some(c.exit) || !missing.is_empty() {
            failures.push(format!(
                "{}: exit {:?} (want {}), output lacks {missing:?}:\n{said}{}",
                c.name,
                out.status.code(),
                c.exit,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        if c.exit == 0 {
            let text = std::fs::read_to_string(&output).unwrap();
            for w in &c.file_has {
                if !text.contains(w.as_str()) {
                    failures.push(format!("{}: the file lacks {w}:\n{text}", c.name));
                }
            }
            let v = run_bounded(kiln().arg("validate").arg(&output), &c.name);
            if !v.status.success() {
                failures.push(format!(
                    "{}: the written file does not validate:\n{}",
                    c.name,
                    String::from_utf8_lossy(&v.stderr)
                ));
            }
        } else if output.exists() {
            failures.push(format!(
                "{}: a refused table still wrote {}",
                c.name,
                output.display()
            ));
        }
    }
    report(failures);
}
