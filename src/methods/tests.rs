//! The methods' selection rules and masks, by test.

use super::*;
use crate::optim::Mask;
use candle_core::{DType, Device};

const NAMES: &[&str] = &[
    "embeddings.word_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "encoder.layer.0.attention.self.query.bias",
    "encoder.layer.0.output.LayerNorm.bias",
    "pooler.dense.weight",
];

fn spec(method: Method) -> MethodSpec {
    MethodSpec::example(method, 0).unwrap()
}

/// `method` with a subset's --fraction.
fn with_fraction(method: impl Into<Methods>, fraction: f64, seed: u64) -> MethodSpec {
    let mut flags = MethodFlags::default();
    flags.subset.fraction = Some(fraction);
    MethodSpec::new(method, flags, seed).unwrap()
}

fn trains(m: Method) -> Vec<&'static str> {
    let known: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let sel = m.select(&spec(m), &known).unwrap();
    let mut out: Vec<&str> = NAMES
        .iter()
        .copied()
        .filter(|n| (sel.trainable)(n))
        .collect();
    for extra in [
        "classifier.weight",
        "classifier.out_proj.bias",
        "pooler.dense.bias",
    ] {
        if (sel.trainable)(extra) {
            out.push(extra);
        }
    }
    out
}

#[test]
fn selections() {
    assert_eq!(trains(full::METHOD).len(), NAMES.len() + 3);
    assert_eq!(
        trains(bitfit::METHOD),
        vec![
            "encoder.layer.0.attention.self.query.bias",
            "encoder.layer.0.output.LayerNorm.bias",
            "classifier.weight",
            "classifier.out_proj.bias",
            "pooler.dense.bias"
        ]
    );
    // pooler.dense.bias is not in the checkpoint here: new parameters always train.
    assert_eq!(
        trains(layernorm::METHOD),
        vec![
            "embeddings.LayerNorm.weight",
            "encoder.layer.0.output.LayerNorm.bias",
            "classifier.weight",
            "classifier.out_proj.bias",
            "pooler.dense.bias"
        ]
    );
}

