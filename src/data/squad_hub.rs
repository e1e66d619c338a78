//! SQuAD from the Hugging Face hub: `rajpurkar/squad` (config `plain_text`) and
//! `rajpurkar/squad_v2` (config `squad_v2`), parquet with the columns `id`, `title`,
//! `context`, `question` and `answers` (`{text: [..], answer_start: [..]}`; both empty
//! for an unanswerable question).

use std::fs::File;
use std::path::Path;

use anyhow::Result;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, List, Row};

use super::input;
use super::squad::{check, Answer, ContextBytes, QaExample};
use crate::error::{user, PathContext};

/// The repository and its config folder.
pub fn repo(v2: bool) -> (&'static str, &'static str) {
    if v2 {
        ("rajpurkar/squad_v2", "squad_v2")
    } else {
        ("rajpurkar/squad", "plain_text")
    }
}

pub fn read_split(v2: bool, split: &str) -> Result<Vec<QaExample>> {
    let (repo, config) = repo(v2);
    let mut out = Vec::new();
    let mut carried = ContextBytes::default();
    for path in super::hub::fetch(repo, config, &super::hub::hub_split(split))? {
        read_file(&path, v2, &mut carried, &mut out)?;
    }
    Ok(out)
}

/// The rows of one parquet file, appended to `out`; `carried` counts the text of the
/// split's rows so far (a parquet file repeats each question's context in its row).
fn read_file(
    path: &Path,
    v2: bool,
    carried: &mut ContextBytes,
    out: &mut Vec<QaExample>,
) -> Result<()> {
    let file = File::open(path).path_context("cannot open", path)?;
    let bad =
        |e: parquet::errors::ParquetError| user(format!("cannot read {}: {e}", path.display()));
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    for (n, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(bad)?;
        let at = format!("{}: row {}", path.display(), n + 1);
        let e = example(&row).map_err(|m| user(format!("{at}: {m}")))?;
        for (column, text) in [("context", &e.context), ("question", &e.question)] {
            input::check_text(text, || format!("{at}: column `{column}`"))?;
        }
        carried.add(e.context.len().saturating_add(e.question.len()), || {
            at.clone()
        })?;
        check(&at, &e.answers, e.context.chars().count(), v2)?;
        out.push(e);
    }
    Ok(())
}

fn example(row: &Row) -> Result<QaExample, String> {
    let get = |name: &str| {
        row.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
            .ok_or_else(|| format!("no column `{name}`"))
    };
    let text = |name: &str| match get(name)? {
        Field::Str(s) => Ok(s.clone()),
        other => Err(format!("column `{name}`: expected text, found {other:?}")),
    };
    let Field::Group(answers) = get("answers")? else {
        return Err("column `answers`: expected {text, answer_start}".into());
    };
    let list = |name: &str| -> Result<&List, String> {
        match answers.get_column_iter().find(|(n, _)| n.as_str() == name) {
            Some((_, Field::ListInternal(l))) => Ok(l),
            other => Err(format!("answers.{name}: expected a list, found {other:?}")),
        }
    };
    let texts = list("text")?.elements();
    let starts = list("answer_start")?.elements();
    if texts.len() != starts.len() {
        return Err(format!(
            "answers: {} texts but {} starts",
            texts.len(),
            starts.len()
        ));
    }
    let answers = texts
        .iter()
        .zip(starts)
        .map(|(t, s)| match (t, s) {
            (Field::Str(t), Field::Int(s)) if *s >= 0 => Ok(Answer {
                text: t.clone(),
                start: *s as usize,
            }),
            (Field::Str(t), Field::Long(s)) if *s >= 0 => Ok(Answer {
                text: t.clone(),
                start: *s as usize,
            }),
            other => Err(format!(
                "answers: expected text and a start, found {other:?}"
            )),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(QaExample {
        id: text("id")?,
        question: text("question")?,
        context: text("context")?,
        answers,
    })
}
