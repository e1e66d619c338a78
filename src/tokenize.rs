//! Text → token ids, and token ids → padded batches.
//!
//! Reads `tokenizer.json`, or builds the tokenizer from `vocab.txt` (BERT WordPiece),
//! `vocab.json` + `merges.txt` (RoBERTa's and DeBERTa v1's byte-level BPE) or `spm.model`
//! (DeBERTa v2/v3's SentencePiece Unigram; `deberta.rs`) or `spiece.model` (XLNet's;
//! `xlnet.rs`). Any padding or truncation
//! stored in the file is replaced by ours: truncation longest-first to `max_len`, and
//! padding to the longest sequence of each batch at collate time.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Device, Tensor};
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PostProcessor, PostProcessorWrapper, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::user;
use crate::model::{Arch, Batch, ModelConfig};

mod config;
mod deberta;
mod spm;
pub mod xlnet;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// The file the tokenizer was read from, for messages.
    source: PathBuf,
    pad_id: u32,
    /// RoBERTa has one token type: its tokenizer's pair type ids must not reach the model.
    single_type: bool,
    max_len: usize,
    /// SQuAD: tokens shared by neighbouring windows of a context.
    doc_stride: usize,
    /// XLNet's classifier token ends a sequence; every other family's starts it.
    cls_last: bool,
}

/// transformers' run_qa.py default `--doc_stride`.
pub const DOC_STRIDE: usize = 128;

impl TextEncoder {
    pub fn load(dir: &Path, cfg: &ModelConfig, max_len: usize) -> Result<Self> {
        if max_len < 4 {
            crate::user_bail!(
                "--max-seq-len {max_len} is too short: a pair needs at least 4 tokens for specials"
            );
        }
        // Longer sequences would index past the position table mid-run.
        let limit = cfg.max_tokens();
        if max_len > limit {
            crate::user_bail!(
                "--max-seq-len {max_len} is more than the model holds: at most {limit} tokens \
                 ({}: {})",
                dir.join("config.json").display(),
                cfg.describe_max_tokens()
            );
        }
        let (mut tokenizer, source) = read_tokenizer(dir, cfg.model_type)?;
        transformers_offsets(&mut tokenizer, dir);
        check_unknown(&tokenizer, &source)?;
        // Without the file's own padding and truncation, which ours replace, the specials
        // come out whole.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("clearing truncation: {e}"))?;
        check_ids(&tokenizer, &source, dir, cfg)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
        Ok(Self {
            tokenizer,
            source,
            pad_id: cfg.pad_token_id,
            single_type: cfg.type_vocab_size == 1,
            max_len,
            // run_qa's stride, or half the window when that is shorter (the settings pass
            // their own).
            doc_stride: DOC_STRIDE.min(max_len / 2),
            cls_last: cfg.model_type.family().cls_last,
        })
    }

    /// Windows of SQuAD contexts overlap by `stride` tokens.
    pub fn with_doc_stride(mut self, stride: usize) -> Self {
        self.doc_stride = stride;
        self
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn encode(&self, first: &str, second: Option<&str>) -> Result<Encoded> {
        Ok(self.encode_checked(first, second)?.0)
    }

    /// As [`encode`](Self::encode), and whether the text was longer than the window and
    /// cut to fit.
    pub fn encode_checked(&self, first: &str, second: Option<&str>) -> Result<(Encoded, bool)> {
        let enc = match second {
            Some(b) => self.tokenizer.encode((first, b), true),
            None => self.tokenizer.encode(first, true),
        }
        .map_err(|e| anyhow::anyhow!("tokenizing {first:?} with {}: {e}", self.source.display()))?;
        let ids = enc.get_ids().to_vec();
        let type_ids = if self.single_type {
            vec![0; ids.len()]
        } else {
            enc.get_type_ids().to_vec()
        };
        let cut = !enc.get_overflowing().is_empty();
        Ok((Encoded { ids, type_ids }, cut))
    }
}

/// A question-context pair tokenized as windows over the context, as transformers' fast
/// tokenizers make them for run_qa.py (`truncation="only_second"`, `stride`,
/// `return_overflowing_tokens`, `return_offsets_mapping`).
pub struct QaEncoder {
    tokenizer: Tokenizer,
    single_type: bool,
    cls_last: bool,
    max_len: usize,
    stride: usize,
}

/// One window of a question-context pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub encoded: Encoded,
    /// Per token, the context characters it covers; None for the question and specials.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Where the classifier token is (run_qa's `input_ids.index(cls_token_id)`): 0, or
    /// the last token for XLNet.
    pub cls: usize,
}

