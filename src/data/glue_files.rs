//! Reading a GLUE task's files as the official `glue_data/<TASK>/<split>.tsv` lay them
//! out: columns picked once per file by the task's layout, each row checked.

use std::path::Path;

use anyhow::Result;

use super::tasks::{Example, Label, Layout, TaskSpec};
use super::tsv::{Header, TsvReader};

/// Column positions within a row, resolved once per file.
struct Picks {
    id: Option<usize>,
    text_a: usize,
    text_b: Option<usize>,
    label: Option<usize>,
    /// How to name the label column in errors.
    label_column: String,
}

/// Reads `data_dir/<spec.dir>/<split>.tsv`.
pub fn read_split(spec: &TaskSpec, data_dir: &Path, split: &str) -> Result<Vec<Example>> {
    let layout = spec.layout(split)?;
    let path = spec.split_path(data_dir, split);
    let (mut tsv, picks) = open(&path, layout)?;
    let mut examples = Vec::new();
    while let Some(row) = tsv.next_row()? {
        let field = |i: usize| row.fields[i].to_string();
        let label = match picks.label {
            Some(i) => spec
                .parse_label(row.fields[i])
                .map_err(|msg| row.error(format!("{}: {msg}", picks.label_column)))?,
            None => Label::None,
        };
        examples.push(Example {
            id: picks.id.map_or_else(|| examples.len().to_string(), field),
            text_a: field(picks.text_a),
            text_b: picks.text_b.map(field),
            label,
        });
    }
    Ok(examples)
}