fn base() -> HashMap<String, Tensor> {
    let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    [
        ("embeddings.LayerNorm.weight", t(4)),
        ("encoder.layer.0.output.LayerNorm.weight", t(4)),
        ("encoder.layer.0.output.dense.weight", t(8)),
        ("classifier.weight", t(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn ones(sel: &Selection) -> BTreeMap<String, Vec<f32>> {
    sel.masks
        .named
        .iter()
        .map(|(k, m)| match m {
            Mask::Fixed(t) | Mask::Gradient(t) => (k.clone(), t.to_vec1::<f32>().unwrap()),
            _ => (k.clone(), vec![]),
        })
        .collect()
}

#[test]
fn fisher_layernorm_keeps_the_top_fraction_of_layernorm() {
    let mut fisher = BTreeMap::new();
    fisher.insert(
        "embeddings.LayerNorm.weight".to_string(),
        Tensor::new(&[9f32, 1., 2., 8.], &Device::Cpu).unwrap(),
    );
    fisher.insert(
        "encoder.layer.0.output.LayerNorm.weight".to_string(),
        Tensor::new(&[3f32, 7., 0., 4.], &Device::Cpu).unwrap(),
    );
    let spec = with_fraction(fisher_layernorm::METHOD, 0.5, 0);
    let sel = select(&spec, &base(), Some(&fisher)).unwrap();
    let m = ones(&sel);
    assert_eq!(m["embeddings.LayerNorm.weight"], vec![1., 0., 0., 1.]);
    assert_eq!(
        m["encoder.layer.0.output.LayerNorm.weight"],
        vec![0., 1., 0., 1.]
    );
    assert!(!(sel.trainable)("encoder.layer.0.output.dense.weight"));
    assert!(
        (sel.trainable)("classifier.weight") && !sel.masks.named.contains_key("classifier.weight")
    );
    assert!(matches!(sel.masks.rest, Mask::Dense));
    assert!(matches!(
        sel.masks.named["embeddings.LayerNorm.weight"],
        Mask::Fixed(_)
    ));
    assert_eq!(sel.rule, UpdateRule::Torch);
}

#[test]
fn random_layernorm_keeps_the_same_count_seeded() {
    let spec = with_fraction(random_layernorm::METHOD, 0.25, 5);
    let a = ones(&select(&spec, &base(), None).unwrap());
    let kept: f32 = a.values().flatten().sum();
    assert_eq!(kept, 2.0);
    assert_eq!(a, ones(&select(&spec, &base(), None).unwrap()));
}

#[test]
fn child_tuning_masks_as_the_reference_optimizer() {
    // F: a fresh Bernoulli mask on every trainable tensor, head and embeddings included.
    let spec = MethodSpec::example(child_f::METHOD, 0).unwrap();
    let sel = select(&spec, &base(), None).unwrap();
    assert!(sel.masks.named.is_empty());
    assert!(matches!(sel.masks.rest, Mask::Bernoulli { p } if p == 0.3));
    assert_eq!(sel.rule, UpdateRule::ChildTuning);
    assert!((sel.trainable)("embeddings.LayerNorm.weight"));
    // D: a gradient mask on encoder-layer tensors only, top 30% of their Fisher.
    let spec = MethodSpec::example(child_d::METHOD, 0).unwrap();
    assert!(
        select(&spec, &base(), None).is_err(),
        "child-d without Fisher"
    );
    let fisher: BTreeMap<String, Tensor> = base()
        .iter()
        .map(|(k, t)| {
            let n = t.elem_count();
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            (k.clone(), Tensor::from_vec(v, n, &Device::Cpu).unwrap())
        })
        .collect();
    let sel = select(&spec, &base(), Some(&fisher)).unwrap();
    let names: Vec<&String> = sel.masks.named.keys().collect();
    assert_eq!(
        names,
        vec![
            "encoder.layer.0.output.LayerNorm.weight",
            "encoder.layer.0.output.dense.weight"
        ]
    );
    assert!(sel
        .masks
        .named
        .values()
        .all(|m| matches!(m, Mask::Gradient(_))));
    assert!(matches!(sel.masks.rest, Mask::Dense));
    let kept: f32 = ones(&sel).values().flatten().sum();
    assert_eq!(kept, 4.0, "30% of 12 encoder-layer elements");
    assert_eq!(sel.rule, UpdateRule::ChildTuning);
}

#[test]
fn decay_rule() {
    assert!(decays("encoder.layer.0.attention.self.query.weight"));
    assert!(!decays("encoder.layer.0.attention.self.query.bias"));
    assert!(!decays("encoder.layer.0.attention.self.q_bias"));
    assert!(is_bias("encoder.layer.0.attention.self.v_bias"));
    assert!(!decays("embeddings.LayerNorm.weight"));
    assert!(!decays("encoder.layer.3.loreft.first.rotate"));
    assert!(!decays("encoder.layer.3.loreft.first.source.weight"));
    assert!(decays("classifier.weight"));
}

/// XLNet's names: `layer_norm`, its attention biases, layers without `encoder.`.
#[test]
fn xlnet_names_follow_the_same_rules() {
    assert!(is_layernorm("layer.1.rel_attn.layer_norm.weight"));
    assert!(is_layernorm("layer.0.ff.layer_norm.bias"));
    assert!(!is_layernorm("layer.0.ff.layer_1.weight"));
    for b in ["r_w_bias", "r_r_bias", "r_s_bias"] {
        assert!(is_bias(&format!("layer.0.rel_attn.{b}")));
        assert!(!decays(&format!("layer.0.rel_attn.{b}")));
    }
    assert!(!is_bias("layer.0.rel_attn.seg_embed"));
    assert!(decays("layer.0.rel_attn.q"));
    assert_eq!(layer_of("layer.11.rel_attn.q"), Some(11));
    assert_eq!(layer_of("word_embedding.weight"), None);
    assert!(is_encoder_layer("layer.0.ff.layer_2.bias"));
    assert!(is_head("logits_proj.weight") && is_head("sequence_summary.summary.bias"));
}

#[test]
fn unions_parse_and_senseless_ones_are_refused() {
    let m: Methods = "lora+LayerNorm".parse().unwrap();
    assert_eq!(m.to_string(), "lora+layernorm");
    assert!(m.has(lora::METHOD) && m.has(layernorm::METHOD) && !m.needs_fisher());
    assert_eq!(m.default_lr(), lora::METHOD.default_lr());
    let err = |s: &str| s.parse::<Methods>().unwrap_err();
    assert!(err("full+bitfit").contains("already trains every parameter"));
    assert!(err("layernorm+child-f").contains("its own optimizer"));
    assert!(err("lora+ina").contains("one adapter kind"));
    assert!(err("random+fisher-layernorm").contains("two masked subsets"));
    assert!(err("bitfit+bitfit").contains("listed twice"));
    assert!(err("lora+bias").contains("unknown method `bias`"));
    assert_eq!(
        "child-d".parse::<Methods>().unwrap(),
        Methods::one(child_d::METHOD)
    );
}

/// A union trains what either part trains; a tensor one part trains whole keeps no
/// mask from the other (bitfit's LayerNorm biases under random-layernorm).
#[test]
fn a_union_trains_what_either_part_trains() {
    let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    let base: HashMap<String, Tensor> = [
        ("embeddings.LayerNorm.weight", t(4)),
        ("embeddings.LayerNorm.bias", t(4)),
        ("encoder.layer.0.output.dense.bias", t(4)),
        ("encoder.layer.0.output.dense.weight", t(8)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let union: Methods = "bitfit+random-layernorm".parse().unwrap();
    let spec = with_fraction(union, 0.5, 3);
    let sel = select(&spec, &base, None).unwrap();
    for (name, trains) in [
        ("embeddings.LayerNorm.weight", true),
        ("embeddings.LayerNorm.bias", true),
        ("encoder.layer.0.output.dense.bias", true),
        ("encoder.layer.0.output.dense.weight", false),
        ("classifier.weight", true),
    ] {
        assert_eq!((sel.trainable)(name), trains, "{name}");
    }
    let masks = ones(&sel);
    assert_eq!(
        masks.keys().collect::<Vec<_>>(),
        ["embeddings.LayerNorm.weight"]
    );
    assert!(matches!(sel.rule, UpdateRule::Torch));
}