impl TextEncoder {
    /// Windows of `max_len` tokens over the context, overlapping by the doc stride.
    pub fn qa(&self) -> Result<QaEncoder> {
        let stride = self.doc_stride;
        if stride >= self.max_len {
            crate::user_bail!(
                "--doc-stride {stride} must be less than --max-seq-len {}",
                self.max_len
            );
        }
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: self.max_len,
                strategy: TruncationStrategy::OnlySecond,
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow::anyhow!("setting truncation: {e}"))?;
        Ok(QaEncoder {
            tokenizer,
            single_type: self.single_type,
            cls_last: self.cls_last,
            max_len: self.max_len,
            stride,
        })
    }
}

impl QaEncoder {
    pub fn windows(&self, question: &str, context: &str) -> Result<Vec<Window>> {
        // The tokenizer asserts (panics) when the stride does not fit beside the question:
        // check first. A question longer than the window fails here too.
        let asked = self
            .tokenizer
            .encode(question, false)
            .map(|e| e.len())
            .unwrap_or(usize::MAX);
        let specials = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let room = self.max_len.saturating_sub(asked.saturating_add(specials));
        if self.stride >= room {
            crate::user_bail!(
                "question {question:?} leaves {room} of --max-seq-len {} tokens for its context, \
                 not more than --doc-stride {}: raise --max-seq-len or lower --doc-stride",
                self.max_len,
                self.stride
            );
        }
        let enc = self
            .tokenizer
            .encode_char_offsets((question, context), true)
            .map_err(|e| anyhow::anyhow!("tokenizing question {question:?}: {e}"))?;
        let mut first = enc.clone();
        let rest = first.take_overflowing();
        Ok(std::iter::once(first)
            .chain(rest)
            .map(|e| {
                let ids = e.get_ids().to_vec();
                let type_ids = if self.single_type {
                    vec![0; ids.len()]
                } else {
                    e.get_type_ids().to_vec()
                };
                let offsets = e
                    .get_sequence_ids()
                    .iter()
                    .zip(e.get_offsets())
                    .map(|(s, o)| (*s == Some(1)).then_some(*o))
                    .collect();
                let cls = match self.cls_last {
                    true => ids.len().saturating_sub(1),
                    false => 0,
                };
                Window {
                    encoded: Encoded { ids, type_ids },
                    offsets,
                    cls,
                }
            })
            .collect())
    }
}

/// The tokenizer of `dir`, and the file it was read from.
fn read_tokenizer(dir: &Path, arch: Arch) -> Result<(Tokenizer, PathBuf)> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        let tok = Tokenizer::from_file(&json)
            .map_err(|e| user(format!("cannot read {}: {e}", json.display())))?;
        return Ok((tok, json));
    }
    match arch {
        Arch::Bert | Arch::Electra => {
            let vocab = dir.join("vocab.txt");
            if !vocab.is_file() {
                crate::user_bail!("{}: no tokenizer.json or vocab.txt", dir.display());
            }
            let vocab_s = vocab.to_string_lossy();
            let wp = WordPiece::from_file(&vocab_s)
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| user(format!("cannot read {}: {e}", vocab.display())))?;
            let id = |t: &str| {
                wp_id(&wp, t).ok_or_else(|| user(format!("{}: no {t} token", vocab.display())))
            };
            let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
            let mut tok = Tokenizer::new(wp);
            tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase(dir))));
            tok.with_pre_tokenizer(Some(BertPreTokenizer));
            tok.with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
            let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect();
            tok.add_special_tokens(&specials);
            Ok((tok, vocab))
        }
        Arch::Roberta => {
            let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
            if !vocab.is_file() || !merges.is_file() {
                crate::user_bail!(
                    "{}: no tokenizer.json, nor vocab.json with merges.txt",
                    dir.display()
                );
            }
            let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                .build()
                .map_err(|e| user(format!("cannot read {}: {e}", vocab.display())))?;
            let id = |t: &str| {
                tokenizers::Model::token_to_id(&bpe, t)
                    .ok_or_else(|| user(format!("{}: no {t} token", vocab.display())))
            };
            let (bos, eos) = (id("<s>")?, id("</s>")?);
            let mut tok = Tokenizer::new(bpe);
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            tok.with_post_processor(Some(RobertaProcessing::new(
                ("</s>".into(), eos),
                ("<s>".into(), bos),
            )));
            tok.with_decoder(Some(ByteLevel::default()));
            let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>"]
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .chain(std::iter::once(
                    AddedToken::from("<mask>", true).lstrip(true),
                ))
                .collect();
            tok.add_special_tokens(&specials);
            Ok((tok, vocab))
        }
        Arch::DebertaV2 => {
            if !dir.join("spm.model").is_file() {
                crate::user_bail!("{}: no tokenizer.json or spm.model", dir.display());
            }
            Ok((deberta::from_spm(dir)?, dir.join("spm.model")))
        }
        Arch::Xlnet => {
            if !dir.join("spiece.model").is_file() {
                crate::user_bail!("{}: no tokenizer.json or spiece.model", dir.display());
            }
            Ok((xlnet::from_spiece(dir)?, dir.join("spiece.model")))
        }
        Arch::Deberta => {
            if !dir.join("vocab.json").is_file() || !dir.join("merges.txt").is_file() {
                crate::user_bail!(
                    "{}: no tokenizer.json, nor vocab.json with merges.txt",
                    dir.display()
                );
            }
            Ok((deberta::from_bpe(dir)?, dir.join("vocab.json")))
        }
    }
}

