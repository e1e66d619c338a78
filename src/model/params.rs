//! Parameters addressed by their Hugging Face names, each frozen or trainable.
//!
//! The store holds the checkpoint's tensors under canonical names (no `bert.`/`roberta.`
//! prefix: `encoder.layer.3.output.LayerNorm.weight`). When a module asks for a name,
//! the store answers with a plain tensor, or with a [`Var`] if the caller's predicate
//! says the name trains. The forward code cannot tell the difference; methods decide
//! what trains purely by name, from outside.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::user;

/// How to create a parameter the checkpoint does not hold (a fresh task head, an adapter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std²), as transformers' `_init_weights` (std = initializer_range = 0.02).
    Normal(f64),
    /// U(-b, b), as torch's `kaiming_uniform_(a=sqrt(5))` gives b = 1/sqrt(fan_in).
    Uniform(f64),
}

pub type Predicate = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Every parameter the model asked for, in the order of the names.
#[derive(Default)]
struct Registry {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
    created: Vec<String>,
}

pub struct ParamStore {
    /// The checkpoint's tensors; a trainable one is replaced by its variable's tensor once
    /// registered, so the checkpoint's copy is freed (full fine-tuning would otherwise hold
    /// every weight twice: 1.4 GB more at roberta-large).
    base: Mutex<HashMap<String, Tensor>>,
    trainable: Predicate,
    registry: Mutex<Registry>,
    rng: Mutex<StdRng>,
    device: Device,
    /// Keep the frozen weight matrices of linear layers by columns ([`Path::get_matrix`]).
    columns: bool,
}

impl ParamStore {
    /// `base`: checkpoint tensors under canonical names. `seed` drives the
    /// initialisation of parameters the checkpoint lacks (the task head).
    pub fn new(
        base: HashMap<String, Tensor>,
        device: Device,
        seed: u64,
        trainable: Predicate,
    ) -> Self {
        Self {
            base: Mutex::new(base),
            trainable,
            registry: Mutex::new(Registry::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            device,
            columns: false,
        }
    }

    /// A store in which nothing trains: inference. On the CPU it keeps the linear layers'
    /// weights by columns, the forward's fast order (`kernels::columns`: 23–27% more
    /// GFLOP/s at roberta-large's 512 rows); a training store keeps torch's order, which
    /// the backward's dx = dy·W reads fast instead.
    pub fn frozen(base: HashMap<String, Tensor>, device: Device) -> Self {
        let columns = device.is_cpu();
        Self {
            columns,
            ..Self::new(base, device, 0, Box::new(|_| false))
        }
    }

    pub fn root(&self) -> Path<'_> {
        Path {
            store: self,
            prefix: String::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.base_lock().contains_key(name)
    }

    /// The checkpoint's tensor under `name` (a trainable one's variable once registered).
    pub(crate) fn base_tensor(&self, name: &str) -> Option<Tensor> {
        self.base_lock().get(name).cloned()
    }

    fn base_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tensor>> {
        // As for the registry: a panic mid-insert leaves the map valid.
        self.base.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The trainable variables, by name.
    pub fn vars(&self) -> BTreeMap<String, Var> {
        self.lock().vars.clone()
    }

    /// Every parameter the model uses, trainable or not, by name.
    pub fn all(&self) -> BTreeMap<String, Tensor> {
        let reg = self.lock();
        let mut all = reg.frozen.clone();
        for (name, var) in &reg.vars {
            all.insert(name.clone(), var.as_tensor().clone());
        }
        all
    }

    /// Names of the parameters that were initialised because the checkpoint lacked them.
    pub fn created(&self) -> Vec<String> {
        self.lock().created.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned lock only means another thread panicked mid-insert of a BTreeMap
        // entry; the maps stay valid.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, name: &str, tensor: Tensor) -> Result<Tensor> {
        let mut reg = self.lock();
        if let Some(var) = reg.vars.get(name) {
            return Ok(var.as_tensor().clone());
        }
        if let Some(t) = reg.frozen.get(name) {
            return Ok(t.clone());
        }
        if (self.trainable)(name) {
            // Copy so that updates never write into the caller's base tensors; the store's
            // own entry then becomes the variable, freeing the checkpoint's copy.
            let var = Var::from_tensor(&tensor.copy()?)?;
            let t = var.as_tensor().clone();
            reg.vars.insert(name.to_string(), var);
            if let Some(b) = self.base_lock().get_mut(name) {
                *b = t.clone();
            }
            Ok(t)
        } else {
            let t = tensor.detach();
            reg.frozen.insert(name.to_string(), t.clone());
            Ok(t)
        }
    }

    fn init(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                (0..n).map(|_| (normal(&mut *rng) * std) as f32).collect()
            }
            Init::Uniform(bound) => {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                (0..n)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            }
        };
        Ok(Tensor::from_vec(data, shape, &self.device)?)
    }
}

