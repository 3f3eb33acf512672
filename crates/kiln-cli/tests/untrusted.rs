//! Property tests of kiln's loaders of untrusted bytes: valid files (CSV tables, pipeline
//! files and `--set` values, IDX image files plain and gzipped, safetensors weights and
//! spec.json, Arrow IPC splits, deploy bundles) are mutated — bits flipped, cut short,
//! bytes inserted or removed, header words overwritten with extreme sizes, text tokens
//! replaced by hostile ones — and loaded. Each load must end in a value or an error:
//! never a panic, never longer than [`DEADLINE`], and never more heap than
//! [`heap_bound`] of the input's size while it runs (counted by a global allocator).
//!
//! The cases are drawn from a fixed seed so CI is reproducible; explore further with
//! `PROPTEST_RNG_SEED=<n> PROPTEST_CASES=<n> cargo test -p kiln-cli --test untrusted`.

mod common;

use common::{kiln, ok, root};
use kiln_core::{Activation, Dataset, ModelSpec, NativeModel, Predictor, Rows, Task, TensorStore};
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock, mpsc};
use std::time::Duration;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// One load at a time, so the heap counter sees only it.
static SERIAL: Mutex<()> = Mutex::new(());

/// Panics seen by the hook, on any thread (caught ones too).
static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// The longest one load may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// The most heap one load may hold beyond what was in use before it: 64 MiB of fixed
/// room (polars' and arrow's buffers, ONNX Runtime's wrappers) plus 64 bytes per input
/// byte. A header announcing a huge size that the file does not hold must not be
/// believed.
fn heap_bound(input: usize) -> usize {
    (64 << 20) + 64 * input
}

/// Runs one load under the deadline and heap bound; a panic fails the case.
fn bounded<T>(what: &str, input: usize, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (done, wait) = mpsc::channel::<()>();
    let name = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(DEADLINE) == Err(mpsc::RecvTimeoutError::Timeout) {
            eprintln!("{name}: still loading after {DEADLINE:?} (a hang)");
            std::process::exit(2);
        }
    });
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |i| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(i)
        }));
    });
    let panics = PANICS.load(Ordering::SeqCst);
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let grew = HEAP.peak_usage().saturating_sub(before);
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out.map_err(|p| {
        TestCaseError::fail(format!(
            "{what}: panicked: {}",
            kiln_core::panic_message(&p)
        ))
    })?;
    // stricter than the guarantee (a library's panic caught and reported is allowed):
    // none is seen at all, on any thread
    prop_assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "{}: a panic was caught inside the load",
        what
    );
    prop_assert!(
        grew <= heap_bound(input),
        "{what}: held {grew} bytes of heap for {input} bytes of input (bound {})",
        heap_bound(input)
    );
    Ok(out)
}

/// Test settings: the case count given, from a fixed seed unless `PROPTEST_RNG_SEED`
/// says otherwise.
fn settings(cases: u32) -> Config {
    let mut c = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x6b69_6c6e);
    }
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        c.cases = n;
    }
    c
}

/// Extreme values written over header words: zero, one, sign bits, the largest 32- and
/// 64-bit numbers and sizes just past them.
const WORDS: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
    4_611_686_018_427_387_905,
];

/// Tokens that break text formats or stand for values nobody bounded.
const TOKENS: [&str; 30] = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e400",
    "-1e400",
    "1e11",
    "9223372036854775807",
    "18446744073709551616",
    "4611686018427387905",
    "2000000000",
    "\"",
    "'",
    ",",
    ";",
    "\n",
    "\r\n",
    "\t",
    "\u{feff}",
    "\0",
    "é",
    "💥",
    "",
    "[",
    "]",
    "{",
    "}",
    "=",
];

