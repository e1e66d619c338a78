//! Reading a Hugging Face checkpoint directory into tensors under canonical names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::Arch;
use crate::error::user;

/// The weight file of a model directory: model.safetensors, else pytorch_model.bin.
pub fn weight_file(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(user(format!(
        "{}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)",
        dir.display()
    )))
}

/// Load every float tensor of the checkpoint as f32 on the CPU, keyed by canonical name.
/// Tensors that are not part of an encoder or a classification head (MLM heads, buffers)
/// are dropped; so are integer buffers among them (`embeddings.token_type_ids`), but a
/// parameter (`.weight`, `.bias`, `.gamma`, `.beta`) that is not a float is refused,
/// naming the file and the tensor.
pub fn read_weights(dir: &Path, arch: Arch) -> Result<HashMap<String, Tensor>> {
    let path = weight_file(dir)?;
    let raw: Vec<(String, Tensor)> = if path.extension().is_some_and(|e| e == "safetensors") {
        candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| user(format!("cannot read {}: {e}", path.display())))?
            .into_iter()
            .collect()
    } else {
        super::pickle::read_pickle(&path)?
    };
    let mut out = HashMap::new();
    for (name, t) in raw {
        let Some(canon) = canonical_name(&name, arch) else {
            continue;
        };
        if !t.dtype().is_float() {
            if is_parameter(&canon) {
                return Err(user(format!(
                    "{}: tensor `{name}` has dtype {:?}; a parameter must be a float \
                     (f32, f16, bf16 or f64)",
                    path.display(),
                    t.dtype()
                )));
            }
            continue;
        }
        out.insert(canon, as_f32(&path, &name, t)?);
    }
    Ok(out)
}

/// A float tensor of `file` widened or narrowed to f32, the file and tensor named if not.
pub fn as_f32(file: &Path, name: &str, t: Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32).map_err(|e| {
        user(format!(
            "{}: tensor `{name}` of dtype {:?} cannot be read as f32: {e}",
            file.display(),
            t.dtype()
        ))
    })
}

/// Whether a canonical name is a learned parameter rather than a buffer.
fn is_parameter(canon: &str) -> bool {
    [".weight", ".bias"].iter().any(|s| canon.ends_with(s))
}

/// `bert.encoder.layer.0.attention.output.LayerNorm.gamma` → `encoder.layer.0.attention.output.LayerNorm.weight`.
/// Returns None for tensors the encoder never uses.
pub fn canonical_name(name: &str, arch: Arch) -> Option<String> {
    let prefix = format!("{}.", arch.prefix());
    let name = name.strip_prefix(&prefix).unwrap_or(name);
    let keep = [
        "embeddings.",
        "embeddings_project.",
        "encoder.",
        "pooler.",
        super::family::CLASSIFIER,
        super::family::SPAN_HEAD,
        // XLNet's.
        "word_embedding.",
        "layer.",
        "mask_emb",
        super::family::SUMMARY,
        super::family::LOGITS,
    ];
    if !keep.iter().any(|k| name.starts_with(k)) || name.ends_with("position_ids") {
        return None;
    }
    // Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta.
    let name = if name.contains("LayerNorm.") {
        name.replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias")
    } else {
        name.to_string()
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        let c = |n| canonical_name(n, Arch::Bert);
        assert_eq!(
            c("bert.encoder.layer.0.output.dense.weight").as_deref(),
            Some("encoder.layer.0.output.dense.weight")
        );
        assert_eq!(
            c("encoder.layer.0.output.dense.weight").as_deref(),
            Some("encoder.layer.0.output.dense.weight")
        );
        assert_eq!(
            c("bert.embeddings.LayerNorm.gamma").as_deref(),
            Some("embeddings.LayerNorm.weight")
        );
        assert_eq!(
            c("bert.embeddings.LayerNorm.beta").as_deref(),
            Some("embeddings.LayerNorm.bias")
        );
        assert_eq!(c("classifier.weight").as_deref(), Some("classifier.weight"));
        assert_eq!(c("cls.predictions.bias"), None);
        assert_eq!(c("bert.embeddings.position_ids"), None);
        assert_eq!(
            canonical_name(
                "roberta.encoder.layer.1.attention.self.key.bias",
                Arch::Roberta
            )
            .as_deref(),
            Some("encoder.layer.1.attention.self.key.bias")
        );
        assert_eq!(canonical_name("lm_head.dense.weight", Arch::Roberta), None);
    }

    /// The tiny BERT fixture with `edit` applied to its tensors, in a temporary directory.
    fn fixture_with(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
        let dir = tempfile::tempdir().unwrap();
        let mut t =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        edit(&mut t);
        candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
        dir
    }

    #[test]
    fn a_parameter_of_an_integer_dtype_is_a_user_error_naming_file_and_tensor() {
        let name = "bert.encoder.layer.0.output.dense.bias";
        let dir = fixture_with(|t| {
            let int = t[name].to_dtype(DType::I64).unwrap();
            t.insert(name.into(), int);
        });
        let err = read_weights(dir.path(), Arch::Bert).unwrap_err();
        assert!(crate::error::is_user_error(&err), "{err:#}");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("model.safetensors") && msg.contains(name) && msg.contains("I64"),
            "{msg}"
        );
        // Integer buffers are no parameters: dropped, as before.
        let dir = fixture_with(|t| {
            let ids = Tensor::zeros((1, 4), DType::I64, &Device::Cpu).unwrap();
            t.insert("bert.embeddings.token_type_ids".into(), ids);
        });
        let w = read_weights(dir.path(), Arch::Bert).unwrap();
        assert!(!w.contains_key("embeddings.token_type_ids"));
        // Half precision is a float: read as f32.
        let dir = fixture_with(|t| {
            let half = t[name].to_dtype(DType::F16).unwrap();
            t.insert(name.into(), half);
        });
        let w = read_weights(dir.path(), Arch::Bert).unwrap();
        assert_eq!(w["encoder.layer.0.output.dense.bias"].dtype(), DType::F32);
    }
}
