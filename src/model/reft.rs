//! LoReFT (Wu et al., 2024, "ReFT: Representation Finetuning for Language Models"; pyreft's
//! `LoreftIntervention`): the frozen model's hidden states h at chosen layers and
//! positions become h + Rᵀ(Wh + b − Rh), with R (r × d) of orthonormal rows, W (r × d) and
//! b (r) learned; pyreft then applies dropout to the edited state.
//!
//! As pyreft applies it to classification: the output of each chosen layer
//! (`block_output`), at the first N and/or last M real tokens of each sequence (`fN`, `lM`,
//! `fN+lM`; [CLS] and the final [SEP] for `f1+l1`), each group with its own intervention
//! (pyreft's default, `share_weights` off), at most half the sequence each
//! (pyreft's `get_intervention_locations`).
//!
//! R stays orthonormal through torch's Householder parametrization
//! (`torch.nn.utils.parametrizations.orthogonal`, `orthogonal_map="householder"`): the
//! trained tensor X (d × r) holds r Householder vectors below its diagonal, and
//! R(X)ᵀ = H₁⋯H_r·I[:, :r] with column j's sign that of X[j, j]. Two deviations, both in
//! how R moves, not in the function: torch's default `use_trivialization=True` trains X
//! from zero against a random d × d orthogonal basis (a buffer pyreft never saves); here X
//! starts at R's own Householder vectors (torch's `use_trivialization=False`), so nothing
//! but X is stored. And torch takes the column signs as `X.diagonal().int()`, which weight
//! decay turns from ±1 to 0 after one step (collapsing R); here they are the diagonal's
//! signs.
//!
//! Parameters, per layer L and group (`first`, `last`):
//! `encoder.layer.L.loreft.first.rotate` (X, d × r), `….source.weight` (r × d) and
//! `….source.bias` (r), pyreft's `learned_source` initialised as torch's nn.Linear.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::ctx::{Ctx, Dropout};
use super::params::{Init, Path};

/// Which tokens of each sequence an intervention edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub first: usize,
    pub last: usize,
}

impl Positions {
    /// pyreft's position strings: `f1`, `l2`, `f1+l1`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("`{s}`: expected fN, lN or fN+lM (the first N and last M tokens), e.g. f1+l1")
        };
        let mut p = Positions { first: 0, last: 0 };
        for part in s.split('+') {
            let (slot, n) = match part.split_at_checked(1) {
                Some(("f", n)) => (&mut p.first, n),
                Some(("l", n)) => (&mut p.last, n),
                _ => return Err(bad()),
            };
            if *slot != 0 {
                return Err(bad());
            }
            *slot = n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        }
        Ok(p)
    }

    /// The groups with their own intervention: (`first`, N) and/or (`last`, M).
    pub fn groups(self) -> Vec<&'static str> {
        [("first", self.first), ("last", self.last)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(g, _)| g)
            .collect()
    }

    /// The edited tokens of each group, from the attention mask (batch, seq) of
    /// right-padded sequences: the first min(N, len/2) tokens, the last min(M, len/2)
    /// real ones.
    pub fn masks(self, attention_mask: &Tensor) -> Result<Vec<Edited>> {
        let (b, t) = attention_mask.dims2()?;
        let lens: Vec<f32> = attention_mask.sum(1)?.to_dtype(DType::F32)?.to_vec1()?;
        // pyreft hands each intervention max(N, M) slots per example, in position order,
        // the unused ones last (get_intervention_locations).
        let width = self.first.max(self.last);
        let none = (b * width) as u32;
        let mut out = Vec::new();
        for group in self.groups() {
            let mut m = vec![0f32; b * t];
            let mut slot = vec![none; b * t];
            for (row, len) in lens.iter().enumerate() {
                let len = *len as usize;
                let range = match group {
                    "first" => 0..self.first.min(len / 2),
                    _ => len - self.last.min(len / 2)..len,
                };
                for (k, j) in range.enumerate() {
                    m[row * t + j] = 1.0;
                    slot[row * t + j] = (row * width + k) as u32;
                }
            }
            let device = attention_mask.device();
            out.push(Edited {
                group,
                mask: Tensor::from_vec(m, (b, t, 1), device)?,
                slot: Tensor::from_vec(slot, b * t, device)?,
                slots: (b, width),
            });
        }
        Ok(out)
    }
}

