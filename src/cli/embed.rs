//! `peft embed`: sentence embeddings from the last hidden state.
//!
//! Useful in itself (all-MiniLM-L6-v2 is a sentence-embedding model) and the way anyone
//! can check the encoder against transformers: same inputs, same numbers to 1e-4.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::embed::embed;
pub use crate::embed::Pooling;

use crate::data::input;
use crate::error::user;
use crate::model::{read_checkpoint, Model, ParamStore};
use crate::run::dir as run_dir;
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
    // A missing input (or one that is not a file) is named before the model loads.
    input::open(&args.input)?;
    let model_dir = crate::model::hub::resolve(&args.model, args.revision.as_deref())?;
    let (cfg, weights) = read_checkpoint(&model_dir)?;
    let store = ParamStore::frozen(weights, device.clone());
    let model = Model::load(&store, &cfg, None)?;
    let max_len = args.max_seq_len.unwrap_or(cfg.max_tokens().min(128));
    let encoder = TextEncoder::load(&model_dir, &cfg, max_len)?;
    // Every line is checked before anything is written; the input is then streamed in
    // chunks (one pass to check, one to embed): its length costs time, not memory.
    let mut lines = 0;
    input::for_each_line(&args.input, |n, line| {
        split(line, &args.input, n)?;
        lines = n;
        Ok(true)
    })?;

    let write = |out: &mut dyn Write| {
        input::for_each_chunk(&args.input, lines, |first, chunk| {
            let mut inputs = Vec::with_capacity(chunk.len());
            for (k, line) in chunk.iter().enumerate() {
                let (a, b) = split(line, &args.input, first + k)?;
                inputs.push(encoder.encode(a, b)?);
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
            for e in embeddings {
                serde_json::to_writer(&mut *out, &serde_json::json!({ "embedding": e }))?;
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
        out.flush().context("writing embeddings")
    };
    match &args.output {
        Some(p) => run_dir::replace_file(p, |file, _| write(&mut BufWriter::new(file))),
        None => write(&mut BufWriter::new(std::io::stdout().lock())),
    }
}

/// Line `n`: one text, or a TAB-separated pair, each checked as a data file's texts are
/// (a longer one would be tokenized whole before truncation).
fn split<'a>(line: &'a str, path: &Path, n: usize) -> Result<(&'a str, Option<&'a str>)> {
    let mut parts = line.split('\t');
    let first = parts.next().unwrap_or("");
    let second = parts.next();
    if parts.next().is_some() {
        return Err(user(format!(
            "{}:{n}: more than one TAB; a line is one text or a TAB-separated pair",
            path.display()
        )));
    }
    for (k, t) in std::iter::once(first).chain(second).enumerate() {
        input::check_text(t, || format!("{}:{n}: text {}", path.display(), k + 1))?;
    }
    Ok((first, second))
}
