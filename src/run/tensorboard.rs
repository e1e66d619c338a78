//! TensorBoard event files, as TensorFlow's summary writer and `tensorboardX` write them:
//! `RUN/tensorboard/events.out.tfevents.<seconds>.<host>`, a sequence of TFRecords (length,
//! masked CRC-32C of the length, an `Event` protobuf, masked CRC-32C of it), the first
//! event naming the format (`brain.Event:2`). Scalars are `simple_value` summaries; the
//! resolved settings a `text` plugin summary; the final metrics an `hparams` plugin session
//! (start with the settings as hyper-parameters, then the end), so that TensorBoard's
//! HParams tab lines a grid's cells up.
//!
//! The messages are TensorFlow's and TensorBoard's own (`event.proto`, `summary.proto`,
//! `tensor.proto`, `plugins/hparams/plugin_data.proto`, `google/protobuf/struct.proto`),
//! declared here with prost for the fields written; no maintained Rust crate writes the
//! format, and prost and crc32c are the well-kept pieces it is made of.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use prost::Message;

use crate::error::PathContext;

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// A string tensor (`DT_STRING`, 7) of one element, as the text plugin reads it.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// The hparams plugin's data: a session's start (its hyper-parameters) or end.
#[derive(Clone, PartialEq, Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(message, optional, tag = "3")]
    session_start_info: Option<SessionStartInfo>,
    #[prost(message, optional, tag = "4")]
    session_end_info: Option<SessionEndInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    hparams: BTreeMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    group_name: String,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

#[derive(Clone, PartialEq, Message)]
struct SessionEndInfo {
    /// 1: STATUS_SUCCESS.
    #[prost(int32, tag = "1")]
    status: i32,
    #[prost(double, tag = "2")]
    end_time_secs: f64,
}

/// `google.protobuf.Value`, the number and string kinds.
#[derive(Clone, PartialEq, Message)]
struct ProtoValue {
    #[prost(double, optional, tag = "2")]
    number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    string_value: Option<String>,
    #[prost(bool, optional, tag = "4")]
    bool_value: Option<bool>,
}

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One run's event file, appended to as training goes.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// A new event file under `dir` (created), starting with the format's version event.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).path_context("cannot create", dir)?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let path = dir.join(format!("events.out.tfevents.{}.{host}", now() as u64));
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .path_context("cannot create", &path)?;
        let w = Self { file, path };
        w.event(0, None, Some("brain.Event:2".into()))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&self, step: usize, summary: Option<Summary>, version: Option<String>) -> Result<()> {
        let e = Event {
            wall_time: now(),
            step: step as i64,
            file_version: version,
            summary,
        };
        let data = e.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        let mut file = &self.file;
        file.write_all(&record)
            .path_context("cannot write", &self.path)?;
        // Flushed per event: TensorBoard reads a file while it grows.
        file.flush().path_context("cannot write", &self.path)
    }

    /// Scalars at `step`, by tag.
    pub fn scalars(&self, step: usize, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| Value {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                ..Default::default()
            })
            .collect();
        self.event(step, Some(Summary { value }), None)
    }

    /// A text summary (TensorBoard renders it as Markdown).
    pub fn text(&self, step: usize, tag: &str, text: &str) -> Result<()> {
        let value = Value {
            tag: tag.to_string(),
            tensor: Some(TensorProto {
                dtype: 7,
                tensor_shape: Some(TensorShape {
                    dim: vec![Dim { size: 1 }],
                }),
                string_val: vec![text.as_bytes().to_vec()],
            }),
            metadata: Some(plugin("text", Vec::new())),
            ..Default::default()
        };
        self.event(step, Some(Summary { value: vec![value] }), None)
    }

    /// The hparams plugin's session: `hparams` as the session's hyper-parameters (the
    /// final metrics are ordinary scalars, which the HParams tab reads beside them).
    pub fn hparams(
        &self,
        step: usize,
        group: &str,
        hparams: &[(String, serde_json::Value)],
    ) -> Result<()> {
        let hparams = hparams
            .iter()
            .map(|(k, v)| {
                let pv = match v {
                    serde_json::Value::Number(n) => ProtoValue {
                        number_value: n.as_f64(),
                        ..Default::default()
                    },
                    serde_json::Value::Bool(b) => ProtoValue {
                        bool_value: Some(*b),
                        ..Default::default()
                    },
                    serde_json::Value::String(s) => ProtoValue {
                        string_value: Some(s.clone()),
                        ..Default::default()
                    },
                    other => ProtoValue {
                        string_value: Some(other.to_string()),
                        ..Default::default()
                    },
                };
                (k.clone(), pv)
            })
            .collect();
        let start = HParamsPluginData {
            version: 0,
            session_start_info: Some(SessionStartInfo {
                hparams,
                group_name: group.to_string(),
                start_time_secs: now(),
            }),
            session_end_info: None,
        };
        let end = HParamsPluginData {
            version: 0,
            session_start_info: None,
            session_end_info: Some(SessionEndInfo {
                status: 1,
                end_time_secs: now(),
            }),
        };
        for (tag, data) in [
            ("_hparams_/session_start_info", start),
            ("_hparams_/session_end_info", end),
        ] {
            let value = Value {
                tag: tag.into(),
                metadata: Some(plugin("hparams", data.encode_to_vec())),
                tensor: Some(TensorProto {
                    dtype: 7,
                    tensor_shape: Some(TensorShape::default()),
                    string_val: vec![Vec::new()],
                }),
                ..Default::default()
            };
            self.event(step, Some(Summary { value: vec![value] }), None)?;
        }
        Ok(())
    }
}

