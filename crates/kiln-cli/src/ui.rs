//! `kiln ui`: binds the runs page (kiln-ui), prints its address and serves until
//! Ctrl-C or SIGTERM.

/// Serves `opts` until Ctrl-C or SIGTERM.
pub fn ui(opts: kiln_ui::Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("handling SIGTERM: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("handling SIGINT: {e}"))?;
        let runs = opts.runs_dir.clone();
        if !opts.addr.ip().is_loopback() {
            tracing::warn!(
                "kiln ui listens on {}, beyond this machine: anyone who can reach it reads every run (it has no login); add --allow-host NAME for the names it is reached by",
                opts.addr
            );
        }
        let server = kiln_ui::Server::bind(opts)
            .await
            .map_err(|e| e.to_string())?;
        // The first stdout line, parsed by callers that asked for port 0.
        println!("listening on http://{}", server.addr());
        tracing::info!(
            "kiln ui over {} on http://{} (read-only; Ctrl-C stops it)",
            runs.display(),
            server.addr()
        );
        server
            .run_until(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            })
            .await
            .map_err(|e| e.to_string())
    })
}
