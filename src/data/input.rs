//! Bounds on what a data file may hold, checked while it is read, before anything is built
//! from it: a text field's length, a line's length, and that the file is a file.
//!
//! A text is tokenized whole before it is truncated to `--max-seq-len` tokens, at about
//! 120 bytes of tokenizer state per byte of text: a 50 MB line peaks at 6 GB. A text of
//! [`MAX_TEXT_BYTES`] costs about 120 MB, and holds far more than any encoder reads: 512
//! tokens are a few kilobytes of English, and SQuAD's longest contexts are tens of
//! kilobytes, so no real example comes near it.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::Path;

use anyhow::Result;

use crate::error::{user, PathContext};

/// The longest text field, in bytes (see the module's comment).
pub const MAX_TEXT_BYTES: usize = 1_000_000;

/// The longest line of a line-based file (GLUE's TSV, JSON Lines): room for a pair of the
/// longest texts, a label, and JSON's escapes (`\u00e9` is six bytes for two).
pub const MAX_LINE_BYTES: usize = 4 * MAX_TEXT_BYTES + 64 * 1024;

/// Refuse a text longer than [`MAX_TEXT_BYTES`]; `which` says where it is and which field
/// (`file:line: column `text``), built only for the message.
pub fn check_text(text: &str, which: impl FnOnce() -> String) -> Result<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(user(format!(
            "{} is {} bytes; a text holds at most {MAX_TEXT_BYTES} bytes (encoders read the \
             first few hundred tokens of it, a few kilobytes): shorten it",
            which(),
            text.len()
        )));
    }
    Ok(())
}

/// Open a data file for reading, refusing anything but a regular file. A FIFO (a named
/// pipe, a shell's `<(...)`) or a device would hang or never end: a training file is read
/// more than once (its labels, then its examples), and `peft eval` and `--resume` read
/// the files a run names again later.
pub fn open(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading blocks until a writer comes; non-blocking, it returns at
    // once and is refused below. Regular files ignore the flag.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).path_context("cannot open", path)?;
    let meta = file.metadata().path_context("cannot read", path)?;
    if !meta.is_file() {
        return Err(user(format!(
            "{}: not a regular file ({}); data files are read more than once (a training \
             file's labels, then its examples; `peft eval` and --resume read them again), \
             so write it to a file first",
            path.display(),
            kind(&meta.file_type())
        )));
    }
    Ok(file)
}

fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO, a named pipe";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

/// Read one line (with its `\n`) into `buf`, reading at most [`MAX_LINE_BYTES`]: a longer
/// line is refused, naming `path:line`, before the rest of it is read. Returns the bytes
/// read, 0 at the end of the file.
pub fn read_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    path: &Path,
    line: usize,
) -> Result<usize> {
    buf.clear();
    let n = reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)
        .path_context("cannot read", path)?;
    if n > MAX_LINE_BYTES {
        return Err(user(format!(
            "{}:{line}: the line is longer than {MAX_LINE_BYTES} bytes; a text holds at most \
             {MAX_TEXT_BYTES} bytes (encoders read the first few hundred tokens of it)",
            path.display()
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::is_user_error;

    #[test]
    fn long_texts_and_lines_are_refused_naming_where() {
        assert!(check_text(&"a".repeat(MAX_TEXT_BYTES), || unreachable!()).is_ok());
        let err = check_text(&"a".repeat(MAX_TEXT_BYTES + 1), || {
            "f.tsv:3: column 2".into()
        })
        .unwrap_err();
        assert!(is_user_error(&err));
        let msg = err.to_string();
        assert!(
            msg.starts_with("f.tsv:3: column 2") && msg.contains("1000000"),
            "{msg}"
        );

        let long = format!("short\n{}\nafter\n", "b".repeat(MAX_LINE_BYTES + 10));
        let mut r = std::io::BufReader::new(long.as_bytes());
        let mut buf = Vec::new();
        let p = Path::new("d.jsonl");
        assert_eq!(read_line(&mut r, &mut buf, p, 1).unwrap(), 6);
        let err = read_line(&mut r, &mut buf, p, 2).unwrap_err();
        assert!(is_user_error(&err));
        assert!(err
            .to_string()
            .starts_with("d.jsonl:2: the line is longer than"));
        // It stopped reading just past the limit.
        assert_eq!(buf.len(), MAX_LINE_BYTES + 1);
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.tsv");
        std::fs::write(&file, "x\n").unwrap();
        assert!(open(&file).is_ok());
        let fifo = dir.path().join("p.tsv");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer: a blocking open would hang here.
        let err = open(&fifo).unwrap_err();
        assert!(is_user_error(&err));
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
        let err = open(&dir.path().join("gone.tsv")).unwrap_err();
        assert!(is_user_error(&err) && err.to_string().contains("gone.tsv"));
    }
}
