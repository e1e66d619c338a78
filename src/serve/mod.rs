//! `peft serve`: one base encoder and many fine-tuned adapters over HTTP, requests batched
//! together across clients and adapters (`batcher`), an API shaped as
//! text-embeddings-inference's (`http`), adapters loaded at start and at run time
//! (`adapters`), Prometheus metrics (`metrics`). The model runs on a thread of its own;
//! tokio's runtime only carries the connections.

pub mod adapters;
pub mod batcher;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::error::user;

/// The server's settings, each default in `cli::serve`'s flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_wait: Duration,
    pub max_concurrent_requests: usize,
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    pub api_key: Option<String>,
    pub adapter_root: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_seq_len: Option<usize>,
}

/// One adapter to load at start: its name, directory, and for an adapter saved by
/// Hugging Face PEFT (not a run) the task its head was trained on.
pub type Given = (String, PathBuf, Option<String>);

/// Serve `model` with `adapters` until SIGTERM or Ctrl-C, then finish what is in flight.
pub fn serve(opts: Options, model: PathBuf, adapters: Vec<Given>, device: Device) -> Result<()> {
    let loopback = matches!(opts.host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if !loopback && opts.api_key.is_none() {
        crate::user_bail!(
            "--host {}: a server reachable from other machines needs --api-key",
            opts.host
        );
    }
    for (flag, v) in [
        ("--max-batch-tokens", opts.max_batch_tokens),
        ("--max-batch-requests", opts.max_batch_requests),
        ("--max-concurrent-requests", opts.max_concurrent_requests),
        ("--max-client-batch-size", opts.max_client_batch_size),
    ] {
        if v == 0 {
            crate::user_bail!("{flag} must be at least 1");
        }
    }
    // As `peft embed`: 128 tokens, or the model's limit if lower.
    let max_len = match opts.max_seq_len {
        Some(n) => n,
        None => crate::model::read_checkpoint(&crate::model::hub::resolve(&model, None)?)?
            .0
            .max_tokens()
            .min(128),
    };
    let (registry, base) = adapters::Adapters::new(
        &model,
        device.clone(),
        max_len,
        opts.adapter_root.as_deref(),
    )?;
    for (name, dir, task) in &adapters {
        let a = registry
            .load(name, dir, task.as_deref())
            .with_context(|| format!("--adapter {name}={}", dir.display()))?;
        eprintln!(
            "adapter {name}: {} on {} ({})",
            a.method,
            a.task.name,
            dir.display()
        );
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let limits = batcher::Limits {
        max_batch_tokens: opts.max_batch_tokens,
        max_batch_requests: opts.max_batch_requests,
        max_wait: opts.max_wait,
    };
    let (queue, worker) = batcher::start(
        opts.max_concurrent_requests,
        limits,
        device,
        metrics.clone(),
    );
    let addr: SocketAddr = format!("{}:{}", bracket(&opts.host), opts.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (opts.host.as_str(), opts.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|()| {
            user(format!(
                "--host {}: not an address this machine has",
                opts.host
            ))
        })?;
    let state = Arc::new(http::AppState {
        adapters: registry,
        base: Arc::new(base),
        queue,
        metrics,
        opts,
        in_flight: AtomicUsize::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| user(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr()?;
        eprintln!("listening on http://{bound}");
        let app = http::router(state.clone());
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped())
            .await
            .context("serving")?;
        eprintln!("stopped: every request in flight was answered");
        anyhow::Ok(())
    })?;
    // Every queue handle went with the router: the model thread drains and ends.
    drop(runtime);
    let _ = worker.join();
    Ok(())
}

/// An IPv6 host in a socket address needs brackets.
fn bracket(host: &str) -> String {
    match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    }
}

/// SIGTERM (how clusters stop a job) or Ctrl-C.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    eprintln!("stopping: no new connections; finishing the requests in flight");
}
