//! `kiln-scheduler`: a DataFusion Ballista scheduler that knows kiln's scalar functions
//! (`kiln_split`, `kiln_predict`), so the plans kiln sends it decode. Start it, then executors
//! (`kiln-executor`), then point a pipeline at it (`scheduler = "df://host:port"`).

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;
use datafusion::execution::FunctionRegistry;
use std::net::SocketAddr;
use std::sync::Arc;

/// A Ballista scheduler for kiln's preprocess stages and batch scoring.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (executors and kiln connect here).
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: SocketAddr,
    /// Host name executors and clients reach this scheduler by.
    #[arg(long, default_value = "localhost")]
    external_host: String,
    /// Seconds without a heartbeat after which an executor counts as gone and its
    /// jobs' tasks are moved or the jobs fail.
    #[arg(long, default_value_t = 10)]
    executor_timeout: u64,
}

fn main() -> std::process::ExitCode {
    kiln_cluster::serve(serve(Args::parse()))
}

async fn serve(args: Args) -> ballista_core::error::Result<()> {
    let config = SchedulerConfig {
        bind_host: args.bind.ip().to_string(),
        bind_port: args.bind.port(),
        external_host: args.external_host,
        executor_timeout_seconds: args.executor_timeout,
        expire_dead_executor_interval_seconds: 2.min(args.executor_timeout),
        no_executors_grace_period_seconds: args.executor_timeout,
        ..Default::default()
    }
    .with_override_session_builder(Arc::new(|config| {
        let mut state = ballista_core::utils::default_session_builder(config)?;
        for f in kiln_cluster::session::functions() {
            state.register_udf(Arc::new(f))?;
        }
        Ok(state)
    }));
    let cluster = BallistaCluster::new_from_config(&config).await?;
    start_server(cluster, args.bind, Arc::new(config)).await
}
