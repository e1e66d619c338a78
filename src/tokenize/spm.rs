//! The pieces of a SentencePiece model (`spm.model`, `spiece.model`: a protobuf
//! `ModelProto`): each piece's text, score and type, the unknown piece's id and the
//! normaliser's precompiled character map, which is all transformers reads from the file
//! to build DeBERTa-v2's and XLNet's tokenizers. A protobuf reader for those
//! fields, every other field skipped by its wire type.

/// sentencepiece_model.proto's `SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    /// [CLS], [SEP], [PAD]: never produced from text, only added.
    Control,
    /// Always emitted whole (transformers adds them as non-special tokens).
    UserDefined,
    Unused,
    Byte,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// `trainer_spec.unk_id` (protobuf default 0), as transformers' extractor reads it.
    pub unk_id: usize,
    /// `normalizer_spec.precompiled_charsmap`: the model's own normalisation table
    /// (XLNet's converter applies it; DeBERTa's does not), empty when absent.
    pub charsmap: Vec<u8>,
}

/// A protobuf message's bytes, read field by field.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// One field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("field of {n} bytes runs past the end"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next (field number, value), or None at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                return self.field();
            }
            2 => {
                let n = self.varint()? as usize;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(self.take(4)?.try_into().map_err(|_| "fixed32")?),
            w => {
                return Err(format!(
                    "wire type {w} (groups) is not in a SentencePiece model"
                ))
            }
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Parse `spm.model`'s bytes.
pub fn parse(bytes: &[u8]) -> Result<SpmModel, String> {
    let mut model = SpmModel {
        pieces: Vec::new(),
        unk_id: 0,
        charsmap: Vec::new(),
    };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => model.pieces.push(piece(b)?),
            (2, Value::Bytes(b)) => {
                let mut spec = Reader::new(b);
                while let Some((f, v)) = spec.field()? {
                    if let (40, Value::Varint(id)) = (f, v) {
                        model.unk_id = id as usize;
                    }
                }
            }
            (3, Value::Bytes(b)) => {
                let mut spec = Reader::new(b);
                while let Some((f, v)) = spec.field()? {
                    if let (2, Value::Bytes(map)) = (f, v) {
                        model.charsmap = map.to_vec();
                    }
                }
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        return Err("no pieces".into());
    }
    if model.unk_id >= model.pieces.len() {
        return Err(format!(
            "unk_id {} is past the {} pieces",
            model.unk_id,
            model.pieces.len()
        ));
    }
    Ok(model)
}

fn piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut p = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                p.text = String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8")?
            }
            (2, Value::Fixed32(b)) => p.score = f32::from_le_bytes(b),
            (3, Value::Varint(t)) => {
                p.kind = match t {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    t => return Err(format!("piece type {t}")),
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field's key: number and wire type.
    fn key(field: u8, wire: u8) -> u8 {
        (field << 3) | wire
    }

    fn piece_bytes(text: &str, score: f32, kind: u8) -> Vec<u8> {
        let mut b = vec![key(1, 2), text.len() as u8];
        b.extend_from_slice(text.as_bytes());
        b.push(key(2, 5));
        b.extend_from_slice(&score.to_le_bytes());
        b.extend_from_slice(&[key(3, 0), kind]);
        b
    }

    #[test]
    fn reads_pieces_and_the_unknown_id_and_skips_the_rest() {
        let mut model = Vec::new();
        for (text, score, kind) in [("[PAD]", 0.0, 3), ("[UNK]", 0.0, 2), ("▁the", -3.5, 1)] {
            let p = piece_bytes(text, score, kind);
            model.extend_from_slice(&[key(1, 2), p.len() as u8]);
            model.extend_from_slice(&p);
        }
        // trainer_spec { model_type: 1 (varint), unk_id: 1 (field 40: a two-byte key) }
        let spec = [key(3, 0), 1, 0xc0, 0x02, 1];
        model.extend_from_slice(&[key(2, 2), spec.len() as u8]);
        model.extend_from_slice(&spec);
        // normalizer_spec { name: "x", precompiled_charsmap: [1, 2, 3] }.
        let spec = [key(1, 2), 1, b'x', key(2, 2), 3, 1, 2, 3];
        model.extend_from_slice(&[key(3, 2), spec.len() as u8]);
        model.extend_from_slice(&spec);
        let m = parse(&model).unwrap();
        assert_eq!(m.unk_id, 1);
        assert_eq!(m.charsmap, [1, 2, 3]);
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.pieces[2].text, "▁the");
        assert_eq!(m.pieces[2].score, -3.5);
        assert_eq!(m.pieces[0].kind, PieceType::Control);
        assert_eq!(m.pieces[1].kind, PieceType::Unknown);
        assert!(parse(&model[..model.len() - 1]).is_err());
        assert!(parse(&[]).is_err());
    }
}