/// One edit of a file.
#[derive(Debug, Clone)]
enum Edit {
    /// Flips one bit.
    Flip(Index, u8),
    /// Cuts the file short.
    Cut(Index),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes.
    Remove(Index, usize),
    /// Overwrites 1, 2, 4 or 8 bytes with an extreme number (little- or big-endian).
    Word(Index, u64, u8, bool),
    /// Replaces the token (run of letters, digits, `.`, `-`, `_`) at a place with
    /// another.
    Token(Index, &'static str),
    /// Repeats a stretch of bytes.
    Repeat(Index, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<Index>().prop_map(Edit::Cut),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        (
            any::<Index>(),
            prop::sample::select(&WORDS[..]),
            prop::sample::select(&[1u8, 2, 4, 8][..]),
            any::<bool>()
        )
            .prop_map(|(i, w, n, le)| Edit::Word(i, w, n, le)),
        (any::<Index>(), prop::sample::select(&TOKENS[..])).prop_map(|(i, t)| Edit::Token(i, t)),
        (any::<Index>(), 1usize..200, 2usize..50).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
    ]
}

/// One to four edits.
fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..5)
}

fn in_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+')
}

/// `bytes` with `edits` applied in order.
fn mutate(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let at = |i: &Index| if b.is_empty() { 0 } else { i.index(b.len()) };
        match e {
            Edit::Flip(i, bit) if !b.is_empty() => {
                let k = at(i);
                b[k] ^= 1 << bit;
            }
            Edit::Cut(i) => b.truncate(at(i)),
            Edit::Insert(i, x) => {
                let k = at(i);
                b.splice(k..k, x.iter().copied());
            }
            Edit::Remove(i, n) => {
                let k = at(i);
                let end = (k + n).min(b.len());
                b.drain(k..end);
            }
            Edit::Word(i, w, n, le) => {
                let k = at(i);
                let n = usize::from(*n);
                let word = if *le {
                    w.to_le_bytes()
                } else {
                    w.to_be_bytes()
                };
                let bytes = if *le { &word[..n] } else { &word[8 - n..] };
                for (j, x) in bytes.iter().enumerate() {
                    if let Some(slot) = b.get_mut(k + j) {
                        *slot = *x;
                    }
                }
            }
            Edit::Token(i, t) => {
                let k = at(i);
                let start = (0..k)
                    .rev()
                    .take_while(|&j| in_token(b[j]))
                    .last()
                    .unwrap_or(k);
                let end = (k..b.len()).find(|&j| !in_token(b[j])).unwrap_or(b.len());
                b.splice(start..end, t.bytes());
            }
            Edit::Repeat(i, n, times) => {
                let k = at(i);
                let end = (k + n).min(b.len());
                let chunk = b[k..end].to_vec();
                for _ in 1..*times {
                    b.splice(end..end, chunk.iter().copied());
                }
            }
            Edit::Flip(..) => {}
        }
    }
    b
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn preprocess_config(toml: &str) -> kiln_preprocess::Config {
    toml::from_str(toml).unwrap()
}

/// The CSV seeds and their preprocessing settings (`{path}` stands for the file).
fn csv_seeds() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (
            read(&root().join("fixtures/iris.csv")),
            r#"source = { format = "csv", path = "{path}" }
target = "species"
steps = [{ op = "standardize" }]
split = { valid = 0.2, test = 0.2, stratify = true }"#,
        ),
        (
            read(&root().join("fixtures/messy.csv")),
            r#"source = { format = "csv", path = "{path}", null_values = ["NA", ""] }
target = "label"
steps = [
  { op = "dedupe" },
  { op = "drop", columns = ["notes", "const"] },
  { op = "impute", strategy = "median", columns = ["age", "income"] },
  { op = "clip", lower_quantile = 0.05, upper_quantile = 0.95, columns = ["income"] },
  { op = "log1p", columns = ["income"] },
  { op = "standardize" },
  { op = "impute", strategy = "most_frequent", columns = ["color"] },
  { op = "one_hot", columns = ["color"], max_categories = 3 },
  { op = "hash_text", columns = ["review"], n_features = 8 },
]
split = { valid = 0.2, test = 0.2, stratify = true }"#,
        ),
    ]
}

proptest! {
    #![proptest_config(settings(128))]

    /// A mutated CSV table through the whole preprocessing stage.
    #[test]
    fn csv_tables(seed in 0usize..2, e in edits()) {
        let (valid, config) = &csv_seeds()[seed];
        let bytes = mutate(valid, &e);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        write(&path, &bytes);
        let config = preprocess_config(&config.replace("{path}", &path.display().to_string()));
        let out = dir.path().join("out");
        let r = bounded("csv", bytes.len(), || kiln_preprocess::run(&config, &out))?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
}

/// A temporary folder with `pipelines/` beside a link to the real `fixtures/`, so the
/// shipped pipelines' relative paths resolve.
fn pipeline_home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::os::unix::fs::symlink(root().join("fixtures"), dir.path().join("fixtures")).unwrap();
    dir
}