/// A standard normal draw by Box–Muller; rand's distributions live in another crate.
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A position in the name tree, like `cd` into a module: `root.pp("encoder").pp("layer.0")`.
#[derive(Clone)]
pub struct Path<'a> {
    store: &'a ParamStore,
    prefix: String,
}

impl<'a> Path<'a> {
    pub fn pp(&self, name: impl AsRef<str>) -> Path<'a> {
        Path {
            store: self.store,
            prefix: self.name(name.as_ref()),
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{}", self.prefix, leaf)
        }
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// A parameter the checkpoint must hold, with exactly this shape.
    pub fn get(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        let name = self.name(leaf);
        let t = self.store.base_tensor(&name).ok_or_else(|| {
            user(format!(
                "the checkpoint has no tensor `{name}` (expected shape {shape:?})"
            ))
        })?;
        check_shape(&name, &t, shape)?;
        self.store.register(
            &name,
            t.to_dtype(DType::F32)?.to_device(&self.store.device)?,
        )
    }

    /// The weight matrix of a linear layer, as [`get`](Self::get). Frozen in a store that
    /// keeps them by columns, it is re-laid so, and the store's own entries then hold that
    /// copy alone: the weights stay in memory once.
    pub fn get_matrix(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        let name = self.name(leaf);
        let t = self.get(leaf, shape)?;
        if !self.store.columns || t.is_variable() {
            return Ok(t);
        }
        let cols = crate::kernels::columns(&t)?;
        let mut reg = self.store.lock();
        reg.frozen.insert(name.clone(), cols.clone());
        if let Some(b) = self.store.base_lock().get_mut(&name) {
            *b = cols.clone();
        }
        Ok(cols)
    }

    /// A parameter taken from the checkpoint when present, else freshly initialised.
    pub fn get_or_init(&self, leaf: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let name = self.name(leaf);
        if self.store.contains(&name) {
            return self.get(leaf, shape);
        }
        let t = self.store.init(shape, init)?;
        self.store.lock().created.push(name.clone());
        self.store.register(&name, t)
    }

    /// The checkpoint's tensor, or else `value()` (of `shape`) as a new parameter.
    pub fn get_or_compute(
        &self,
        leaf: &str,
        shape: &[usize],
        value: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let name = self.name(leaf);
        if self.store.contains(&name) {
            return self.get(leaf, shape);
        }
        let t = value()?;
        check_shape(&name, &t, shape)?;
        self.store.lock().created.push(name.clone());
        self.store.register(&name, t)
    }