/// A word outside the vocabulary becomes the unknown token; a tokenizer whose unknown
/// token is not in its vocabulary (or that has none) fails on the first such word, which
/// is a data sentence far from the file at fault: refuse the file instead. A BPE without
/// an unknown token drops what it cannot spell, as transformers' does (byte-level BPE
/// spells everything).
fn check_unknown(tokenizer: &Tokenizer, source: &Path) -> Result<()> {
    use tokenizers::Model;
    let model = tokenizer.get_model();
    let missing = |unk: &str| model.token_to_id(unk).is_none();
    let why = match model {
        ModelWrapper::WordPiece(m) if missing(&m.unk_token) => unk_missing(&m.unk_token),
        ModelWrapper::WordLevel(m) if missing(&m.unk_token) => unk_missing(&m.unk_token),
        ModelWrapper::BPE(m) => match m.get_unk_token() {
            Some(unk) if missing(unk) => unk_missing(unk),
            _ => return Ok(()),
        },
        // Unigram keeps its unknown id private: a private-use character, in no released
        // vocabulary, shows whether it has one.
        ModelWrapper::Unigram(m) if m.tokenize("\u{F8FF}").is_err() => {
            "the Unigram model has no unknown token (`unk_id` is null)".to_string()
        }
        _ => return Ok(()),
    };
    crate::user_bail!(
        "{}: {why}, so no word outside the vocabulary can be tokenized",
        source.display()
    )
}

fn unk_missing(unk: &str) -> String {
    format!("the unknown token `{unk}` (`unk_token`) is not in the vocabulary")
}

/// Every id the tokenizer can emit indexes the word embeddings, whose rows are config.json's
/// vocab_size (the loader checks the tensor against it): an id past them would fail inside
/// an index-select mid-run. The ids are the vocabulary's, the added tokens' and the
/// specials the post-processor inserts (tokenizer.json names their ids itself).
fn check_ids(tokenizer: &Tokenizer, source: &Path, dir: &Path, cfg: &ModelConfig) -> Result<()> {
    let mut largest: Option<(u32, String)> = tokenizer
        .get_vocab(true)
        .into_iter()
        .map(|(t, id)| (id, t))
        .max();
    for pair in [None, Some("")] {
        let enc = match pair {
            Some(b) => tokenizer.encode(("", b), true),
            None => tokenizer.encode("", true),
        }
        .map_err(|e| {
            user(format!(
                "{}: cannot add the special tokens: {e}",
                source.display()
            ))
        })?;
        for (&id, t) in enc.get_ids().iter().zip(enc.get_tokens()) {
            if largest.as_ref().is_none_or(|(top, _)| id > *top) {
                largest = Some((id, t.clone()));
            }
        }
    }
    match largest {
        Some((id, token)) if id as usize >= cfg.vocab_size => crate::user_bail!(
            "{}: the tokenizer's largest id is {id} (`{token}`), past the model's word \
             embeddings: vocab_size in {} is {}, so ids run from 0 to {}",
            source.display(),
            dir.join("config.json").display(),
            cfg.vocab_size,
            cfg.vocab_size.saturating_sub(1)
        ),
        _ => Ok(()),
    }
}