fn plugin(name: &str, content: Vec<u8>) -> SummaryMetadata {
    SummaryMetadata {
        plugin_data: Some(PluginData {
            plugin_name: name.into(),
            content,
        }),
    }
}

/// The records of an event file, each checked against both its CRCs: for tests and for
/// reading a run's events back. Returns each record's payload.
pub fn records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).path_context("cannot read", path)?;
    let bad = |why: &str| crate::error::user(format!("{}: {why}", path.display()));
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad("a record is cut short"))?;
        let len_bytes = &head[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        if masked_crc(len_bytes) != u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) {
            return Err(bad("a record length's CRC does not match"));
        }
        let end = at.checked_add(12 + len + 4).filter(|e| *e <= bytes.len());
        let end = end.ok_or_else(|| bad("a record is cut short"))?;
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().unwrap_or_default());
        if masked_crc(data) != crc {
            return Err(bad("a record's CRC does not match"));
        }
        out.push(data.to_vec());
        at = end;
    }
    Ok(out)
}

/// The scalars of an event file: (step, tag, value), in order.
pub fn read_scalars(path: &Path) -> Result<Vec<(i64, String, f32)>> {
    let mut out = Vec::new();
    for r in records(path)? {
        let e = Event::decode(r.as_slice())
            .map_err(|e| crate::error::user(format!("{}: {e}", path.display())))?;
        for v in e.summary.map(|s| s.value).unwrap_or_default() {
            if let Some(x) = v.simple_value {
                out.push((e.step, v.tag, x));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's masked CRC-32C of known bytes, as TensorFlow's `crc32c.masked_crc`
    /// computes it (its CRC-32C check value: "123456789" → 0xe3069283).
    #[test]
    fn the_masked_crc_is_tensorflows() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorFlow's ((crc >> 15) | (crc << 17)) + 0xa282ead8, in Python, for that crc.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn scalars_read_back_through_their_crcs() {
        let tmp = tempfile::tempdir().unwrap();
        let w = EventWriter::create(tmp.path()).unwrap();
        w.scalars(3, &[("train/loss".into(), 0.5), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.text(0, "config", "lr 1e-3").unwrap();
        w.hparams(3, "g", &[("lr".into(), serde_json::json!(1e-3))])
            .unwrap();
        let got = read_scalars(w.path()).unwrap();
        assert_eq!(
            got,
            vec![
                (3, "train/loss".to_string(), 0.5),
                (3, "train/lr".to_string(), 1e-3)
            ]
        );
        // A flipped byte is caught by the CRC.
        let mut bytes = std::fs::read(w.path()).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(w.path(), bytes).unwrap();
        assert!(records(w.path()).is_err());
    }
}
