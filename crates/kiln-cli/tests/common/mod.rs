//! Helpers shared by the kiln-cli integration tests: the built `kiln` binary, the
//! workspace root, and running a command that must succeed.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `kiln` binary of this build.
pub fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The workspace root (pipelines/, fixtures/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `c`, failing the test with its stderr unless it exits with status 0.
pub fn ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `c` with its output captured and returns it, failing the test if it has not
/// exited within `seconds` (it is killed): a hang is a failure, not a stuck suite.
pub fn output_within(c: &mut Command, seconds: u64) -> Output {
    use std::process::Stdio;
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // drain the pipes on threads so a chatty child cannot block on a full pipe
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let read = |r: &mut dyn std::io::Read| {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    };
    let (stdout, stderr) = std::thread::scope(|s| {
        let o = s.spawn(|| read(&mut out));
        let e = s.spawn(|| read(&mut err));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("{c:?} did not finish within {seconds} s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (o.join().unwrap().unwrap(), e.join().unwrap().unwrap())
    });
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// A pipeline training a small CNN on the image folder `images` (8 x 8 grey) and
/// deploying it, with seed 4.
pub fn image_pipeline(images: &std::path::Path) -> String {
    format!(
        r#"version = 1
name = "images"
seed = 4
[stages.data]
uses = "preprocess"
source = {{ format = "images", path = "{}", image = [8, 8] }}
target = "label"
steps = [{{ op = "scale", by = 240.0 }}]
split = {{ valid = 0.2, test = 0.2, stratify = true }}
[stages.train]
uses = "train"
input = "data"
model = {{ hidden = [16], image = [1, 8, 8], conv = [{{ op = "conv2d", channels = 4, kernel = 3, padding = 1 }}, {{ op = "max_pool", kernel = 2 }}] }}
epochs = 30
batch_size = 16
[stages.ship]
uses = "deploy"
input = "train"
"#,
        images.display()
    )
}
