//! `kiln-executor`: a DataFusion Ballista executor that knows kiln's scalar functions
//! (`kiln_split`, and `kiln_predict`, which runs a deployed model through ONNX Runtime);
//! it registers with a `kiln-scheduler` and runs the tasks of kiln's preprocess and
//! scoring plans. It reads the source files and the model itself, so they must be at the
//! same path on every executor's machine (a shared or copied folder), and it loads ONNX
//! Runtime as kiln does (`ORT_DYLIB_PATH`, or the library `cargo xtask setup` fetched).

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use clap::Parser;
use std::sync::Arc;

/// A Ballista executor for kiln's preprocess stages and batch scoring.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The scheduler, as host:port.
    #[arg(long, default_value = "localhost:50050")]
    scheduler: String,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Arrow Flight port (shuffle data and results).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// gRPC port (tasks from the scheduler).
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Folder for shuffle files (default: a temporary one).
    #[arg(long)]
    work_dir: Option<String>,
    /// Tasks run at once (default: the cores).
    #[arg(long)]
    concurrent_tasks: Option<usize>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 2)]
    heartbeat: u64,
    /// MiB the executor's sorts and aggregations may hold, shared by its tasks, before
    /// they spill to --work-dir (default: Ballista's, 70 % of the machine's memory).
    #[arg(long)]
    memory_mb: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (host, port) = match args
        .scheduler
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse::<u16>()))
    {
        Some((h, Ok(p))) => (h.to_string(), p),
        _ => {
            eprintln!("error: --scheduler `{}` is not host:port", args.scheduler);
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut registry = BallistaFunctionRegistry::default();
    for f in kiln_cluster::session::functions() {
        registry
            .scalar_functions
            .insert(f.name().to_string(), Arc::new(f));
    }
    let defaults = ExecutorProcessConfig::default();
    let config = ExecutorProcessConfig {
        bind_host: args.bind_host.clone(),
        external_host: Some(args.bind_host),
        port: args.port,
        grpc_port: args.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 10,
        vcores: args.concurrent_tasks.unwrap_or(defaults.vcores),
        work_dir: args.work_dir,
        print_thread_info: false,
        executor_heartbeat_interval_seconds: args.heartbeat,
        memory_pool_size: args.memory_mb.map(|m| m.saturating_mul(1 << 20)),
        override_function_registry: Some(Arc::new(registry)),
        ..defaults
    };
    kiln_cluster::serve(start_executor_process(Arc::new(config)))
}
