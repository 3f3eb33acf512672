//! The `kiln` binary: `run`, `validate` and `inspect` pipelines, `predict` with a
//! deployed model, `serve` it over HTTP, `gc` a runs folder. It owns the tracing
//! subscriber (`RUST_LOG`), the progress bars and the exit codes (0 ok, 1 a stage or gate
//! failed, 2 the pipeline file or the command line is invalid, 3 a cache lock was not
//! free within `--lock-timeout`).

mod predict;
mod progress;
mod serve;
mod ui;

/// The unit-test build counts heap (serve's request-body property test bounds it).
#[cfg(test)]
#[global_allocator]
static HEAP: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// The binary runs on mimalloc: with glibc's malloc, CNN training at two threads handed
/// its large activation buffers back to the kernel and faulted them in again every batch
/// (PyTorch's examples/mnist net: 452 samples/s at two threads against 485 at one; on
/// mimalloc 878; ARCHITECTURE.md, Decisions).
#[cfg(not(test))]
#[global_allocator]
static HEAP: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured call at a time in the unit tests.
#[cfg(test)]
static HEAP_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

use clap::{Parser, Subcommand};
use comfy_table::{Table as Grid, presets::UTF8_FULL_CONDENSED};
use std::path::PathBuf;
use std::process::ExitCode;

/// `kiln --version`: the version, the build identity (a hash of every library crate's
/// sources, Cargo.lock and the compiler: what the stage cache keys cover) and rustc.
fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{} (build {}, {})",
            env!("CARGO_PKG_VERSION"),
            kiln_pipeline::build_id(),
            kiln_pipeline::RUSTC_VERSION
        )
    })
}

