//! Batching across requests and adapters. Requests wait in one queue; the model thread
//! takes the first, then whatever arrives within `--max-wait-ms`, up to `--max-batch-tokens`
//! tokens (padded, as the forward pays for them) and `--max-batch-requests` requests, and
//! runs the batch: the rows of each adapter (and kind of answer) in one forward, longest
//! rows together as `peft predict` batches them. A request whose client went away is
//! dropped unrun; an error inside the model fails the requests of that forward only.

use std::ops::Range;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::oneshot;

use super::adapters::Served;
use super::metrics::Metrics;
use crate::embed::Pooling;
use crate::model::{Ctx, Model};
use crate::tokenize::{collate, Encoded, TextEncoder};

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
type RowAnswer = Result<Vec<f32>, String>;

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
        let jobs: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        // Each job's rows' answers, filled in by the forwards that ran them.
        let mut answers: Vec<Vec<Option<RowAnswer>>> =
            jobs.iter().map(|j| vec![None; j.rows.len()]).collect();
        let plan = plan(&jobs);
        self.metrics.forwards(plan.len());
        for forward in plan {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.forward(&jobs, &forward)
            }));
            let out = match out {
                Ok(Ok(rows)) if rows.len() == forward.rows.len() => Ok(rows),
                Ok(Ok(_)) => Err("the model gave the wrong number of rows".to_string()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("the model failed on this batch".to_string()),
            };
            for (k, &(job, row)) in forward.rows.iter().enumerate() {
                answers[job][row] = Some(match &out {
                    Ok(rows) => Ok(rows[k].clone()),
                    Err(e) => Err(e.clone()),
                });
            }
        }
        for (job, rows) in jobs.into_iter().zip(answers) {
            let answer = rows
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err("a row was left unrun".to_string())))
                .collect::<Result<Vec<_>, _>>();
            let _ = job.reply.send(answer);
        }
    }

    /// One forward of the plan: its rows, each part's model over its segment (stacked when
    /// there are several), the answers in the forward's row order.
    fn forward(&self, jobs: &[Job], f: &Forward) -> anyhow::Result<Vec<Vec<f32>>> {
        let ons: Vec<&On> = f.parts.iter().map(|&j| &jobs[j].on).collect();
        let stacked;
        let model = match ons.as_slice() {
            [one] => one.model(),
            many => {
                stacked = Model::stack(&many.iter().map(|o| o.model()).collect::<Vec<_>>())?;
                &stacked
            }
        };
        let rows: Vec<&Encoded> = f.rows.iter().map(|&(j, r)| &jobs[j].rows[r]).collect();
        let batch = collate(&rows, ons[0].encoder().pad_id(), &self.device)?;
        let ctx = Ctx::inference().with_segments(f.segments.clone());
        let want = jobs[f.parts[0]].want;
        match want {
            Want::Logits => {
                let mut out = crate::eval::batch_logits(model, &batch, &ctx)?;
                // A stacked head pads narrower heads' outputs: each row keeps its own width.
                for (seg, on) in f.segments.iter().zip(&ons) {
                    let width = on.model().num_labels().unwrap_or(usize::MAX);
                    out[seg.clone()].iter_mut().for_each(|r| r.truncate(width));
                }
                Ok(out)
            }
            Want::Spans => {
                let lengths: Vec<usize> = rows.iter().map(|e| e.len()).collect();
                let spans = crate::eval::spans::batch_spans(model, &batch, &lengths, &ctx)?;
                Ok(spans.into_iter().map(|(s, e)| [s, e].concat()).collect())
            }
            Want::Embed(pooling, normalize) => {
                crate::embed::embed_batch(model, &batch, pooling, normalize, &ctx)
            }
        }
    }
}

/// A forward of a batch's rows: `(job, row)` in order, the jobs whose models run it (one
/// per part, by the index of a job on that model), and each part's rows.
#[derive(Debug, PartialEq)]
struct Forward {
    rows: Vec<(usize, usize)>,
    parts: Vec<usize>,
    segments: Vec<Range<usize>>,
}

