//! DeBERTa's tokenizers for checkpoints without tokenizer.json, built from the files the
//! hub ships as transformers 5 builds them (`tests/golden/make_golden.py` checks ids,
//! type ids and offsets against it):
//!
//! - v2/v3, `spm.model`: DebertaV2Tokenizer. A Unigram model over the SentencePiece
//!   pieces and scores; the normalizer of its constructor (lower-casing with
//!   `do_lower_case`, runs of whitespace and any tab or newline to one space, NFC, trailing
//!   space stripped), which is not the SentencePiece model's own NFKC; Metaspace "▁",
//!   prepended to every word with `add_prefix_space` (the default) else the first,
//!   punctuation split off first with `split_by_punct`; `[CLS] A [SEP] B [SEP]`, types 0
//!   and 1. Control pieces are special tokens, user-defined pieces plain added tokens.
//! - v1, `vocab.json` + `merges.txt`: GPT-2's byte-level BPE with no normalizer and
//!   `[CLS] A [SEP] B [SEP]`, types 0 and 1: DeBERTa's own format and transformers 4's.
//!   transformers 5.24's DebertaTokenizer pairs as RoBERTa does (`[SEP] [SEP]`, one token
//!   type); that is not followed.

use std::path::Path;

use anyhow::Result;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, Strip, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::config;
use super::spm::{self, PieceType};
use crate::error::user;

/// What tokenizer_config.json says, with DebertaV2Tokenizer's and DebertaTokenizer's
/// defaults.
struct Settings {
    do_lower_case: bool,
    split_by_punct: bool,
    add_prefix_space: bool,
    cls: String,
    sep: String,
    unk: String,
    pad: String,
    mask: String,
}

impl Settings {
    fn read(dir: &Path, add_prefix_space: bool) -> Self {
        let cfg = config::read(dir);
        let flag = |key: &str, default: bool| config::flag(&cfg, key, default);
        let token = |key: &str, default: &str| config::token(&cfg, key, default);
        Self {
            do_lower_case: flag("do_lower_case", false),
            split_by_punct: flag("split_by_punct", false),
            add_prefix_space: flag("add_prefix_space", add_prefix_space),
            cls: token("cls_token", "[CLS]"),
            sep: token("sep_token", "[SEP]"),
            unk: token("unk_token", "[UNK]"),
            pad: token("pad_token", "[PAD]"),
            mask: token("mask_token", "[MASK]"),
        }
    }

    /// The named special tokens in transformers' order (bos and eos are cls and sep).
    fn specials(&self) -> Vec<AddedToken> {
        let mut names: Vec<&str> = Vec::new();
        for t in [&self.cls, &self.sep, &self.unk, &self.pad, &self.mask] {
            if !names.contains(&t.as_str()) {
                names.push(t);
            }
        }
        names
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect()
    }

    /// `[CLS] A [SEP] B [SEP]`, the second sequence typed 1.
    fn template(&self, tok: &Tokenizer, file: &Path) -> Result<TemplateProcessing> {
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| user(format!("{}: no {t} token", file.display())))
        };
        let (cls, sep) = (self.cls.as_str(), self.sep.as_str());
        TemplateProcessing::builder()
            .try_single(format!("{cls}:0 $A:0 {sep}:0"))
            .and_then(|b| b.try_pair(format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1")))
            .map_err(|e| anyhow::anyhow!("DeBERTa template: {e}"))?
            .special_tokens(vec![(cls, id(cls)?), (sep, id(sep)?)])
            .build()
            .map_err(|e| anyhow::anyhow!("DeBERTa template: {e}"))
    }
}

/// DeBERTa v2/v3's tokenizer from `spm.model` and tokenizer_config.json.
pub fn from_spm(dir: &Path) -> Result<Tokenizer> {
    let file = dir.join("spm.model");
    let bytes =
        std::fs::read(&file).map_err(|e| user(format!("cannot read {}: {e}", file.display())))?;
    let model = spm::parse(&bytes).map_err(|e| {
        user(format!(
            "{}: not a SentencePiece model: {e}",
            file.display()
        ))
    })?;
    let s = Settings::read(dir, true);
    let vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|p| (p.text.clone(), p.score as f64))
        .collect();
    // DebertaV2Tokenizer takes the unknown token's own index when a piece is it with
    // score 0, else the model's unk_id.
    let unk_id = vocab
        .iter()
        .position(|(t, score)| *t == s.unk && *score == 0.0)
        .unwrap_or(model.unk_id);
    let unigram = Unigram::from(vocab, Some(unk_id), false)
        .map_err(|e| user(format!("{}: {e}", file.display())))?;
    let mut tok = Tokenizer::new(unigram);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if s.do_lower_case {
        norms.push(Lowercase.into());
    }
    let runs = Replace::new(ReplacePattern::Regex(r"\s{2,}|[\n\r\t]".into()), " ")
        .map_err(|e| anyhow::anyhow!("DeBERTa normalizer: {e}"))?;
    norms.extend([runs.into(), NFC.into(), Strip::new(false, true).into()]);
    tok.with_normalizer(Some(Normalizers::new(norms)));
    let prepend = match s.add_prefix_space {
        true => PrependScheme::Always,
        false => PrependScheme::First,
    };
    let metaspace = Metaspace::new('▁', prepend, true);
    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if s.split_by_punct {
        pre.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    pre.push(metaspace.clone().into());
    tok.with_pre_tokenizer(Some(PreTokenizers::new(pre)));
    tok.with_decoder(Some(metaspace));
    // Control and user-defined pieces are added tokens, matched on the raw text.
    let piece_tokens = |kind: PieceType| -> Vec<AddedToken> {
        model
            .pieces
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| AddedToken::from(p.text.clone(), kind == PieceType::Control).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&piece_tokens(PieceType::Control));
    tok.add_tokens(&piece_tokens(PieceType::UserDefined));
    tok.add_special_tokens(&s.specials());
    let template = s.template(&tok, &file)?;
    tok.with_post_processor(Some(template));
    Ok(tok)
}

/// DeBERTa v1's tokenizer from `vocab.json` and `merges.txt`.
pub fn from_bpe(dir: &Path) -> Result<Tokenizer> {
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| user(format!("cannot read {}: {e}", vocab.display())))?;
    let s = Settings::read(dir, false);
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(s.add_prefix_space, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens(&s.specials());
    let template = s.template(&tok, &vocab)?;
    tok.with_post_processor(Some(template));
    Ok(tok)
}