fn pipeline_seeds() -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    names.iter().map(|p| read(p)).collect()
}

/// Keys a `--set` may name.
const SET_KEYS: [&str; 10] = [
    "seed",
    "stages.train.epochs",
    "stages.train.batch_size",
    "stages.train.model.hidden",
    "stages.train.optimizer.lr",
    "stages.train.optimizer.weight_decay",
    "stages.data.split.valid",
    "stages.data.target",
    "stages.eval.gates.accuracy",
    "stages",
];

proptest! {
    #![proptest_config(settings(256))]

    /// A mutated pipeline file, read and validated.
    #[test]
    fn pipeline_files(seed in any::<Index>(), e in edits(), text in any::<bool>()) {
        let seeds = pipeline_seeds();
        let mut bytes = mutate(&seeds[seed.index(seeds.len())], &e);
        if text {
            // past the UTF-8 check, into the TOML parser and validation
            bytes = String::from_utf8_lossy(&bytes).into_owned().into_bytes();
        }
        let home = pipeline_home();
        let path = home.path().join("pipelines/p.toml");
        write(&path, &bytes);
        let r = bounded("pipeline", bytes.len(), || kiln_pipeline::load(&path, &[]))?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }

    /// A shipped pipeline with a hostile `--set` value.
    #[test]
    fn set_values(
        seed in any::<Index>(),
        key in prop::sample::select(&SET_KEYS[..]),
        value in prop::sample::select(&TOKENS[..]),
        suffix in prop::sample::select(&["", "]", "[1, 2]", "\"x\"", "{}", " # c"][..]),
    ) {
        let seeds = pipeline_seeds();
        let home = pipeline_home();
        let path = home.path().join("pipelines/p.toml");
        write(&path, &seeds[seed.index(seeds.len())]);
        let set = vec![format!("{key}={value}{suffix}")];
        let r = bounded("--set", set[0].len(), || kiln_pipeline::load(&path, &set))?;
        if let Err(e) = r {
            prop_assert!(e.to_string().contains("--set"), "{e}");
        }
    }
}

