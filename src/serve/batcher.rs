//! Batching across requests and adapters. Requests wait in one queue; the model thread
//! takes the first, then whatever arrives within `--max-wait-ms`, up to `--max-batch-tokens`
//! tokens (padded, as the forward pays for them) and `--max-batch-requests` requests, and
//! runs the batch: the rows of each adapter (and kind of answer) in one forward, longest
//! rows together as `peft predict` batches them. A request whose client went away is
//! dropped unrun; an error inside the model fails the requests of that forward only.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::oneshot;

use super::adapters::Served;
use super::metrics::Metrics;
use crate::embed::Pooling;
use crate::model::Model;
use crate::tokenize::{Encoded, TextEncoder};

/// What a request wants for each of its rows.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Want {
    /// The head's outputs.
    Logits,
    /// The last hidden state pooled, normalised or not.
    Embed(Pooling, bool),
    /// A span head's start logits then its end logits, each row's own tokens only.
    Spans,
}

/// Whose model a request runs on: an adapter, or the base alone (embeddings).
#[derive(Clone)]
pub enum On {
    Adapter(Arc<Served>),
    Base(Arc<super::adapters::Base>),
}

impl On {
    fn model(&self) -> &Model {
        match self {
            On::Adapter(a) => &a.model,
            On::Base(b) => &b.model,
        }
    }

    fn encoder(&self) -> &TextEncoder {
        match self {
            On::Adapter(a) => &a.encoder,
            On::Base(b) => &b.encoder,
        }
    }

    /// Adapters loaded again under one name are told apart; 0 is the base.
    fn key(&self) -> u64 {
        match self {
            On::Adapter(a) => a.id,
            On::Base(_) => 0,
        }
    }
}

pub type Answer = Result<Vec<Vec<f32>>, String>;

pub struct Job {
    pub on: On,
    pub want: Want,
    pub rows: Vec<Encoded>,
    pub reply: oneshot::Sender<Answer>,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_wait: Duration,
}

/// The queue's sending side, cloned into every handler.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
}

pub enum Refused {
    /// The queue is full: 429.
    Full,
    /// The model thread is gone (shutting down): 503.
    Closed,
}

impl Queue {
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Closed,
        })
    }
}

/// Start the model thread with a queue of `depth` requests; it ends when every
/// [`Queue`] is dropped and the queue has drained.
pub fn start(
    depth: usize,
    limits: Limits,
    device: Device,
    metrics: Arc<Metrics>,
) -> (Queue, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(depth);
    let thread = std::thread::Builder::new()
        .name("peft-model".into())
        .spawn(move || {
            Worker {
                rx,
                limits,
                device,
                metrics,
                carry: None,
            }
            .run()
        })
        .expect("spawning the model thread");
    (Queue { tx }, thread)
}

struct Worker {
    rx: Receiver<Job>,
    limits: Limits,
    device: Device,
    metrics: Arc<Metrics>,
    /// A request that did not fit the last batch: the next one starts with it.
    carry: Option<Job>,
}

impl Worker {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            let mut adapters: Vec<u64> = batch.iter().map(|j| j.on.key()).collect();
            adapters.sort_unstable();
            adapters.dedup();
            self.metrics
                .batch(batch.len(), padded_tokens(&batch), adapters.len());
            self.run_batch(batch);
        }
    }

    /// The next batch: blocks for its first request, then gathers until a limit or the
    /// wait is reached. None once the queue is closed and empty.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = match self.carry.take() {
            Some(j) => j,
            None => self.rx.recv().ok()?,
        };
        self.metrics.dequeued(1);
        let deadline = Instant::now() + self.limits.max_wait;
        let mut batch = vec![first];
        while batch.len() < self.limits.max_batch_requests {
            let wait = deadline.saturating_duration_since(Instant::now());
            let job = match self.rx.recv_timeout(wait) {
                Ok(j) => j,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            self.metrics.dequeued(1);
            batch.push(job);
            if padded_tokens(&batch) > self.limits.max_batch_tokens {
                self.carry = batch.pop();
                self.metrics.dequeued(-1);
                break;
            }
        }
        Some(batch)
    }

    fn run_batch(&self, batch: Vec<Job>) {
        // Groups in arrival order of their first request: one forward each.
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for job in batch.into_iter().filter(|j| !j.reply.is_closed()) {
            let at = groups
                .iter()
                .position(|g| g[0].on.key() == job.on.key() && g[0].want == job.want);
            match at {
                Some(i) => groups[i].push(job),
                None => groups.push(vec![job]),
            }
        }
        for group in groups {
            self.run_group(group);
        }
    }

    fn run_group(&self, mut group: Vec<Job>) {
        let on = group[0].on.clone();
        let want = group[0].want;
        // The rows move out of their requests; each request keeps its count.
        let counts: Vec<usize> = group.iter().map(|j| j.rows.len()).collect();
        let rows: Vec<Encoded> = group
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.rows))
            .collect();
        let n = rows.len();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            forward(&on, want, &rows, &self.device)
        }));
        let out = match out {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("the model failed on this batch".to_string()),
        };
        let mut next = 0;
        for (job, k) in group.into_iter().zip(counts) {
            let answer = match &out {
                Ok(rows) if rows.len() == n => Ok(rows[next..next + k].to_vec()),
                Ok(_) => Err("the model gave the wrong number of rows".to_string()),
                Err(e) => Err(e.clone()),
            };
            next += k;
            let _ = job.reply.send(answer);
        }
    }
}

/// Every row at once: `peft predict`'s batching (sorted by length) in one batch.
fn forward(
    on: &On,
    want: Want,
    rows: &[Encoded],
    device: &Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let pad = on.encoder().pad_id();
    let n = rows.len().max(1);
    match want {
        Want::Logits => crate::eval::logits(on.model(), rows, pad, n, device),
        Want::Spans => {
            let data = crate::data::dataset::Dataset {
                split: "request".into(),
                ids: Vec::new(),
                labels: Vec::new(),
                inputs: rows.to_vec(),
                qa: None,
            };
            let windows = crate::eval::spans::window_logits(on.model(), &data, pad, n, device)?;
            Ok(windows.into_iter().map(|(s, e)| [s, e].concat()).collect())
        }
        Want::Embed(pooling, normalize) => {
            crate::embed::embed(on.model(), rows, pad, pooling, normalize, n, device)
        }
    }
}

/// Tokens the forward computes for a batch: each group padded to its longest row.
fn padded_tokens(batch: &[Job]) -> usize {
    let mut by: Vec<(u64, usize, usize)> = Vec::new();
    for j in batch {
        let longest = j.rows.iter().map(Encoded::len).max().unwrap_or(0);
        match by.iter_mut().find(|(k, _, _)| *k == j.on.key()) {
            Some((_, rows, len)) => {
                *rows += j.rows.len();
                *len = (*len).max(longest);
            }
            None => by.push((j.on.key(), j.rows.len(), longest)),
        }
    }
    by.iter().map(|(_, rows, len)| rows * len).sum()
}