fn open(path: &Path, layout: Layout) -> Result<(TsvReader, Picks)> {
    match layout {
        Layout::Positional {
            fields,
            text_a,
            text_b,
            label,
        } => {
            let picks = Picks {
                id: None,
                text_a,
                text_b,
                label,
                label_column: label
                    .map(|i| format!("column {}", i + 1))
                    .unwrap_or_default(),
            };
            Ok((TsvReader::open(path, Header::Absent { fields })?, picks))
        }
        Layout::Named {
            id,
            text_a,
            text_b,
            label,
        } => {
            let tsv = TsvReader::open(path, Header::Present)?;
            // One lookup for all names so a mismatched header reports every missing column.
            let wanted: Vec<&str> = [Some(text_a), text_b, label, id]
                .into_iter()
                .flatten()
                .collect();
            let found = tsv.require(&wanted)?;
            let col = |name: &str| wanted.iter().position(|w| *w == name).map(|i| found[i]);
            let picks = Picks {
                // `require` answers one position per wanted name, text_a's first.
                text_a: found[0],
                text_b: text_b.and_then(col),
                label: label.and_then(col),
                id: id.and_then(col),
                label_column: format!("column `{}`", label.unwrap_or_default()),
            };
            Ok((tsv, picks))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::task;
    use crate::error::is_user_error;

    struct Glue(tempfile::TempDir);

    impl Glue {
        fn new() -> Self {
            Glue(tempfile::tempdir().unwrap())
        }

        fn write(&self, task_name: &str, split: &str, text: impl AsRef<[u8]>) -> &Self {
            let path = task(task_name).unwrap().split_path(self.0.path(), split);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        fn read(&self, task_name: &str, split: &str) -> Result<Vec<Example>> {
            read_split(task(task_name).unwrap(), self.0.path(), split)
        }

        /// The error message, with the temp dir shown as `glue`.
        fn error(&self, task_name: &str, split: &str) -> String {
            let err = self.read(task_name, split).unwrap_err();
            assert!(is_user_error(&err), "{err}");
            let root = self.0.path().display().to_string();
            err.to_string().replace(&root, "glue")
        }
    }

    use crate::data::tasks::example as ex;

    #[test]
    fn single_sentence_tasks() {
        let g = Glue::new();
        g.write(
            "cola",
            "dev",
            "gj04\t1\t\tThe \"sailors rode.\nw_80\t0\t*\tJohn bought.",
        )
        .write("cola", "test", "index\tsentence\n0\tBill whistled.\n")
        .write(
            "sst2",
            "train",
            "sentence\tlabel\nhide new secretions \t0\n",
        )
        .write(
            "sst2",
            "test",
            "index\tsentence\n0\tit 's a charming journey . \n",
        );
        assert_eq!(
            g.read("cola", "dev").unwrap(),
            [
                ex("0", "The \"sailors rode.", None, Label::Class(1)),
                ex("1", "John bought.", None, Label::Class(0)),
            ]
        );
        assert_eq!(
            g.read("cola", "test").unwrap(),
            [ex("0", "Bill whistled.", None, Label::None)]
        );
        assert_eq!(
            g.read("sst2", "train").unwrap(),
            [ex("0", "hide new secretions ", None, Label::Class(0))]
        );
        assert_eq!(
            g.read("sst2", "test").unwrap(),
            [ex("0", "it 's a charming journey . ", None, Label::None)]
        );
    }

    #[test]
    fn pair_tasks() {
        let g = Glue::new();
        g.write(
            "mrpc",
            "train",
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t702876\t702977\tA \" b\tC\r\n",
        )
        .write("mrpc", "test", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA\tB\n")
        .write(
            "stsb",
            "dev",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
             0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man.\tA guy.\t4.750\n",
        )
        .write(
            "stsb",
            "test",
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n\
             7\tmain-news\theadlines\t2015\t0001\tnone\tnone\tX\tY\n",
        )
        .write("qqp", "train", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t213222\tHow?\tWhy?\t1\n")
        .write("qqp", "test", "id\tquestion1\tquestion2\n0\tA?\tB?\n")
        .write("qnli", "dev", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n")
        .write("qnli", "test", "index\tquestion\tsentence\n0\tQ?\tS.\n")
        .write("rte", "train", "index\tsentence1\tsentence2\tlabel\n5\tA.\tB.\tentailment\n")
        .write("rte", "test", "index\tsentence1\tsentence2\n0\tA.\tB.\n")
        .write("wnli", "dev", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n")
        .write("wnli", "test", "index\tsentence1\tsentence2\n0\tA.\tB.\n");
        let one = |t: &str, s: &str| g.read(t, s).unwrap().remove(0);
        assert_eq!(
            one("mrpc", "train"),
            ex("0", "A \" b", Some("C"), Label::Class(1))
        );
        assert_eq!(one("mrpc", "test"), ex("0", "A", Some("B"), Label::None));
        assert_eq!(
            one("stsb", "dev"),
            ex("0", "A man.", Some("A guy."), Label::Score(4.75))
        );
        assert_eq!(one("stsb", "test"), ex("7", "X", Some("Y"), Label::None));
        assert_eq!(
            one("qqp", "train"),
            ex("133273", "How?", Some("Why?"), Label::Class(1))
        );
        assert_eq!(one("qqp", "test"), ex("0", "A?", Some("B?"), Label::None));
        assert_eq!(
            one("qnli", "dev"),
            ex("0", "Q?", Some("S."), Label::Class(1))
        );
        assert_eq!(one("qnli", "test"), ex("0", "Q?", Some("S."), Label::None));
        assert_eq!(
            one("rte", "train"),
            ex("5", "A.", Some("B."), Label::Class(0))
        );
        assert_eq!(one("rte", "test"), ex("0", "A.", Some("B."), Label::None));
        assert_eq!(
            one("wnli", "dev"),
            ex("0", "A.", Some("B."), Label::Class(1))
        );
        assert_eq!(one("wnli", "test"), ex("0", "A.", Some("B."), Label::None));
    }

    #[test]
    fn mnli_train_dev_and_test_layouts() {
        let head =
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t\
                    sentence1_parse\tsentence2_parse\tsentence1\tsentence2";
        let body = "0\t31193\t31193n\tgovernment\t( ( a ) )\t( b )\t(ROOT a)\t(ROOT b)\tPremise.\tHypothesis.";
        let g = Glue::new();
        g.write("mnli", "train", format!("{head}\tlabel1\tgold_label\n{body}\tneutral\tneutral\n"))
            .write(
                "mnli",
                "dev_matched",
                format!(
                    "{head}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n\
                     {body}\tneutral\tentailment\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
                ),
            )
            .write("mnli", "test_mismatched", format!("{head}\n{body}\n"));
        let want = |label| vec![ex("0", "Premise.", Some("Hypothesis."), label)];
        assert_eq!(g.read("mnli", "train").unwrap(), want(Label::Class(1)));
        assert_eq!(
            g.read("mnli", "dev_matched").unwrap(),
            want(Label::Class(2))
        );
        assert_eq!(
            g.read("mnli", "test_mismatched").unwrap(),
            want(Label::None)
        );
    }

    #[test]
    fn bad_input_names_file_line_and_value() {
        let g = Glue::new();
        g.write(
            "rte",
            "train",
            "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tA\tB\n",
        )
        .write(
            "rte",
            "dev",
            "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tmaybe\n",
        )
        .write("rte", "test", "index\tsentence1\tlabel\n0\tA\tB\n")
        .write("cola", "train", "gj04\t1\t\tFine.\ngj04\tyes\t\tBad.\n")
        .write("cola", "dev", b"gj04\t1\t\tFine.\ngj04\t1\t\tBad \xe9.\n")
        .write("sst2", "train", "")
        .write("sst2", "dev", "sentence\tlabel\n");
        let sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
        g.write(
            "stsb",
            "train",
            format!("{sts_head}0\tg\tf\ty\to\tn\tn\tA\tB\t7.5\n"),
        )
        .write(
            "stsb",
            "dev",
            format!("{sts_head}0\tg\tf\ty\to\tn\tn\tA\tB\t1.0\n1\tg\tf\ty\to\tn\tn\tA\tB\tfive\n"),
        );

        assert_eq!(
            g.error("rte", "train"),
            "glue/RTE/train.tsv:3: expected 4 tab-separated fields, found 3"
        );
        assert_eq!(
            g.error("rte", "dev"),
            "glue/RTE/dev.tsv:2: column `label`: unknown label `maybe` for RTE \
             (expected one of: entailment, not_entailment)"
        );
        assert_eq!(
            g.error("rte", "test"),
            "glue/RTE/test.tsv:1: header lacks column(s) `sentence2`; found: index, sentence1, label"
        );
        assert_eq!(
            g.error("cola", "train"),
            "glue/CoLA/train.tsv:2: column 2: unknown label `yes` for CoLA (expected one of: 0, 1)"
        );
        assert_eq!(
            g.error("cola", "dev"),
            "glue/CoLA/dev.tsv:2: not valid UTF-8 at byte 13 of the line"
        );
        assert_eq!(
            g.error("sst2", "train"),
            "glue/SST-2/train.tsv: file is empty"
        );
        assert_eq!(
            g.error("sst2", "dev"),
            "glue/SST-2/dev.tsv: file has a header but no data rows"
        );
        assert_eq!(
            g.error("stsb", "train"),
            "glue/STS-B/train.tsv:2: column `score`: STS-B score `7.5` is outside [0, 5]"
        );
        assert_eq!(
            g.error("stsb", "dev"),
            "glue/STS-B/dev.tsv:3: column `score`: STS-B score `five` is not a number"
        );
        let missing = g.error("qqp", "dev");
        assert!(
            missing.starts_with("cannot open glue/QQP/dev.tsv: "),
            "{missing}"
        );
        assert_eq!(
            g.error("mnli", "dev"),
            "task MNLI has no split `dev`; valid splits: train, dev_matched, dev_mismatched, \
             test_matched, test_mismatched"
        );
    }
}