/// An IDX file: big-endian dimensions after the magic 00 00 08 <rank>, then the bytes.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Train and test IDX pairs of 4×4 images (20 and 10), labels 0–2.
fn idx_seeds() -> [(&'static str, Vec<u8>); 4] {
    let images = |n: u32| {
        idx(
            &[n, 4, 4],
            &(0..n * 16)
                .map(|i| (i * 37 % 256) as u8)
                .collect::<Vec<_>>(),
        )
    };
    let labels = |n: u32| idx(&[n], &(0..n).map(|i| (i % 3) as u8).collect::<Vec<_>>());
    [
        ("train-images-idx3-ubyte", images(20)),
        ("train-labels-idx1-ubyte", labels(20)),
        ("t10k-images-idx3-ubyte", images(10)),
        ("t10k-labels-idx1-ubyte", labels(10)),
    ]
}

proptest! {
    #![proptest_config(settings(128))]

    /// A mutated IDX file (plain or gzipped, before or after compression) through the
    /// preprocessing stage.
    #[test]
    fn idx_files(which in 0usize..4, gz in 0u8..3, e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let mut input = 0;
        for (k, (name, bytes)) in idx_seeds().iter().enumerate() {
            let bytes = match (k == which, gz) {
                (true, 0) => mutate(bytes, &e),
                (true, 1) => gzip(&mutate(bytes, &e)),
                (true, _) => mutate(&gzip(bytes), &e),
                (false, _) => bytes.clone(),
            };
            input += bytes.len();
            let name = if gz > 0 { format!("{name}.gz") } else { name.to_string() };
            write(&dir.path().join(name), &bytes);
        }
        let d = dir.path().display();
        let config = preprocess_config(&format!(
            "source = {{ format = \"idx\", train = \"{d}/train\", test = \"{d}/t10k\" }}\nsplit = {{ valid = 0.2 }}"
        ));
        let out = dir.path().join("out");
        let r = bounded("idx", input, || kiln_preprocess::run(&config, &out))?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
}

/// A model folder: spec.json and weights.safetensors of a 4 → 8 → 3 network.
fn model_seed() -> (Vec<u8>, Vec<u8>) {
    let spec = ModelSpec::mlp(4, &[8], Activation::Relu, Task::Classification, 3);
    let mut w = TensorStore::default();
    let values = |n: usize| (0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>();
    w.insert_f32("layers.0.weight", vec![4, 8], values(32));
    w.insert_f32("layers.0.bias", vec![8], values(8));
    w.insert_f32("layers.1.weight", vec![8, 3], values(24));
    w.insert_f32("layers.1.bias", vec![3], values(3));
    NativeModel::new(spec.clone(), w.clone()).unwrap();
    (
        serde_json::to_vec_pretty(&spec).unwrap(),
        w.to_bytes().unwrap(),
    )
}

proptest! {
    #![proptest_config(settings(256))]

    /// Mutated weights or spec.json, loaded as a model and run on two rows.
    #[test]
    fn model_folders(weights in any::<bool>(), e in edits()) {
        let (spec, w) = model_seed();
        let (spec, w) = if weights { (spec, mutate(&w, &e)) } else { (mutate(&spec, &e), w) };
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("spec.json"), &spec);
        write(&dir.path().join("weights.safetensors"), &w);
        let r = bounded("model", spec.len() + w.len(), || {
            let mut m = NativeModel::load(dir.path())?;
            let width = m.spec.input_dim;
            m.predict(&vec![0.5; 2 * width], 2)
        })?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }

    /// A mutated Arrow IPC split, read back as a dataset.
    #[test]
    fn arrow_splits(regression in any::<bool>(), e in edits()) {
        let rows = 12;
        let d = Dataset {
            feature_names: vec!["a".into(), "b".into(), "c".into()],
            target: "label".into(),
            features: (0..rows * 3).map(|i| i as f32 / 7.0).collect(),
            labels: if regression { vec![] } else { (0..rows).map(|i| (i % 3) as u32).collect() },
            values: if regression { (0..rows).map(|i| i as f32).collect() } else { vec![] },
        };
        let bytes = mutate(&d.to_ipc_bytes().unwrap(), &e);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.arrow");
        write(&path, &bytes);
        let r = bounded("arrow", bytes.len(), || Dataset::read_ipc(&path, "label"))?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
}

/// The iris pipeline's deploy folder, trained once per test process.
fn iris_bundle() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, ship) = DIR.get_or_init(|| {
        let runs = tempfile::tempdir().unwrap();
        ok(kiln()
            .arg("run")
            .arg(root().join("pipelines/iris.toml"))
            .arg("--runs-dir")
            .arg(runs.path()));
        let ship = runs.path().join("iris/latest/ship");
        (runs, ship)
    });
    ship
}

/// The bundle files a mutation may hit.
const BUNDLE_FILES: [&str; 4] = ["model.onnx", "schema.json", "bundle.json", "profile.json"];

proptest! {
    #![proptest_config(settings(256))]

    /// A deploy folder with one mutated file, opened and run on two raw rows through ONNX
    /// Runtime (what ONNX Runtime is given was checked by kiln first).
    #[test]
    fn deploy_bundles(which in 0usize..4, e in edits()) {
        let ship = iris_bundle();
        let dir = tempfile::tempdir().unwrap();
        let mut input = 0;
        for entry in std::fs::read_dir(ship).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                let mut bytes = read(&p);
                if name == BUNDLE_FILES[which] {
                    bytes = mutate(&bytes, &e);
                    input = bytes.len();
                }
                write(&dir.path().join(&name), &bytes);
            }
        }
        let r = bounded("bundle", input, || {
            let mut b = kiln_deploy::Bundle::open(dir.path())?;
            let width = b.schema.input_columns.len();
            let rows = Rows { n_rows: 2, values: vec![1.5; 2 * width], text: vec![] };
            let p = b.predict(&rows)?;
            Ok::<_, kiln_deploy::DeployError>((b.labels(&p), b.out_of_range(&rows)))
        })?;
        if let Err(e) = r {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }
}