    /// A fresh draw of `init` from the store's generator, registered nowhere (a value for
    /// [`get_or_compute`](Self::get_or_compute) to derive a parameter from).
    pub fn draw(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        self.store.init(shape, init)
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.store.contains(&self.name(leaf))
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dims() != shape {
        return Err(user(format!(
            "tensor `{name}` has shape {:?} in the checkpoint, but the config implies {shape:?}",
            t.dims()
        )));
    }
    if !t.dtype().is_float() {
        return Err(user(format!(
            "tensor `{name}` has dtype {:?} in the checkpoint; a parameter must be a float",
            t.dtype()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(trainable: Predicate) -> ParamStore {
        let mut base = HashMap::new();
        base.insert(
            "a.weight".to_string(),
            Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        base.insert(
            "a.bias".to_string(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        ParamStore::new(base, Device::Cpu, 7, trainable)
    }

    #[test]
    fn predicate_decides_what_trains() {
        let s = store(Box::new(|n| n.ends_with("bias")));
        let a = s.root().pp("a");
        a.get("weight", &[2, 3]).unwrap();
        a.get("bias", &[2]).unwrap();
        assert_eq!(s.vars().keys().collect::<Vec<_>>(), vec!["a.bias"]);
        assert_eq!(s.all().len(), 2);
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let s = store(Box::new(|_| false));
        let err = s
            .root()
            .pp("a")
            .get("weight", &[3, 2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.weight") && err.contains("[2, 3]"), "{err}");
        let err = s
            .root()
            .pp("b")
            .get("weight", &[1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.weight"), "{err}");
    }

    #[test]
    fn init_is_seeded_and_recorded() {
        let draw = || {
            let s = store(Box::new(|_| true));
            let t = s
                .root()
                .get_or_init("head.weight", &[4, 4], Init::Normal(0.02))
                .unwrap();
            assert_eq!(s.created(), vec!["head.weight"]);
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (x, y) = (draw(), draw());
        assert_eq!(x, y);
        let std = (x.iter().map(|v| v * v).sum::<f32>() / 16.0).sqrt();
        assert!(std > 0.005 && std < 0.05, "std {std}");
    }

    #[test]
    fn a_trainable_copy_leaves_the_callers_tensor_and_frees_the_stores() {
        let caller = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let mut base = HashMap::new();
        base.insert("a.weight".to_string(), caller.clone());
        let s = ParamStore::new(base, Device::Cpu, 7, Box::new(|_| true));
        let w = s.root().get("a.weight", &[2, 3]).unwrap();
        let var = s.vars().remove("a.weight").unwrap();
        var.set(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let sum = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(sum(&w), 0.0);
        // Updates never reach a tensor the caller still holds...
        assert_eq!(sum(&caller), 6.0);
        // ...and the store keeps no second copy: its entry is the variable, asked for again.
        assert_eq!(sum(&s.base_tensor("a.weight").unwrap()), 0.0);
        assert_eq!(sum(&s.root().get("a.weight", &[2, 3]).unwrap()), 0.0);
        assert!(s.contains("a.weight"));
    }

    #[test]
    fn an_inference_store_keeps_matrices_by_columns_and_once() {
        let w = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let base = HashMap::from([("a.weight".to_string(), w.clone())]);
        let s = ParamStore::frozen(base, Device::Cpu);
        let cols = s.root().get_matrix("a.weight", &[2, 3]).unwrap();
        // The same matrix, its columns contiguous...
        assert_eq!(cols.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(!cols.is_contiguous() && cols.t().unwrap().is_contiguous());
        // ...and the store's entries are that copy, not the rows as well.
        for t in [
            s.base_tensor("a.weight").unwrap(),
            s.all()["a.weight"].clone(),
        ] {
            assert!(t.t().unwrap().is_contiguous());
        }
        assert!(s
            .root()
            .get_matrix("a.weight", &[2, 3])
            .unwrap()
            .t()
            .unwrap()
            .is_contiguous());
        // A training store keeps torch's order, trainable or frozen.
        for trains in [true, false] {
            let base = HashMap::from([("a.weight".to_string(), w.clone())]);
            let s = ParamStore::new(base, Device::Cpu, 7, Box::new(move |_| trains));
            assert!(s
                .root()
                .get_matrix("a.weight", &[2, 3])
                .unwrap()
                .is_contiguous());
        }
    }
}