#[derive(Parser)]
#[command(
    name = "kiln",
    version = version(),
    about = "dataset -> trained, compressed, evaluated, ONNX-deployed model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file.
    Run {
        /// The pipeline file (e.g. pipelines/mnist-mlp.toml).
        file: PathBuf,
        /// Override a value, e.g. --set stages.train.epochs=2 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Rerun every stage even when its output is cached.
        #[arg(long)]
        force: bool,
        /// Folder for runs and the stage cache.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Run only this stage (its inputs must be cached from an earlier run).
        #[arg(long, value_name = "ID", conflicts_with = "from")]
        only: Option<String>,
        /// Rerun this stage and everything downstream of it.
        #[arg(long, value_name = "ID")]
        from: Option<String>,
        /// Most seconds to wait for another run building the same stage (default: as
        /// long as it takes); past it kiln exits with code 3, naming that run.
        #[arg(long, value_name = "SECONDS")]
        lock_timeout: Option<f64>,
    },
    /// Remove what no run needs: abandoned partial folders and cache entries no run
    /// links to.
    Gc {
        /// The runs folder.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Only what is at least this many days old (default 7; 0 = everything).
        #[arg(long, default_value_t = 7.0)]
        older_than_days: f64,
        /// Also remove unlinked entries, oldest first, until the cache holds at most
        /// this many MiB.
        #[arg(long, value_name = "MIB")]
        max_size_mib: Option<u64>,
        /// List what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a commented pipeline file for a table kiln has never seen.
    ///
    /// The task comes from the target; each column is kept and encoded, or dropped with
    /// the reason; the network is sized to the rows; evaluate and deploy stages follow.
    /// It runs as written; every choice is a default to revise.
    Init {
        /// The table: .csv (NA and empty cells are missing), .parquet or .arrow.
        data: PathBuf,
        /// The column to predict.
        #[arg(long)]
        target: String,
        /// Where to write the pipeline file (default: the table's name with .toml, in the current
        /// folder).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline file without running it.
    Validate {
        /// The pipeline file.
        file: PathBuf,
        /// Override a value, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Print the JSON Schema of pipeline files (for editors: `#:schema` lines).
    Schema,
    /// Show what a run did: stages, cache hits, timings, metrics.
    Inspect {
        /// A run folder (runs/PIPELINE/RUN-ID or runs/PIPELINE/latest).
        run: PathBuf,
    },
    /// Predict raw rows with a deployed model (its fitted preprocessing is applied).
    Predict {
        /// A deploy folder (runs/PIPELINE/latest/DEPLOY-STAGE) or an .onnx file with
        /// schema.json beside it (e.g. model.int8.onnx).
        #[arg(long)]
        model: PathBuf,
        /// Raw rows: .csv, .parquet or .arrow, with the model's input columns by name.
        #[arg(long)]
        input: PathBuf,
        /// Where to write predictions: .csv or .parquet.
        #[arg(long)]
        output: PathBuf,
        /// Rows per ONNX Runtime call (1 to 1048576).
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
        batch: u32,
        /// Rows of a table read at a time: memory grows with it, not with the file.
        #[arg(long, default_value_t = predict::CHUNK_ROWS as u32, value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
        chunk_rows: u32,
        /// Where the rows are scored: `local` (this process), `datafusion` (DataFusion in
        /// this process) or `ballista` (a cluster, with --scheduler). The cluster engines
        /// take a file, a folder or a glob of CSV / Parquet files and need --row-id; a
        /// kiln built with `--features cluster` runs them (docs/scale.md).
        #[arg(long, value_enum, default_value_t = predict::EngineArg::Local)]
        engine: predict::EngineArg,
        /// The Ballista scheduler, df://host:port (with --engine ballista).
        #[arg(long)]
        scheduler: Option<String>,
        /// The column that identifies each row (with --engine): written beside its
        /// prediction, and the output's order.
        #[arg(long)]
        row_id: Option<String>,
    },
    /// Browse, compare and follow runs in a web browser: a read-only local page over the
    /// runs folder (runs, one run, compare, live).
    Ui {
        /// The runs folder.
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
        /// Address to listen on: loopback by default (port 0 picks a free port; the first
        /// stdout line says which).
        #[arg(long, default_value = "127.0.0.1:8484")]
        addr: std::net::SocketAddr,
        /// A host name to answer for besides localhost, 127.0.0.1 and `[::1]` (repeatable),
        /// e.g. this machine's name when --addr is not loopback. Other names are refused
        /// (DNS rebinding).
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
    },
    /// Serve a deployed model over HTTP: POST /v1/predict, /healthz, /readyz, /metrics.
    ///
    /// Every limit has a flag; the defaults suit a service behind a load balancer.
    Serve {
        /// A deploy folder or an .onnx file with schema.json beside it (as for `predict`).
        #[arg(long)]
        model: PathBuf,
        /// Address to listen on (port 0 picks a free port; the first stdout line says
        /// which).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// ONNX Runtime sessions: requests run at once (more wait for a free one); 1 to
        /// 256.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(serve::SESSIONS))]
        sessions: u64,
        /// Most rows in one request (more: 413); at most 10,000,000.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(serve::MAX_BATCH))]
        max_batch: u64,
        /// Largest request body in bytes (more: 413); at most 1 GiB.
        #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(serve::MAX_BODY))]
        max_body: u64,
        /// Per-request limit on waiting for a session plus inference (503 / 504 past it).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(serve::TIMEOUT_MS))]
        timeout_ms: u64,
        /// Most time for a request's head (request line and headers), counted from the
        /// connection's opening or its previous response; past it the connection is
        /// closed (slow clients, slowloris).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(serve::TIMEOUT_MS))]
        header_timeout_ms: u64,
        /// Most time for a request's whole body to arrive; past it: 408 and the connection
        /// closed.
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(serve::TIMEOUT_MS))]
        body_timeout_ms: u64,
        /// Most time a connection may wait on its client without progress while no
        /// request is handled (a silent or idle keep-alive connection, a stalled head, a
        /// response the client does not read); past it the connection is closed.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(serve::TIMEOUT_MS))]
        idle_timeout_ms: u64,
        /// Most connections open at once (lowered to fit the open-file limit). Beyond it,
        /// up to 32 more are answered at once — /healthz and /readyz as usual, anything
        /// else 503 — and closed; past those, closed unanswered.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(serve::MAX_CONNECTIONS))]
        max_connections: u64,
        /// After SIGTERM / Ctrl-C: most time to finish the requests in flight; connections
        /// still open then are closed and the process exits (0: at once).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(serve::SHUTDOWN_MS))]
        shutdown_timeout_ms: u64,
    },
}

