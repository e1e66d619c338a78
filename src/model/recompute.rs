//! Activation recomputation per layer (`--recompute`): a backward pass that keeps only
//! each layer's input, not its activations.
//!
//! A forward without a graph stores the input of every encoder layer. The head and loss then
//! run with a graph from the last hidden state, taken as a leaf; each layer, last first,
//! runs again from its stored input with a graph, and the gradient of its output from the
//! layer above flows through it to its input and parameters; last come the embeddings.
//! Peak memory is the stored inputs plus one layer's graph, for one more forward's time.
//! Dropout draws the same masks on the second pass (its key counter is replayed), so the
//! gradients are those of the ordinary backward, up to the order of float sums.

use anyhow::{anyhow, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{Batch, Ctx, Model, Shared};
use crate::kernels::without_graph;

impl Model {
    /// The loss `loss_of(logits)` and its gradients, computed layer by layer with the
    /// activations recomputed: `collect` sees each stage's gradients (the head's, each
    /// layer's, the embeddings') and must add up what it takes from them, since a shared
    /// parameter (DeBERTa's relative embeddings) has a part in every layer's. Returns the
    /// loss, detached.
    pub fn backward_by_layer(
        &self,
        batch: &Batch,
        ctx: &Ctx,
        loss_of: impl FnOnce(&Tensor) -> Result<Tensor>,
        collect: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
        let mask = &self.mask(batch)?;
        let edited = self.edited(mask)?;
        let start = ctx.calls();
        let layers = self.num_layers();
        // 1. Forward, keeping each layer's input and where its dropout keys begin.
        let mut inputs = Vec::with_capacity(layers);
        let mut keys = Vec::with_capacity(layers);
        let mut x = without_graph(|| self.embed(batch, mask, ctx))?.detach();
        let shared = without_graph(|| self.shared(&x, batch, ctx))?;
        for i in 0..layers {
            keys.push(ctx.calls());
            let next = without_graph(|| self.layer(i, &x, mask, shared.as_ref(), &edited, ctx))?;
            inputs.push(x);
            x = next.detach();
        }
        // XLNet's encoding and masks hold no parameter (and drew their dropout once):
        // they serve the second pass too. DeBERTa's relative embeddings are rebuilt there.
        let kept = shared.filter(|s| matches!(s, Shared::Xlnet(_)));
        // 2. Head and loss with a graph, from the last hidden state as a leaf.
        let leaf = Var::from_tensor(&x)?;
        drop(x);
        let last = self.finish(leaf.as_tensor(), ctx)?;
        let (_, logits) = self.top(&last, mask, ctx)?;
        let logits = logits.ok_or_else(|| anyhow!("the model was built without a task head"))?;
        let loss = loss_of(&logits)?;
        let grads = loss.backward()?;
        collect(&grads)?;
        let mut upstream = grads.get(leaf.as_tensor()).cloned();
        drop((grads, logits, leaf, last));
        let end = ctx.calls();
        // 3. Each layer again, last first: its output's gradient through to its input.
        for i in (0..layers).rev() {
            let (Some(g), Some(input)) = (upstream.take(), inputs.pop()) else {
                break;
            };
            ctx.set_calls(keys[i]);
            let leaf = Var::from_tensor(&input)?;
            drop(input);
            // Relative embeddings anew per layer: each layer's backward adds its share.
            let fresh = match &kept {
                Some(_) => None,
                None => self.shared(leaf.as_tensor(), batch, ctx)?,
            };
            let shared = kept.as_ref().or(fresh.as_ref());
            let out = self.layer(i, leaf.as_tensor(), mask, shared, &edited, ctx)?;
            let grads = (out * g)?.sum_all()?.backward()?;
            collect(&grads)?;
            upstream = grads.get(leaf.as_tensor()).cloned();
        }
        // 4. The embeddings.
        if let Some(g) = upstream {
            ctx.set_calls(start);
            let grads = (self.embed(batch, mask, ctx)? * g)?.sum_all()?.backward()?;
            collect(&grads)?;
        }
        ctx.set_calls(end);
        Ok(loss.detach())
    }
}
