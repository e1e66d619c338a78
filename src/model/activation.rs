//! The activations config.json names (`hidden_act`, DeBERTa's `pooler_hidden_act`), as
//! transformers' ACT2FN spells them; `nn::activate` applies them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU with erf, transformers' "gelu".
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation: "gelu_new", "gelu_pytorch_tanh", "gelu_fast".
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    /// DeBERTa's `pooler_hidden_act` may be "tanh" (BERT's pooler is tanh by fiat).
    #[serde(rename = "tanh")]
    Tanh,
}
