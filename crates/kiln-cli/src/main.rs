//! The `kiln` binary: `run`, `validate` and `inspect` pipelines, `predict` with a
//! deployed model, `serve` it over HTTP. It owns the tracing
//! subscriber (`RUST_LOG`), the progress bars and the exit codes (0 ok, 1 a stage or gate
//! failed, 2 the pipeline file or the command line is invalid).

mod predict;
mod progress;
mod serve;

use clap::{Parser, Subcommand};
use comfy_table::{Table as Grid, presets::UTF8_FULL_CONDENSED};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
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
        /// A run folder (runs/<name>/<run-id> or runs/<name>/latest).
        run: PathBuf,
    },
    /// Predict raw rows with a deployed model (its fitted preprocessing is applied).
    Predict {
        /// A deploy folder (runs/<name>/latest/<deploy stage>) or an .onnx file with
        /// schema.json beside it (e.g. model.int8.onnx).
        #[arg(long)]
        model: PathBuf,
        /// Raw rows: .csv, .parquet or .arrow, with the model's input columns by name.
        #[arg(long)]
        input: PathBuf,
        /// Where to write predictions: .csv or .parquet.
        #[arg(long)]
        output: PathBuf,
        /// Rows per ONNX Runtime call.
        #[arg(long, default_value_t = 1024)]
        batch: usize,
    },
    /// Serve a deployed model over HTTP: POST /v1/predict, /healthz, /readyz, /metrics.
    Serve {
        /// A deploy folder or an .onnx file with schema.json beside it (as for `predict`).
        #[arg(long)]
        model: PathBuf,
        /// Address to listen on (port 0 picks a free port; the first stdout line says
        /// which).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// ONNX Runtime sessions: requests run at once (more wait for a free one).
        #[arg(long, default_value_t = 2)]
        sessions: usize,
        /// Most rows in one request (more: 413).
        #[arg(long, default_value_t = 1024)]
        max_batch: usize,
        /// Largest request body in bytes (more: 413).
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_body: usize,
        /// Per-request limit on waiting for a session plus inference (503 / 504 past it).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server logs its startup and shutdown by default (not ONNX Runtime's session
    // chatter); the other commands only warn.
    let default = match cli.command {
        Command::Serve { .. } => "warn,kiln=info",
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
        } => {
            let pipeline = match kiln_pipeline::load(&file, &set) {
                Ok(p) => p,
                Err(e) => return fail(2, &e.to_string()),
            };
            let bars = progress::Bars::default();
            let opts = kiln_pipeline::RunOptions {
                runs_dir,
                force,
                progress: &bars,
                only,
                from,
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
                        Some(f) => fail(1, f),
                    }
                }
                Err(e @ kiln_pipeline::PipelineError::Usage(_)) => fail(2, &e.to_string()),
                Err(e) => fail(1, &e.to_string()),
            }
        }
        Command::Inspect { run } => inspect(&run),
        Command::Predict {
            model,
            input,
            output,
            batch,
        } => {
            let req = predict::Request {
                model,
                input,
                output,
                batch,
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
        Command::Serve {
            model,
            addr,
            sessions,
            max_batch,
            max_body,
            timeout_ms,
        } => {
            let opts = serve::Options {
                model,
                addr,
                sessions,
                max_batch,
                max_body,
                timeout_ms,
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
            format!("{:?}", s.uses).to_lowercase(),
            s.status.clone(),
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
    let manifest = run.join("run.json");
    let v: serde_json::Value = match kiln_core::read_json(&manifest) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                2,
                &format!("{e}; pass a run folder such as runs/<name>/latest"),
            );
        }
    };
    println!(
        "pipeline {}  run {}  ok: {}",
        v["pipeline"].as_str().unwrap_or("?"),
        v["run_id"].as_str().unwrap_or("?"),
        v["ok"]
    );
    let mut g = Grid::new();
    g.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["stage", "kind", "status", "seconds", "hash"]);
    for s in v["stages"].as_array().into_iter().flatten() {
        g.add_row([
            s["id"].as_str().unwrap_or("").to_string(),
            s["uses"].as_str().unwrap_or("").to_string(),
            s["status"].as_str().unwrap_or("").to_string(),
            format!("{:.1}", s["seconds"].as_f64().unwrap_or(0.0)),
            s["hash"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!("{g}");
    for s in v["stages"].as_array().into_iter().flatten() {
        let metrics = run
            .join(s["id"].as_str().unwrap_or(""))
            .join("metrics.json");
        if let Ok(m) = kiln_core::read_json::<serde_json::Value>(&metrics) {
            println!(
                "\nmetrics ({}): {}",
                s["id"].as_str().unwrap_or(""),
                m["variants"]
            );
        }
    }
    if let Some(f) = v["failure"].as_str() {
        println!("\nfailure: {f}");
    }
    ExitCode::SUCCESS
}
