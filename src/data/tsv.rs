//! Tab-separated files as GLUE ships them.
//!
//! GLUE text fields contain unbalanced `"` characters, so a CSV reader that honours
//! quotes merges lines and loses rows. Here a record is one line, split on `\t` and
//! nothing else. Files are streamed: MNLI's train split is hundreds of megabytes.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::input;
use crate::error::{user, PathContext};

const BOM: &[u8] = "\u{feff}".as_bytes();

/// What the first line of a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Column names; every row must have as many fields.
    Present,
    /// Already data; every row must have exactly `fields` fields.
    Absent { fields: usize },
}

/// A streaming reader that checks each row's shape and reports errors as `path:line`.
pub struct TsvReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// The current line, without its line end.
    buf: Vec<u8>,
    /// 1-based number of the current line.
    line: usize,
    header: Option<Vec<String>>,
    fields: usize,
    rows: usize,
}

/// One data row; `fields` borrow the reader's line buffer.
pub struct Row<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub fields: Vec<&'a str>,
}

impl Row<'_> {
    /// A user error located at this row.
    pub fn error(&self, msg: impl Display) -> anyhow::Error {
        user(format!("{}:{}: {msg}", self.path.display(), self.line))
    }
}

impl TsvReader {
    /// Opens `path` and, with [`Header::Present`], reads its header line.
    pub fn open(path: &Path, header: Header) -> Result<Self> {
        let file = input::open(path)?;
        let mut tsv = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            buf: Vec::new(),
            line: 0,
            header: None,
            fields: 0,
            rows: 0,
        };
        match header {
            Header::Absent { fields } => tsv.fields = fields,
            Header::Present => {
                if !tsv.next_line()? {
                    return Err(user(format!("{}: file is empty", path.display())));
                }
                let names: Vec<String> = tsv
                    .text()?
                    .split('\t')
                    .map(|s| s.trim().to_string())
                    .collect();
                tsv.fields = names.len();
                tsv.header = Some(names);
            }
        }
        Ok(tsv)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Positions of the named columns in the header, in the order asked for.
    pub fn require(&self, names: &[&str]) -> Result<Vec<usize>> {
        let Some(header) = &self.header else {
            anyhow::bail!(
                "{}: has no header to look columns up in",
                self.path.display()
            );
        };
        let find = |name: &&str| header.iter().position(|h| h == name);
        let missing: Vec<String> = names
            .iter()
            .filter(|n| find(n).is_none())
            .map(|n| format!("`{n}`"))
            .collect();
        if !missing.is_empty() {
            return Err(user(format!(
                "{}:1: header lacks column(s) {}; found: {}",
                self.path.display(),
                missing.join(", "),
                header.join(", ")
            )));
        }
        Ok(names.iter().filter_map(find).collect())
    }

