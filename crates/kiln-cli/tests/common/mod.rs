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
