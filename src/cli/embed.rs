//! `peft embed`: sentence embeddings from the last hidden state.
//!
//! Useful in itself (all-MiniLM-L6-v2 is a sentence-embedding model) and the way anyone
//! can check the encoder against transformers: same inputs, same numbers to 1e-4.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::embed::embed;
pub use crate::embed::Pooling;

use crate::error::{user, PathContext};
use crate::model::{read_checkpoint, Model, ParamStore};
use crate::tokenize::TextEncoder;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json), or a hub id.
    #[arg(long)]
    pub model: PathBuf,
    /// Branch, tag or commit of a hub --model [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Text file: one input per line; a TAB separates the two sentences of a pair.
    #[arg(long)]
    pub input: PathBuf,
    /// How to pool token states into one vector.
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Truncate each input (longest sentence first for pairs) to this many tokens
    /// [default: 128, or the model's limit if lower].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Scale each embedding to unit L2 norm.
    #[arg(long)]
    pub normalize: bool,
    /// Write JSON Lines here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    if args.batch_size == 0 {
        crate::user_bail!("--batch-size must be at least 1");
    }
    let device = crate::device::parse(&args.device)?;
    let text =
        std::fs::read_to_string(&args.input).path_context("cannot read input", &args.input)?;
    let model_dir = crate::model::hub::resolve(&args.model, args.revision.as_deref())?;
    let (cfg, weights) = read_checkpoint(&model_dir)?;
    let store = ParamStore::frozen(weights, device.clone());
    let model = Model::load(&store, &cfg, None)?;
    let max_len = args.max_seq_len.unwrap_or(cfg.max_tokens().min(128));
    let encoder = TextEncoder::load(&model_dir, &cfg, max_len)?;

    let mut inputs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut parts = line.split('\t');
        let first = parts.next().unwrap_or("");
        let second = parts.next();
        if parts.next().is_some() {
            return Err(user(format!(
                "{}:{}: more than one TAB; a line is one text or a TAB-separated pair",
                args.input.display(),
                i + 1
            )));
        }
        // As a data file's texts: a longer one is tokenized whole before truncation.
        for (k, t) in std::iter::once(first).chain(second).enumerate() {
            crate::data::input::check_text(t, || {
                format!("{}:{}: text {}", args.input.display(), i + 1, k + 1)
            })?;
        }
        inputs.push(encoder.encode(first, second)?);
    }
    let embeddings = embed(
        &model,
        &inputs,
        encoder.pad_id(),
        args.pooling,
        args.normalize,
        args.batch_size,
        &device,
    )?;

    let sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::fs::File::create(p).path_context("cannot create output", p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for e in embeddings {
        serde_json::to_writer(&mut out, &serde_json::json!({ "embedding": e }))?;
        out.write_all(b"\n")?;
    }
    out.flush().context("writing embeddings")?;
    Ok(())
}