/// The forwards a batch's jobs run as: jobs wanting the same kind of answer of models
/// that stack ([`Model::stack`]) share forwards; their rows, longest first, are cut where
/// padding would cost more than another forward ([`cuts`]); within a forward each model's
/// rows are together.
fn plan(jobs: &[Job]) -> Vec<Forward> {
    // Classes of models that stack, each a list of (model key, first job on it).
    let mut classes: Vec<(Want, Vec<(u64, usize)>)> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let key = job.on.key();
        if classes
            .iter()
            .any(|(w, ms)| *w == job.want && ms.iter().any(|&(k, _)| k == key))
        {
            continue;
        }
        let joins = classes.iter().position(|(w, ms)| {
            *w == job.want && Model::stack(&[jobs[ms[0].1].on.model(), job.on.model()]).is_ok()
        });
        match joins {
            Some(c) => classes[c].1.push((key, j)),
            None => classes.push((job.want, vec![(key, j)])),
        }
    }
    let mut out = Vec::new();
    for (want, models) in classes {
        let part_of = |j: usize| {
            models
                .iter()
                .position(|&(k, _)| k == jobs[j].on.key())
                .filter(|_| jobs[j].want == want)
        };
        // (part, length, job, row), longest first.
        let mut rows: Vec<(usize, usize, usize, usize)> = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            if let Some(p) = part_of(j) {
                rows.extend(job.rows.iter().enumerate().map(|(r, e)| (p, e.len(), j, r)));
            }
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        let lengths: Vec<usize> = rows.iter().map(|r| r.1).collect();
        for cut in cuts(&lengths, FORWARD_COST) {
            let mut these = rows[cut].to_vec();
            these.sort_by_key(|r| r.0);
            let mut f = Forward {
                rows: Vec::new(),
                parts: Vec::new(),
                segments: Vec::new(),
            };
            for (i, &(p, _, j, r)) in these.iter().enumerate() {
                if f.parts.is_empty() || these[i - 1].0 != p {
                    f.parts.push(models[p].1);
                    f.segments.push(i..i);
                }
                if let Some(s) = f.segments.last_mut() {
                    s.end = i + 1;
                }
                f.rows.push((j, r));
            }
            out.push(f);
        }
    }
    out
}

/// What one more forward costs, in padded tokens: measured on all-MiniLM-L6-v2 on two
/// CPU cores, where splitting a batch of RTE pairs further stopped paying (docs/serve.md).
const FORWARD_COST: usize = 64;

/// Rows of `lengths` (longest first) cut into runs, each padded to its first (longest)
/// row, so that padded tokens plus `cost` per run are least: a dynamic programme over where
/// each run starts. Only where the length changes: a cut between equal lengths saves no
/// padding and costs a forward, and there are few lengths (at most the window) where
/// rows may be many (64 requests of 32 inputs).
fn cuts(lengths: &[usize], cost: usize) -> Vec<Range<usize>> {
    let starts: Vec<usize> = (0..lengths.len())
        .filter(|&i| i == 0 || lengths[i] != lengths[i - 1])
        .collect();
    let k = starts.len();
    let row = |g: usize| starts.get(g).copied().unwrap_or(lengths.len());
    // best[j]: the least cost of the rows before group j; from[j]: where its last run starts.
    let mut best = vec![0usize; k + 1];
    let mut from = vec![0usize; k + 1];
    for j in 1..=k {
        best[j] = usize::MAX;
        for i in 0..j {
            let c = best[i] + (row(j) - row(i)) * lengths[row(i)] + cost;
            if c < best[j] {
                best[j] = c;
                from[j] = i;
            }
        }
    }
    let mut out = Vec::new();
    let mut j = k;
    while j > 0 {
        out.push(row(from[j])..row(j));
        j = from[j];
    }
    out.reverse();
    out
}

/// Tokens the forwards compute for a batch: its rows, longest first, cut as [`plan`] cuts
/// them, each run padded to its longest row.
fn padded_tokens(batch: &[Job]) -> usize {
    let mut lengths: Vec<usize> = batch
        .iter()
        .flat_map(|j| j.rows.iter().map(Encoded::len))
        .collect();
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    cuts(&lengths, FORWARD_COST)
        .into_iter()
        .map(|c| c.len() * lengths[c.start])
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_trade_padding_against_forwards() {
        // Equal lengths never pay for a second forward.
        assert_eq!(cuts(&[10, 10, 10], 1), vec![0..3]);
        // A long row alone, the short ones together: 100 + 2·10 + 2·cost < 3·100 + cost.
        assert_eq!(cuts(&[100, 10, 10], 64), vec![0..1, 1..3]);
        // With a forward dearer than the padding, one run.
        assert_eq!(cuts(&[100, 10, 10], 1000), vec![0..3]);
        assert!(cuts(&[], 64).is_empty());
        // The runs cover every row once, in order.
        let lengths: Vec<usize> = (1..=64).rev().map(|i| i * 2).collect();
        let c = cuts(&lengths, 64);
        assert_eq!(c.first().map(|r| r.start), Some(0));
        assert_eq!(c.last().map(|r| r.end), Some(64));
        assert!(c.windows(2).all(|w| w[0].end == w[1].start));
    }
}