    /// The next data row, or `None` at the end of a file that had at least one.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>> {
        if !self.next_line()? {
            if self.rows == 0 {
                let what = match self.header {
                    Some(_) => "has a header but no data rows",
                    None => "is empty",
                };
                return Err(user(format!("{}: file {what}", self.path.display())));
            }
            return Ok(None);
        }
        self.rows += 1;
        let fields: Vec<&str> = self.text()?.split('\t').collect();
        if fields.len() != self.fields {
            return Err(user(format!(
                "{}:{}: expected {} tab-separated fields, found {}",
                self.path.display(),
                self.line,
                self.fields,
                fields.len()
            )));
        }
        // GLUE's fields are texts, labels and ids: none is anywhere near a text's bound.
        for (i, f) in fields.iter().enumerate() {
            input::check_text(f, || {
                format!("{}:{}: field {}", self.path.display(), self.line, i + 1)
            })?;
        }
        Ok(Some(Row {
            path: &self.path,
            line: self.line,
            fields,
        }))
    }

    /// Loads the next line into `buf`; false at the end of the file.
    fn next_line(&mut self) -> Result<bool> {
        let n = input::read_line(&mut self.reader, &mut self.buf, &self.path, self.line + 1)?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.line == 1 && self.buf.starts_with(BOM) {
            self.buf.drain(..BOM.len());
        }
        // A blank last line is how some writers end a file; anywhere else it is a bad row.
        if self.buf.is_empty() {
            let rest = self
                .reader
                .fill_buf()
                .path_context("cannot read", &self.path)?;
            if rest.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.buf).map_err(|e| {
            user(format!(
                "{}:{}: not valid UTF-8 at byte {} of the line",
                self.path.display(),
                self.line,
                e.valid_up_to() + 1
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.tsv");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// Every row as (line, fields), or the error message.
    fn rows(bytes: &[u8], header: Header) -> Result<Vec<(usize, Vec<String>)>, String> {
        let (_dir, path) = write(bytes);
        let read = || -> Result<Vec<(usize, Vec<String>)>> {
            let mut tsv = TsvReader::open(&path, header)?;
            let mut out = Vec::new();
            while let Some(row) = tsv.next_row()? {
                out.push((row.line, row.fields.iter().map(|s| s.to_string()).collect()));
            }
            Ok(out)
        };
        read().map_err(|e| {
            assert!(is_user_error(&e), "{e}");
            e.to_string().replace(&path.display().to_string(), "f.tsv")
        })
    }

    fn row(line: usize, fields: &[&str]) -> (usize, Vec<String>) {
        (line, fields.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn splits_on_tabs_only_and_keeps_quotes() {
        let got = rows(b"a\tb\n\"x\t y \"\n", Header::Present).unwrap();
        assert_eq!(got, vec![row(2, &["\"x", " y \""])]);
    }

    #[test]
    fn line_ends_bom_and_final_newline() {
        let want = vec![row(2, &["1", "2"]), row(3, &["3", "4"])];
        for bytes in [
            &b"a\tb\n1\t2\n3\t4\n"[..],
            b"a\tb\r\n1\t2\r\n3\t4\r\n",
            b"a\tb\n1\t2\n3\t4",
            b"a\tb\n1\t2\n3\t4\n\n",
            b"a\tb\n1\t2\n3\t4\r\n\r\n",
            b"\xef\xbb\xbfa\tb\n1\t2\n3\t4\n",
        ] {
            assert_eq!(rows(bytes, Header::Present).unwrap(), want, "{bytes:?}");
        }
        let (_dir, path) = write(b"\xef\xbb\xbfQuality\tx\n1\t2\n");
        let tsv = TsvReader::open(&path, Header::Present).unwrap();
        assert_eq!(tsv.require(&["x", "Quality"]).unwrap(), vec![1, 0]);
    }

    #[test]
    fn headerless_rows_start_at_line_one() {
        let got = rows(b"\xef\xbb\xbfa\t1\nb\t0", Header::Absent { fields: 2 }).unwrap();
        assert_eq!(got, vec![row(1, &["a", "1"]), row(2, &["b", "0"])]);
    }

    #[test]
    fn bad_shapes_name_file_and_line() {
        let err = rows(b"a\tb\n1\t2\n1\t2\t3\n", Header::Present).unwrap_err();
        assert_eq!(err, "f.tsv:3: expected 2 tab-separated fields, found 3");
        let err = rows(b"a\tb\n\n1\t2\n", Header::Present).unwrap_err();
        assert_eq!(err, "f.tsv:2: expected 2 tab-separated fields, found 1");
        let err = rows(b"x\t1\t\ty\nx\t1\n", Header::Absent { fields: 4 }).unwrap_err();
        assert_eq!(err, "f.tsv:2: expected 4 tab-separated fields, found 2");
    }

    #[test]
    fn invalid_utf8_names_line_and_byte() {
        let err = rows(b"a\tb\n1\t2\nab\xff\t2\n", Header::Present).unwrap_err();
        assert_eq!(err, "f.tsv:3: not valid UTF-8 at byte 3 of the line");
        let err = rows(b"a\xc3\tb\n", Header::Present).unwrap_err();
        assert_eq!(err, "f.tsv:1: not valid UTF-8 at byte 2 of the line");
    }

    #[test]
    fn empty_files() {
        assert_eq!(
            rows(b"", Header::Present).unwrap_err(),
            "f.tsv: file is empty"
        );
        let absent = Header::Absent { fields: 2 };
        assert_eq!(rows(b"", absent).unwrap_err(), "f.tsv: file is empty");
        assert_eq!(rows(b"\n", absent).unwrap_err(), "f.tsv: file is empty");
        assert_eq!(
            rows(b"a\tb\n", Header::Present).unwrap_err(),
            "f.tsv: file has a header but no data rows"
        );
    }

    #[test]
    fn missing_columns_and_missing_file() {
        let (_dir, path) = write(b"index\tsentence1\n0\tx\n");
        let tsv = TsvReader::open(&path, Header::Present).unwrap();
        let err = tsv
            .require(&["sentence1", "sentence2", "label"])
            .unwrap_err();
        assert!(is_user_error(&err));
        assert_eq!(
            err.to_string(),
            format!(
                "{}:1: header lacks column(s) `sentence2`, `label`; found: index, sentence1",
                path.display()
            )
        );

        let gone = path.with_file_name("gone.tsv");
        let err = TsvReader::open(&gone, Header::Present).err().unwrap();
        assert!(is_user_error(&err));
        assert!(
            err.to_string().contains(&gone.display().to_string()),
            "{err}"
        );
    }
}
