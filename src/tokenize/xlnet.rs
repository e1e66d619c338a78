//! XLNet's tokenizer for a checkpoint without tokenizer.json, from `spiece.model` and
//! tokenizer_config.json as transformers 5.25 converts them (the tokenizer.json it writes
//! is tests/fixtures/tiny-xlnet-fast; tests/golden/make_xlnet_golden.py checks both
//! against each other and records ids, types and offsets):
//!
//! - a Unigram model over the SentencePiece pieces and scores (no byte fallback);
//! - the normaliser: "``" and "''" to '"', NFKD with accents stripped unless
//!   `keep_accents`, lower-casing with `do_lower_case`, then the model's own precompiled
//!   character map;
//! - words split on whitespace (so runs of it count once, `remove_space`), each prefixed
//!   with "▁";
//! - the special tokens at the end: `A <sep> <cls>` typed 0 0 2, `A <sep> B <sep> <cls>`
//!   typed 0 0 1 1 2; control pieces (and the unknown one) are special tokens matched on
//!   the raw text.
//!
//! Inputs are padded on the left, as XLNet reads its summary from the last token.

use std::path::Path;

use anyhow::Result;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{
    Lowercase, Precompiled, Replace, Sequence as Normalizers, StripAccents, NFKD,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use super::config;
use super::spm::{self, PieceType};
use crate::error::user;

/// XLNet's tokenizer from `{dir}/spiece.model` and `{dir}/tokenizer_config.json`.
pub fn from_spiece(dir: &Path) -> Result<Tokenizer> {
    let file = dir.join("spiece.model");
    let bytes =
        std::fs::read(&file).map_err(|e| user(format!("cannot read {}: {e}", file.display())))?;
    let bad = |e: String| {
        user(format!(
            "{}: not a SentencePiece model: {e}",
            file.display()
        ))
    };
    let model = spm::parse(&bytes).map_err(bad)?;
    let cfg = config::read(dir);
    let flag = |key: &str, default: bool| config::flag(&cfg, key, default);
    let token = |key: &str, default: &str| config::token(&cfg, key, default);
    let vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|p| (p.text.clone(), p.score as f64))
        .collect();
    let unigram = Unigram::from(vocab, Some(model.unk_id), false)
        .map_err(|e| user(format!("{}: {e}", file.display())))?;
    let mut tok = Tokenizer::new(unigram);

    let quotes = |from: &str| Replace::new(ReplacePattern::String(from.into()), "\"");
    let mut norms: Vec<NormalizerWrapper> = vec![
        quotes("``").map_err(|e| anyhow::anyhow!("{e}"))?.into(),
        quotes("''").map_err(|e| anyhow::anyhow!("{e}"))?.into(),
    ];
    if !flag("keep_accents", false) {
        norms.extend([NFKD.into(), StripAccents.into()]);
    }
    if flag("do_lower_case", false) {
        norms.push(Lowercase.into());
    }
    if !model.charsmap.is_empty() {
        let map = Precompiled::from(&model.charsmap)
            .map_err(|e| bad(format!("its precompiled character map: {e}")))?;
        norms.push(map.into());
    }
    tok.with_normalizer(Some(Normalizers::new(norms)));
    let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
    tok.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        WhitespaceSplit.into(),
        metaspace.clone().into(),
    ])));
    tok.with_decoder(Some(metaspace));

    let specials: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Control | PieceType::Unknown))
        .map(|p| AddedToken::from(p.text.clone(), true))
        .collect();
    tok.add_special_tokens(&specials);
    let (cls, sep) = (token("cls_token", "<cls>"), token("sep_token", "<sep>"));
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| user(format!("{}: no {t} piece", file.display())))
    };
    let template = TemplateProcessing::builder()
        .try_single(format!("$A:0 {sep}:0 {cls}:2"))
        .and_then(|b| b.try_pair(format!("$A:0 {sep}:0 $B:1 {sep}:1 {cls}:2")))
        .map_err(|e| anyhow::anyhow!("XLNet template: {e}"))?
        .special_tokens(vec![(sep.as_str(), id(&sep)?), (cls.as_str(), id(&cls)?)])
        .build()
        .map_err(|e| anyhow::anyhow!("XLNet template: {e}"))?;
    tok.with_post_processor(Some(template));
    Ok(tok)
}