/// transformers' RoBERTa fast tokenizer rebuilds the post-processor with the
/// `add_prefix_space` and `trim_offsets` of tokenizer_config.json (false and true when
/// unset), whatever tokenizer.json says. Ids do not change; the offsets of a window's first
/// context token do (with `add_prefix_space` its leading space counts), and SQuAD answers
/// are cut from the context by them.
fn transformers_offsets(tokenizer: &mut Tokenizer, dir: &Path) {
    let Some(PostProcessorWrapper::Roberta(r)) = tokenizer.get_post_processor() else {
        return;
    };
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let flag = |key: &str, default: bool| {
        config
            .as_ref()
            .and_then(|v| v.get(key).and_then(|b| b.as_bool()))
            .unwrap_or(default)
    };
    let rebuilt = RobertaProcessing::new(r.get_sep_copy(), r.get_cls_copy())
        .add_prefix_space(flag("add_prefix_space", false))
        .trim_offsets(flag("trim_offsets", true));
    tokenizer.with_post_processor(Some(rebuilt));
}

fn wp_id(wp: &WordPiece, t: &str) -> Option<u32> {
    tokenizers::Model::token_to_id(wp, t)
}

/// `do_lower_case` from tokenizer_config.json; BERT vocabularies default to lowercase.
fn lowercase(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

/// Pad a set of examples to the longest among them.
pub fn collate(examples: &[&Encoded], pad_id: u32, device: &Device) -> Result<Batch> {
    let b = examples.len();
    let t = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * t);
    let mut types = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for e in examples {
        let pad = t - e.len();
        ids.extend_from_slice(&e.ids);
        ids.extend(std::iter::repeat_n(pad_id, pad));
        types.extend_from_slice(&e.type_ids);
        types.extend(std::iter::repeat_n(0, pad));
        mask.extend(std::iter::repeat_n(1f32, e.len()));
        mask.extend(std::iter::repeat_n(0f32, pad));
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        token_type_ids: Tensor::from_vec(types, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, t), device)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(model: &str, post: &str) -> Tokenizer {
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
            "post_processor": {post}, "decoder": null, "model": {model}}}"#
        );
        json.parse().unwrap()
    }

    fn config(vocab_size: usize) -> ModelConfig {
        ModelConfig::parse(&format!(
            r#"{{"model_type": "bert", "vocab_size": {vocab_size}, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 20}}"#
        ))
        .unwrap()
    }

    const WORDPIECE: &str = r###"{"type": "WordPiece", "unk_token": "[UNK]",
        "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
        "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "a": 3}}"###;
    const BERT_POST: &str =
        r#"{"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]}"#;

    #[test]
    fn a_model_without_its_unknown_token_is_refused_naming_the_file() {
        let file = Path::new("m/tokenizer.json");
        assert!(check_unknown(&tokenizer(WORDPIECE, BERT_POST), file).is_ok());
        let missing = WORDPIECE.replace(r#""unk_token": "[UNK]""#, r#""unk_token": "[X]""#);
        let err = check_unknown(&tokenizer(&missing, BERT_POST), file).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        let msg = err.to_string();
        assert!(
            msg.contains("m/tokenizer.json") && msg.contains("`[X]`"),
            "{msg}"
        );
        let unigram = |unk: &str| {
            tokenizer(
                &format!(
                    r#"{{"type": "Unigram", "unk_id": {unk}, "byte_fallback": false,
                    "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0]]}}"#
                ),
                "null",
            )
        };
        assert!(check_unknown(&unigram("0"), file).is_ok());
        let msg = check_unknown(&unigram("null"), file)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unk_id"), "{msg}");
    }

    #[test]
    fn ids_past_vocab_size_are_refused_with_the_specials_counted() {
        let (file, dir) = (Path::new("m/tokenizer.json"), Path::new("m"));
        let ok = tokenizer(WORDPIECE, BERT_POST);
        assert!(check_ids(&ok, file, dir, &config(4)).is_ok());
        let msg = check_ids(&ok, file, dir, &config(3))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("largest id is 3 (`a`)") && msg.contains("vocab_size"),
            "{msg}"
        );
        // Every vocabulary id fits; the post-processor's [SEP] does not.
        let post = BERT_POST.replace(r#"["[SEP]", 2]"#, r#"["[SEP]", 9]"#);
        let msg = check_ids(&tokenizer(WORDPIECE, &post), file, dir, &config(4))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("largest id is 9 (`[SEP]`)"), "{msg}");
    }
}
