//! Bounds on what a data file may hold, checked while it is read, before anything is built
//! from it: a text field's length, a line's length, and that the file is a file. Line
//! inputs of any length (`peft predict`, `peft embed`) are streamed in chunks.
//!
//! A text is tokenized whole before it is truncated to `--max-seq-len` tokens, at about
//! 120 bytes of tokenizer state per byte of text: a 50 MB line peaks at 6 GB. A text of
//! [`MAX_TEXT_BYTES`] costs about 120 MB, and holds far more than any encoder reads: 512
//! tokens are a few kilobytes of English, and SQuAD's longest contexts are tens of
//! kilobytes, so no real example comes near it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
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

/// The lines of a line input (`peft predict`, `peft embed`), each read by [`read_line`]
/// (so at most [`MAX_LINE_BYTES`]), valid UTF-8, without its `\n` or `\r\n`, passed to
/// `each` with its number (from 1) as `str::lines` would give them; `each` returns false
/// to stop.
pub fn for_each_line(path: &Path, mut each: impl FnMut(usize, &str) -> Result<bool>) -> Result<()> {
    let mut reader = BufReader::new(open(path)?);
    let mut buf = Vec::new();
    for line in 1.. {
        if read_line(&mut reader, &mut buf, path, line)? == 0 {
            break;
        }
        let text = std::str::from_utf8(&buf).map_err(|e| {
            user(format!(
                "{}:{line}: not valid UTF-8 at byte {} of the line",
                path.display(),
                e.valid_up_to() + 1
            ))
        })?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !each(line, text)? {
            break;
        }
    }
    Ok(())
}

/// The most lines of a streamed input held at once (see [`for_each_chunk`]): enough for
/// length bucketing to fill batches with inputs of one length.
pub const CHUNK_LINES: usize = 8192;
/// The most text of a streamed input held at once, in bytes: a SQuAD context becomes
/// about 20 bytes of windows (token ids, offsets, logits) per byte, so a chunk of 16 MiB
/// of text is a few hundred MB of windows, where a whole file would be unbounded.
pub const CHUNK_BYTES: usize = 16 << 20;

/// Lines 1 to `lines` of a line input, in order, in chunks of at most [`CHUNK_LINES`]
/// lines and about [`CHUNK_BYTES`] bytes, each passed to `each` with the number of its
/// first line: what the input costs in memory is one chunk, whatever its length. The file
/// is a regular one ([`open`]), so a command may read it once to check every line and
/// again to use them.
pub fn for_each_chunk(
    path: &Path,
    lines: usize,
    mut each: impl FnMut(usize, &[String]) -> Result<()>,
) -> Result<()> {
    let (mut chunk, mut bytes, mut first) = (Vec::new(), 0, 1);
    for_each_line(path, |n, line| {
        if n > lines {
            return Ok(false);
        }
        chunk.push(line.to_string());
        bytes += line.len();
        if chunk.len() >= CHUNK_LINES || bytes >= CHUNK_BYTES {
            each(first, &chunk)?;
            chunk.clear();
            bytes = 0;
            first = n + 1;
        }
        Ok(true)
    })?;
    if !chunk.is_empty() {
        each(first, &chunk)?;
    }
    Ok(())
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

    #[test]
    fn inputs_stream_in_chunks_of_numbered_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.txt");
        let text: String = (1..=CHUNK_LINES + 5)
            .map(|i| format!("line {i}\r\n"))
            .collect();
        std::fs::write(&file, format!("{text}\n")).unwrap();
        let mut seen = Vec::new();
        for_each_line(&file, |n, l| {
            seen.push((n, l.to_string()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen.len(), CHUNK_LINES + 6);
        assert_eq!(seen[0], (1, "line 1".to_string()));
        assert_eq!(seen[CHUNK_LINES + 5], (CHUNK_LINES + 6, String::new()));
        let mut chunks = Vec::new();
        for_each_chunk(&file, CHUNK_LINES + 3, |first, c| {
            chunks.push((first, c.len(), c[0].clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            chunks,
            [
                (1, CHUNK_LINES, "line 1".to_string()),
                (CHUNK_LINES + 1, 3, format!("line {}", CHUNK_LINES + 1))
            ]
        );
        std::fs::write(&file, b"fine\nbad \xff\n").unwrap();
        let err = for_each_line(&file, |_, _| Ok(true)).unwrap_err();
        assert!(is_user_error(&err));
        assert!(err
            .to_string()
            .ends_with("in.txt:2: not valid UTF-8 at byte 5 of the line"));
    }
}