/// `kiln init`: writes the pipeline file and says what it chose.
fn init(data: &std::path::Path, target: &str, output: Option<PathBuf>, force: bool) -> ExitCode {
    let output = output.unwrap_or_else(|| {
        let stem = data.file_stem().and_then(|s| s.to_str()).unwrap_or("table");
        PathBuf::from(format!("{stem}.toml"))
    });
    if output.exists() && !force {
        return fail(
            2,
            &format!(
                "{} exists; give another --output, or --force to replace it",
                output.display()
            ),
        );
    }
    let (text, s) = match kiln_pipeline::init::init(data, target, &output) {
        Ok(x) => x,
        Err(e) => return fail(1, &e.to_string()),
    };
    if let Err(e) = kiln_core::atomic_write(&output, text.as_bytes()) {
        return fail(1, &e.to_string());
    }
    let dropped: Vec<String> = s
        .columns
        .iter()
        .filter_map(|c| c.dropped.map(|r| format!("{} ({})", c.name, r.describe())))
        .collect();
    println!(
        "{}: {} of `{target}` ({}) from {} rows; {} feature column(s) kept{}",
        output.display(),
        match s.task {
            kiln_core::Task::Classification => "classification",
            kiln_core::Task::Regression => "regression",
        },
        if s.n_classes > 0 {
            format!("{} classes", s.n_classes)
        } else {
            "a number".into()
        },
        s.n_rows,
        s.columns.iter().filter(|c| c.dropped.is_none()).count(),
        if dropped.is_empty() {
            String::new()
        } else {
            format!(", dropped: {}", dropped.join(", "))
        }
    );
    println!("run it: kiln run {}", output.display());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // pipelines may name engine = "datafusion" / "ballista" (docs/scale.md)
    #[cfg(feature = "cluster")]
    kiln_cluster::install();
    // A server logs its startup and shutdown by default (not ONNX Runtime's session
    // chatter); the other commands only warn.
    let default = match cli.command {
        Command::Serve { .. } | Command::Ui { .. } => "warn,kiln=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // a span's end is logged with its time, so `RUST_LOG=info` shows where a run's time
    // goes (stage, preprocessing step, epoch)
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    match cli.command {
        Command::Validate { file, set } => match kiln_pipeline::load(&file, &set) {
            Ok(p) => {
                let order: Vec<String> = p
                    .stages
                    .iter()
                    .map(|s| format!("{} ({})", s.id, s.kind.as_str()))
                    .collect();
                println!(
                    "{}: ok — {} stages: {}",
                    file.display(),
                    p.stages.len(),
                    order.join(" -> ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e.to_string()),
        },
        Command::Run {
            file,
            set,
            force,
            runs_dir,
            only,
            from,
            lock_timeout,
        } => {
            let pipeline = match kiln_pipeline::load(&file, &set) {
                Ok(p) => p,
                Err(e) => return fail(2, &e.to_string()),
            };
            let lock_timeout = match lock_timeout {
                None => None,
                Some(s) if (0.0..1e9).contains(&s) => Some(std::time::Duration::from_secs_f64(s)),
                Some(s) => {
                    return fail(
                        2,
                        &format!("--lock-timeout {s}: give a number of seconds >= 0"),
                    );
                }
            };
            let bars = progress::Bars::default();
            let opts = kiln_pipeline::RunOptions {
                runs_dir,
                force,
                progress: &bars,
                only,
                from,
                lock_timeout,
                build: kiln_pipeline::BuildSources::built(),
            };
            let started = std::time::Instant::now();
            match kiln_pipeline::run(&pipeline, &opts) {
                Ok(report) => {
                    print_report(&report);
                    println!(
                        "\nrun folder: {}   ({:.1} s)",
                        report.run_dir.display(),
                        started.elapsed().as_secs_f64()
                    );
                    match &report.failure {
                        None => ExitCode::SUCCESS,
                        Some(f) => fail(1, &f.to_string()),
                    }
                }
                Err(e @ kiln_pipeline::PipelineError::Usage(_)) => fail(2, &e.to_string()),
                Err(e @ kiln_pipeline::PipelineError::LockTimeout { .. }) => {
                    fail(3, &e.to_string())
                }
                Err(e) => fail(1, &e.to_string()),
            }
        }
        Command::Inspect { run } => inspect(&run),
        Command::Init {
            data,
            target,
            output,
            force,
        } => init(&data, &target, output, force),
        Command::Gc {
            runs_dir,
            older_than_days,
            max_size_mib,
            dry_run,
        } => gc(&runs_dir, older_than_days, max_size_mib, dry_run),
        Command::Predict {
            model,
            input,
            output,
            batch,
            chunk_rows,
            engine,
            scheduler,
            row_id,
        } => {
            let req = predict::Request {
                model,
                input,
                output,
                batch: batch as usize,
                chunk_rows: chunk_rows as usize,
                engine: engine.into(),
                scheduler,
                row_id,
            };
            match predict::predict(&req, &progress::Bars::default()) {
                Ok(s) => {
                    if !s.extra.is_empty() {
                        eprintln!(
                            "warning: ignored column(s) the model does not use: {}",
                            s.extra.join(", ")
                        );
                    }
                    for (col, count) in &s.out_of_range {
                        eprintln!(
                            "warning: column `{col}`: {count} value(s) outside the training range; predictions there are extrapolations"
                        );
                    }
                    let score = s
                        .score
                        .map(|(name, v)| format!(", {name} against the input's target {v:.4}"))
                        .unwrap_or_default();
                    println!(
                        "{} rows predicted -> {}{score}",
                        s.rows,
                        req.output.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            }
        }
        Command::Ui {
            runs_dir,
            addr,
            allow_hosts,
        } => match ui::ui(kiln_ui::Options {
            runs_dir,
            addr,
            allow_hosts,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, &e),
        },
        Command::Serve {
            model,
            addr,
            sessions,
            max_batch,
            max_body,
            timeout_ms,
            header_timeout_ms,
            body_timeout_ms,
            idle_timeout_ms,
            max_connections,
            shutdown_timeout_ms,
        } => {
            let opts = serve::Options {
                model,
                addr,
                sessions,
                max_batch,
                max_body,
                timeout_ms,
                header_timeout_ms,
                body_timeout_ms,
                idle_timeout_ms,
                max_connections,
                shutdown_timeout_ms,
            };
            match serve::serve(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &e),
            }
        }
        Command::Schema => {
            println!("{:#}", kiln_pipeline::json_schema());
            ExitCode::SUCCESS
        }
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn print_report(report: &kiln_pipeline::RunReport) {
    let mut g = Grid::new();
    g.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["stage", "kind", "status", "seconds", "note"]);
    for s in &report.stages {
        g.add_row([
            s.id.clone(),
            s.uses.to_string(),
            s.status.to_string(),
            format!("{:.1}", s.seconds),
            s.message.clone().unwrap_or_default(),
        ]);
    }
    println!("{g}");
    for t in &report.tables {
        let mut g = Grid::new();
        g.load_preset(UTF8_FULL_CONDENSED)
            .set_header(t.header.clone());
        for r in &t.rows {
            g.add_row(r.clone());
        }
        println!("\n{}\n{g}", t.title);
    }
}

fn inspect(run: &std::path::Path) -> ExitCode {
    use kiln_core::artifact::{metrics::Metrics, run::RunManifest};
    let m: RunManifest = match kiln_core::artifact::load(run) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                2,
                &format!("{e}; pass a run folder such as runs/<name>/latest"),
            );
        }
    };
    println!(
        "pipeline {}  run {}  status: {:?}  ({:.1} s, build {})",
        m.pipeline, m.run_id, m.status, m.seconds, m.build
    );
    let mut g = Grid::new();
    g.load_preset(UTF8_FULL_CONDENSED).set_header([
        "stage",
        "kind",
        "status",
        "seconds",
        "hash",
        "why it ran",
    ]);
    for s in &m.stages {
        g.add_row([
            s.id.clone(),
            s.uses.to_string(),
            s.status.to_string(),
            format!("{:.1}", s.seconds),
            s.hash.clone(),
            s.rerun_because.join("; "),
        ]);
    }
    println!("{g}");
    for s in &m.stages {
        if let Ok(metrics) = kiln_core::artifact::load::<Metrics>(&run.join(&s.id)) {
            for (variant, values) in &metrics.variants {
                let shown: Vec<String> = metrics
                    .main()
                    .iter()
                    .filter_map(|(k, t)| values.get(*k).map(|v| format!("{t} {v:.4}")))
                    .collect();
                println!("\nmetrics ({}, {variant}): {}", s.id, shown.join(", "));
            }
        }
    }
    if let Some(f) = &m.failure {
        println!("\nfailure: {f}");
    }
    ExitCode::SUCCESS
}

fn gc(runs_dir: &std::path::Path, days: f64, max_mib: Option<u64>, dry_run: bool) -> ExitCode {
    if !(days.is_finite() && days >= 0.0) {
        return fail(
            2,
            &format!("--older-than-days {days}: give a number of days >= 0"),
        );
    }
    let opts = kiln_pipeline::gc::GcOptions {
        older_than: (days * 86_400.0).min(u64::MAX as f64) as u64,
        max_bytes: max_mib.map(|m| m.saturating_mul(1 << 20)),
        dry_run,
    };
    match kiln_pipeline::gc::gc(runs_dir, &opts) {
        Ok(removed) => {
            let total: u64 = removed.iter().map(|r| r.bytes).sum();
            for r in &removed {
                println!(
                    "{} {} ({:.1} MiB, {})",
                    if dry_run { "would remove" } else { "removed" },
                    r.path.display(),
                    r.bytes as f64 / (1 << 20) as f64,
                    r.why
                );
            }
            println!(
                "{} {} folder(s), {:.1} MiB",
                if dry_run { "would free" } else { "freed" },
                removed.len(),
                total as f64 / (1 << 20) as f64
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &e.to_string()),
    }
}