/// One group's edited tokens: `mask` (batch, seq, 1), one where edited; each token's
/// `slot` (batch·seq) among the (batch, width) states pyreft gathers for the intervention
/// (batch·width for a token not edited), which is where its dropout mask is drawn.
pub struct Edited {
    pub group: &'static str,
    pub mask: Tensor,
    slot: Tensor,
    slots: (usize, usize),
}

/// The interventions of a LoReFT run per encoder layer (empty where none), for `layers`
/// (`all`, or 0-based indices) at `positions`, rank `r`.
pub fn load_layers(
    root: &Path,
    n_layers: usize,
    d: usize,
    cfg: &super::AdapterConfig,
    positions: Positions,
) -> Result<Vec<Vec<Loreft>>> {
    let chosen = layers(&cfg.targets, n_layers).map_err(crate::error::user)?;
    (0..n_layers)
        .map(|i| {
            if !chosen.contains(&i) {
                return Ok(Vec::new());
            }
            let path = root.pp(format!("encoder.layer.{i}"));
            positions
                .groups()
                .into_iter()
                .map(|g| Loreft::load(&path, g, d, cfg.r, cfg.dropout))
                .collect()
        })
        .collect()
}

/// `all`, or layer indices below `n`.
pub fn layers(spec: &[String], n: usize) -> std::result::Result<Vec<usize>, String> {
    if spec.iter().any(|s| s == "all") {
        return Ok((0..n).collect());
    }
    let mut out = Vec::new();
    for s in spec {
        match s.parse::<usize>() {
            Ok(i) if i < n => out.push(i),
            _ => {
                return Err(format!(
                    "loreft layer `{s}`: expected `all` or a layer index from 0 to {}",
                    n - 1
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("loreft layers: name at least one layer, or `all`".into());
    }
    Ok(out)
}

/// One intervention: Φ(h) = dropout(h + Rᵀ(Wh + b − Rh)) at its tokens.
#[derive(Debug, Clone)]
pub struct Loreft {
    group: &'static str,
    rotate: Tensor,
    weight: Tensor,
    bias: Tensor,
    dropout: Dropout,
    masks: Masks,
}

impl Loreft {
    /// `{path}.loreft.{group}.*`, new ones initialised as pyreft's (R from torch's
    /// `orthogonal_`, the source as nn.Linear).
    pub fn load(
        path: &Path,
        group: &'static str,
        d: usize,
        r: usize,
        dropout: f64,
    ) -> Result<Self> {
        // R's r rows are orthonormal in d dimensions: at most d of them. Checked before
        // R (d × r) and W (r × d) exist.
        if r > d {
            return Err(crate::error::user(format!(
                "--loreft-r (loreft_r) {r} is more than the hidden size {d}: the rotation's \
                 rows are orthonormal, so at most {d} of them"
            )));
        }
        let p = path.pp("loreft").pp(group);
        let rotate = p.get_or_compute("rotate", &[d, r], || {
            let g = p
                .draw(&[d, r], Init::Normal(1.0))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let g: Vec<f64> = g.into_iter().map(f64::from).collect();
            let x = householder(&g, d, r);
            Ok(Tensor::from_vec(
                x.iter().map(|v| *v as f32).collect::<Vec<_>>(),
                (d, r),
                &Device::Cpu,
            )?
            .to_device(p.device())?)
        })?;
        let bound = 1.0 / (d as f64).sqrt();
        let source = p.pp("source");
        Ok(Self {
            group,
            masks: Masks::new(&rotate)?,
            rotate,
            weight: source.get_or_init("weight", &[r, d], Init::Uniform(bound))?,
            bias: source.get_or_init("bias", &[r], Init::Uniform(bound))?,
            dropout: Dropout::new(dropout),
        })
    }

    pub fn group(&self) -> &'static str {
        self.group
    }

    /// Edit `h` (batch, seq, d) at the tokens of `at`.
    pub fn forward(&self, h: &Tensor, at: &Edited, ctx: &Ctx) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let rows = h.reshape((b * t, d))?;
        let r = rotation_with(&self.rotate, &self.masks)?; // (d, r): R's rows as columns
        let source = rows.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        let delta = (source - rows.matmul(&r)?)?.matmul(&r.t()?)?;
        let mut edited = (&rows + delta)?;
        if self.dropout.active(ctx) {
            // pyreft drops the gathered (batch, width, d) states: the mask is drawn over
            // those and each token takes its slot's row (a row of ones past the last).
            let (n, width) = at.slots;
            let ones = Tensor::ones((n * width, d), DType::F32, h.device())?;
            let keep = self.dropout.forward(&ones, ctx)?;
            let keep = Tensor::cat(&[keep, Tensor::ones((1, d), DType::F32, h.device())?], 0)?;
            edited = (edited * keep.index_select(&at.slot, 0)?)?;
        }
        let change = (edited - rows)?.reshape((b, t, d))?;
        Ok((h + change.broadcast_mul(&at.mask)?)?)
    }
}

/// Rᵀ (d × r) from the Householder vectors in X (d × r): H₁⋯H_r·I[:, :r], column j signed
/// as X[j, j]. Differentiable in X's strictly lower part, as torch's.
pub fn rotation(x: &Tensor) -> Result<Tensor> {
    rotation_with(x, &Masks::new(x)?)
}

/// The constant masks of the Householder map for an X of X's shape: its strictly lower part
/// and I[:, :r]. Built once per intervention, not per forward.
#[derive(Debug, Clone)]
struct Masks {
    lower: Tensor,
    eye: Tensor,
}

impl Masks {
    fn new(x: &Tensor) -> Result<Self> {
        let (d, r) = x.dims2()?;
        let mask = |keep: fn(usize, usize) -> bool| -> Result<Tensor> {
            let v: Vec<f32> = (0..d * r)
                .map(|k| keep(k / r, k % r) as u8 as f32)
                .collect();
            Ok(Tensor::from_vec(v, (d, r), x.device())?)
        };
        Ok(Self {
            lower: mask(|i, j| i > j)?,
            eye: mask(|i, j| i == j)?,
        })
    }
}

fn rotation_with(x: &Tensor, Masks { lower, eye }: &Masks) -> Result<Tensor> {
    let r = x.dim(1)?;
    let a = (x * lower)?;
    // τ = 2/vᵀv with v = e_j + A[:, j], so each H_j = I − τ v vᵀ is an exact reflection.
    let tau = ((a.sqr()?.sum_keepdim(0)? + 1.0)?.recip()? * 2.0)?; // (1, r)
    let v = (&a + eye)?;
    let mut q = eye.clone();
    for j in (0..r).rev() {
        let vj = v.narrow(1, j, 1)?; // (d, 1)
        let w = vj.t()?.matmul(&q)?; // (1, r)
        let tj = tau.narrow(1, j, 1)?;
        q = (q - vj.matmul(&w)?.broadcast_mul(&tj)?)?;
    }
    // The signs are constants: no gradient reaches X's diagonal.
    let signs = (x.detach() * eye)?.sum_keepdim(0)?.sign()?;
    Ok(q.broadcast_mul(&signs)?)
}

/// Householder QR of a d × r matrix (row-major, d ≥ r), as LAPACK's geqrf and torch's
/// right_inverse store it: the vectors below the diagonal (v = e_j + that column), the
/// sign of R's diagonal on it. `rotation` of the result is the matrix's orthonormal
/// factor with R's diagonal made positive, torch's `orthogonal_` of it.
pub fn householder(m: &[f64], d: usize, r: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    for j in 0..r {
        let alpha = a[j * r + j];
        let norm = (j..d).map(|i| a[i * r + j].powi(2)).sum::<f64>().sqrt();
        let tail = (norm * norm - alpha * alpha).max(0.0);
        let beta = if alpha >= 0.0 { -norm } else { norm };
        if tail == 0.0 {
            // No reflection needed (LAPACK's τ = 0): torch flips this diagonal's sign,
            // since its map always reflects.
            a[j * r + j] = -alpha.signum();
            for i in j + 1..d {
                a[i * r + j] = 0.0;
            }
            continue;
        }
        let tau = (beta - alpha) / beta;
        let scale = 1.0 / (alpha - beta);
        for i in j + 1..d {
            a[i * r + j] *= scale;
        }
        a[j * r + j] = beta;
        // Apply H = I − τ v vᵀ to the remaining columns.
        for k in j + 1..r {
            let dot = a[j * r + k] + (j + 1..d).map(|i| a[i * r + j] * a[i * r + k]).sum::<f64>();
            a[j * r + k] -= tau * dot;
            for i in j + 1..d {
                a[i * r + k] -= tau * dot * a[i * r + j];
            }
        }
        a[j * r + j] = beta.signum();
    }
    // Above the diagonal: R's entries, unused by the map; torch keeps them, zero is as good.
    for j in 0..r {
        for i in 0..j {
            a[i * r + j] = 0.0;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], d: usize, r: usize) -> Tensor {
        let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
        Tensor::from_vec(v, (d, r), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_householder_map_gives_the_orthonormal_factor_with_a_positive_diagonal() {
        let (d, r) = (7, 3);
        let g: Vec<f64> = (0..d * r)
            .map(|k| ((k * 37 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let q = rotation(&t(&householder(&g, d, r), d, r)).unwrap();
        let qtq = q.t().unwrap().matmul(&q).unwrap().to_vec2::<f32>().unwrap();
        for (i, row) in qtq.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-5, "QᵀQ[{i}][{j}] = {v}");
            }
        }
        // Qᵀ·G is upper triangular with a positive diagonal: Q spans G's columns in order.
        let qg = q
            .t()
            .unwrap()
            .matmul(&t(&g, d, r))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, row) in qg.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                match i.cmp(&j) {
                    std::cmp::Ordering::Greater => assert!(v.abs() < 1e-4, "[{i}][{j}] {v}"),
                    std::cmp::Ordering::Equal => assert!(*v > 0.0, "[{i}][{i}] {v}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn positions_parse_as_pyreft_and_clamp_to_half_a_sequence() {
        let p = Positions::parse("f1+l2").unwrap();
        assert_eq!((p.first, p.last), (1, 2));
        assert_eq!(Positions::parse("l3").unwrap().groups(), ["last"]);
        for bad in ["", "f", "f0", "x1", "f1+f2", "l1+", "f-1"] {
            assert!(Positions::parse(bad).is_err(), "{bad}");
        }
        // Rows of 6 and 3 real tokens in a batch of 6.
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 1., 1.], [1., 1., 1., 0., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let masks = p.masks(&mask).unwrap();
        let rows = |i: usize| masks[i].mask.squeeze(2).unwrap().to_vec2::<f32>().unwrap();
        let slots = |i: usize| masks[i].slot.to_vec1::<u32>().unwrap();
        assert_eq!(masks[0].group, "first");
        assert_eq!(
            rows(0),
            [[1., 0., 0., 0., 0., 0.], [1., 0., 0., 0., 0., 0.]]
        );
        // The last two real tokens, or one (half of three) in the short row.
        assert_eq!(
            rows(1),
            [[0., 0., 0., 0., 1., 1.], [0., 0., 1., 0., 0., 0.]]
        );
        // Two slots per row (max(1, 2)), in position order; 4 is no slot.
        assert_eq!(masks[0].slots, (2, 2));
        assert_eq!(slots(0), [0, 4, 4, 4, 4, 4, 2, 4, 4, 4, 4, 4]);
        assert_eq!(slots(1), [4, 4, 4, 4, 0, 1, 4, 4, 2, 4, 4, 4]);
    }
}
