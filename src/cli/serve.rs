//! `peft serve`: the flags; the server is `crate::serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::error::user;
use crate::serve::{serve, Options};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The base model every adapter was trained on (directory or hub id); /embed without
    /// an adapter embeds with it.
    #[arg(long)]
    pub model: PathBuf,
    /// NAME=DIR: a run directory of `peft train` served as NAME (repeat for more);
    /// NAME=DIR,task=TASK: an adapter saved by Hugging Face PEFT (adapter_config.json,
    /// the classifier in modules_to_save), as `peft eval --adapter` reads it.
    #[arg(long = "adapter", value_name = "NAME=DIR[,task=TASK]")]
    pub adapters: Vec<String>,
    /// Address to listen on; anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Tokens a batch may hold, each adapter's rows padded to their longest.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Requests a batch may hold.
    #[arg(long, default_value_t = 64)]
    pub max_batch_requests: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Requests queued or running at once; more get 429.
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Inputs one request may send.
    #[arg(long, default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Cut inputs longer than the window instead of answering 413 (a request's
    /// "truncate" field decides for itself).
    #[arg(long)]
    pub auto_truncate: bool,
    /// Require `Authorization: Bearer KEY` (every route but /health); also read from
    /// $PEFT_API_KEY.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Allow POST /adapters to load run directories below this folder (no `..`, no links
    /// out of it); without it, adapters are only those given at start.
    #[arg(long)]
    pub adapter_root: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// The base model's window for /embed [default: 128, or the model's limit if lower];
    /// adapters keep their run's.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut adapters = Vec::new();
    for a in &args.adapters {
        let Some((name, rest)) = a.split_once('=') else {
            crate::user_bail!("--adapter {a}: write NAME=DIR or NAME=DIR,task=TASK");
        };
        let (dir, task) = match rest.rsplit_once(",task=") {
            Some((dir, task)) => (dir, Some(task.to_string())),
            None => (rest, None),
        };
        crate::serve::adapters::check_name(name)
            .map_err(|e| user(format!("--adapter {a}: {e}")))?;
        if adapters.iter().any(|(n, _, _)| n == name) {
            crate::user_bail!("--adapter {a}: the name {name} is given twice");
        }
        adapters.push((name.to_string(), PathBuf::from(dir), task));
    }
    let device = crate::device::parse(&args.device)?;
    let opts = Options {
        host: args.host,
        port: args.port,
        max_batch_tokens: args.max_batch_tokens,
        max_batch_requests: args.max_batch_requests,
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_concurrent_requests: args.max_concurrent_requests,
        max_client_batch_size: args.max_client_batch_size,
        auto_truncate: args.auto_truncate,
        // From the environment, a key stays out of `ps` and shell history.
        api_key: args.api_key.or_else(|| std::env::var("PEFT_API_KEY").ok()),
        adapter_root: args.adapter_root,
        max_body_bytes: args.max_body_bytes,
        max_seq_len: args.max_seq_len,
    };
    serve(opts, args.model, adapters, device)
}
