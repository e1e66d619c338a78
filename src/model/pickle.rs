//! A `pytorch_model.bin` read safely: candle's pickle reader, behind checks that bound what
//! it would build (nesting, memory, strings, tensor sizes against their storage) and a net
//! for the panics it still has. A 200 KB file may not make it recurse 200,000 deep or
//! allocate terabytes.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use crate::error::user;

/// The tensors of a `pytorch_model.bin`, as `candle_core::pickle::read_all` reads them,
/// once [`check_zip`] has bounded what its reader would build and each tensor's claimed
/// size has been checked against its storage: a 200 KB file may not make the reader
/// recurse 200,000 deep or allocate terabytes.
pub fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let storages = check_zip(path)?;
    without_panics(path, || read_checked_pickle(path, &storages))
}

/// candle's pickle reader still panics on some records the checks above let through (an
/// argument tuple too short in `rebuild_args`, an offset product that overflows): caught,
/// with the default hook's message held back, and reported as the file's fault. Loading
/// runs before any other thread works, so no other thread's panic message is lost.
fn without_panics<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|_| {
        Err(user(format!(
            "cannot read {}: a malformed tensor record in its pickle",
            path.display()
        )))
    })
}

fn read_checked_pickle(
    path: &Path,
    storages: &HashMap<String, u64>,
) -> Result<Vec<(String, Tensor)>> {
    let on_disk = std::fs::metadata(path)
        .map_err(|e| user(format!("cannot read {}: {e}", path.display())))?
        .len();
    let pth = candle_core::pickle::PthTensors::new(path, None).map_err(|e| candle(path, e))?;
    for (name, info) in pth.tensor_infos() {
        // Read from the storage entry's start: offset plus every element. candle reads no
        // compressed entry, so a storage's bytes lie in the file as they are.
        let need = info
            .layout
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| {
                n.checked_mul(d as u64)
            })
            .and_then(|n| n.checked_add(info.layout.start_offset() as u64));
        let have = storages.get(&info.path).copied().unwrap_or(0).min(on_disk);
        if need.is_none_or(|n| n > have) {
            return Err(user(format!(
                "{}: tensor `{name}` of shape {:?} ({:?}) needs more than the {have} bytes its \
                 storage `{}` holds",
                path.display(),
                info.layout.dims(),
                info.dtype,
                info.path
            )));
        }
    }
    let mut out = Vec::with_capacity(pth.tensor_infos().len());
    for name in pth.tensor_infos().keys() {
        if let Some(t) = pth.get(name).map_err(|e| candle(path, e))? {
            out.push((name.clone(), t));
        }
    }
    Ok(out)
}

/// candle's reader error, cut short: some print a whole pickled object.
fn candle(path: &Path, e: candle_core::Error) -> anyhow::Error {
    let mut msg = e.to_string();
    if msg.len() > 300 {
        let mut end = 300;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str("...");
    }
    user(format!("cannot read {}: {msg}", path.display()))
}

/// The largest `data.pkl` read: a state dict's pickle holds names, shapes and storage keys,
/// about 100 bytes a tensor (tiny-bert's 44 tensors: 4.5 KB), so an encoder's thousand
/// tensors are some 100 KB and 64 MiB is hundreds of times that; the tensors' data are
/// other entries.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// The deepest nesting of objects a pickle may build. candle's reader drops and compares
/// its objects recursively: 200,000 nested lists overflow the stack. A state dict nests
/// fewer than 10 deep (dict, tensor, rebuild arguments, shape tuple).
pub const MAX_PICKLE_DEPTH: usize = 1_000;
/// The most memory, in bytes as estimated, the objects of one pickle may take as candle
/// builds them. Its memo copies an object on every put and every get, so a few hundred
/// bytes of gets can double a list forty times. A state dict takes about 4 KB a tensor
/// (tiny-bert's: 166 KB), so an encoder's thousand tensors some 4 MB: this is 60 times
/// that.
pub const MAX_PICKLE_OBJECTS: u64 = 256 << 20;

/// Open the checkpoint's zip and check every `*data.pkl` in it (the entries candle's
/// reader unpickles) against the bounds above, before the reader sees one. Returns every
/// entry's size by name: the tensors' storages.
fn check_zip(path: &Path) -> Result<HashMap<String, u64>> {
    use std::io::Read;
    let bad = |e: &dyn std::fmt::Display| user(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| bad(&e))?;
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        // Raw: sizing an entry candle never reads must not fail on its compression.
        let raw = zip.by_index_raw(i).map_err(|e| bad(&e))?;
        let name = raw.name().map_err(|e| bad(&e))?.into_owned();
        sizes.insert(name.clone(), raw.size());
        drop(raw);
        if !name.ends_with("data.pkl") {
            continue;
        }
        let mut entry = zip.by_index(i).map_err(|e| bad(&e))?;
        let at = |why: String| user(format!("{}: {name}: {why}", path.display()));
        let too_big = || {
            at(format!(
                "a pickle of more than {MAX_PICKLE_BYTES} bytes; a state dict's is well under a \
                 few megabytes"
            ))
        };
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(&e))?;
        if bytes.len() as u64 > MAX_PICKLE_BYTES {
            return Err(too_big());
        }
        check_pickle(&bytes).map_err(at)?;
    }
    Ok(sizes)
}

/// What the walk knows of an object on candle's stack: how deep it nests and how many
/// bytes it takes, its children's included.
#[derive(Clone, Copy)]
struct Shape {
    depth: usize,
    bytes: u64,
    mark: bool,
}

/// Walk a pickle's opcodes as `candle_core::pickle::Stack::read` does, building nothing:
/// each object is its nesting depth and its size, and the bytes of every object candle
/// would build or copy are summed. Refused past [`MAX_PICKLE_DEPTH`] or
/// [`MAX_PICKLE_OBJECTS`]; where candle's reader fails anyway (an unknown opcode, the end
/// of the data, an empty stack), the walk stops and leaves the error to it.
fn check_pickle(data: &[u8]) -> std::result::Result<(), String> {
    // One object's own size; strings add their bytes, containers their children's.
    const NODE: u64 = std::mem::size_of::<candle_core::pickle::Object>() as u64;
    let atom = |strings: u64| Shape {
        depth: 1,
        bytes: NODE + strings,
        mark: false,
    };
    let parent = |children: &[Shape]| Shape {
        depth: 1 + children.iter().map(|c| c.depth).max().unwrap_or(0),
        bytes: NODE + children.iter().map(|c| c.bytes).sum::<u64>(),
        mark: false,
    };
    let mut stack: Vec<Shape> = Vec::new();
    let mut memo: HashMap<u32, Shape> = HashMap::new();
    let mut built: u64 = 0;
    let mut at = 0usize;
    // The next n argument bytes; at the end of the data, the walk is over.
    macro_rules! take {
        ($n:expr) => {{
            let n: usize = $n;
            match data.get(at..at.saturating_add(n)) {
                Some(b) => {
                    at += n;
                    b
                }
                None => return Ok(()),
            }
        }};
    }
    macro_rules! u32_arg {
        () => {{
            let b = take!(4);
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }};
    }
    macro_rules! pop {
        () => {
            match stack.pop() {
                Some(s) => s,
                None => return Ok(()),
            }
        };
    }
    macro_rules! pop_to_mark {
        () => {
            match stack.iter().rposition(|s| s.mark) {
                Some(i) => {
                    let above = stack.split_off(i + 1);
                    stack.pop();
                    above
                }
                None => return Ok(()),
            }
        };
    }
    while at < data.len() {
        let op = data[at];
        at += 1;
        // The object this opcode leaves on top of the stack, and the bytes it allocates.
        let (top, new_bytes) = match op {
            0x80 => {
                take!(1);
                continue;
            }
            b'c' => {
                // Module and class, each up to a newline (or the end).
                let mut len = 0;
                for _ in 0..2 {
                    let rest = &data[at..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1);
                    at += n;
                    len += n as u64;
                }
                (atom(len), NODE + len)
            }
            b'K' | b'M' | b'J' | b'G' => {
                take!(match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                });
                (atom(0), NODE)
            }
            b'X' => {
                let len = u32_arg!() as usize;
                if len > data.len() - at {
                    // candle would allocate all of it before finding the end.
                    return Err(format!(
                        "a string of {len} bytes runs past the end of the pickle"
                    ));
                }
                take!(len);
                (atom(len as u64), NODE + len as u64)
            }
            0x8a => {
                let n = take!(1)[0] as usize;
                take!(n);
                (atom(0), NODE)
            }
            0x88 | 0x89 | b'N' | b'}' | b'd' | b')' | b']' => (atom(0), NODE),
            b'(' => (
                Shape {
                    mark: true,
                    ..atom(0)
                },
                NODE,
            ),
            b'Q' => {
                let id = pop!();
                (parent(&[id]), NODE)
            }
            b't' => {
                let items = pop_to_mark!();
                (parent(&items), NODE)
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Ok(());
                }
                let items = stack.split_off(stack.len() - n);
                (parent(&items), NODE)
            }
            b'b' | b'R' | 0x81 => {
                let args = pop!();
                let obj = pop!();
                (parent(&[obj, args]), NODE)
            }
            // Append, appends, set item, set items: into the list or dict below, which
            // candle's reader requires to be there.
            b'a' | b'e' | b's' | b'u' => {
                let items = match op {
                    b'a' => vec![pop!()],
                    b's' => {
                        let value = pop!();
                        let key = pop!();
                        vec![key, value]
                    }
                    _ => pop_to_mark!(),
                };
                match stack.pop() {
                    Some(last) if !last.mark => {
                        let added = parent(&items);
                        let grown = Shape {
                            depth: last.depth.max(added.depth),
                            bytes: last.bytes + added.bytes - NODE,
                            mark: false,
                        };
                        (grown, 0)
                    }
                    _ => return Ok(()),
                }
            }
            // Get: a copy of the memo's object.
            b'h' | b'j' => {
                let id = if op == b'h' {
                    take!(1)[0] as u32
                } else {
                    u32_arg!()
                };
                match memo.get(&id) {
                    Some(s) => (*s, s.bytes),
                    None => return Ok(()),
                }
            }
            // Put: the memo keeps a copy of the top of the stack.
            b'q' | b'r' => {
                let id = if op == b'q' {
                    take!(1)[0] as u32
                } else {
                    u32_arg!()
                };
                let Some(last) = stack.last().copied() else {
                    return Ok(());
                };
                memo.insert(id, last);
                built = built.saturating_add(last.bytes);
                if built > MAX_PICKLE_OBJECTS {
                    return Err(too_much(at));
                }
                continue;
            }
            b'.' => return Ok(()),
            // candle's reader stops here with an error of its own.
            _ => return Ok(()),
        };
        if top.depth > MAX_PICKLE_DEPTH {
            return Err(format!(
                "objects nested more than {MAX_PICKLE_DEPTH} deep (at byte {at}); a state dict \
                 nests fewer than 10"
            ));
        }
        built = built.saturating_add(new_bytes);
        if built > MAX_PICKLE_OBJECTS {
            return Err(too_much(at));
        }
        stack.push(top);
    }
    Ok(())
}

fn too_much(at: usize) -> String {
    format!(
        "its objects would take more than {MAX_PICKLE_OBJECTS} bytes in memory (at byte \
         {at}); a state dict's take some 4 KB a tensor"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_checkpoints_pickle_passes_the_walk() {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-bin");
        let sizes = check_zip(&bin.join("pytorch_model.bin")).unwrap();
        assert!(sizes.keys().any(|k| k.ends_with("data.pkl")), "{sizes:?}");
        let w = read_pickle(&bin.join("pytorch_model.bin")).unwrap();
        assert!(w
            .iter()
            .any(|(n, _)| n.ends_with("encoder.layer.0.output.dense.weight")));
    }

    /// A protocol-2 pickle of `body`, stopped.
    fn pickle(body: &[u8]) -> Vec<u8> {
        [&[0x80, 2][..], body, b"."].concat()
    }

    #[test]
    fn deep_nesting_is_refused_before_candle_recurses() {
        // n empty lists, each appended into the one below: n deep.
        let nested = |n: usize| pickle(&[vec![b']'; n], vec![b'a'; n - 1]].concat());
        assert_eq!(check_pickle(&nested(MAX_PICKLE_DEPTH)), Ok(()));
        let err = check_pickle(&nested(200_000)).unwrap_err();
        assert!(err.contains("nested more than 1000 deep"), "{err}");
        // Tuples of tuples, and objects reduced around objects, count the same.
        let tuples = pickle(&[vec![b')'], vec![0x85; 2_000]].concat());
        assert!(check_pickle(&tuples).unwrap_err().contains("deep"));
        // {1: {1: {...}}}: each dict set as a value into the one below.
        let dict_values =
            pickle(&[vec![b'}'], [b'K', 1, b'}'].repeat(1_500), vec![b's'; 1_500]].concat());
        assert!(check_pickle(&dict_values).is_err());
        // Wide is fine: a list of 100,000 ints is one deep.
        let wide = pickle(&[vec![b']', b'('], [b'K', 7].repeat(100_000), vec![b'e']].concat());
        assert_eq!(check_pickle(&wide), Ok(()));
    }

    #[test]
    fn memo_copies_are_counted() {
        // A list put in the memo, then twice over: each round doubles what candle builds.
        let mut body = vec![b']', b'K', 1, b'a', b'q', 0];
        for _ in 0..40 {
            body.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        let err = check_pickle(&pickle(&body)).unwrap_err();
        assert!(err.contains("would take more than"), "{err}");
        // A few rounds are a few objects.
        body.truncate(6 + 7 * 5);
        assert_eq!(check_pickle(&pickle(&body)), Ok(()));
    }

    #[test]
    fn strings_past_the_end_and_broken_pickles() {
        let err = check_pickle(&pickle(&[b'X', 0xff, 0xff, 0xff, 0xff, b'a'])).unwrap_err();
        assert!(err.contains("runs past the end"), "{err}");
        // Errors of candle's own (empty stack, no mark, unknown opcode, the end) are left
        // to it.
        for broken in [&b"a"[..], b"t", b"\xff", b"]q", b"X\x01\x00"] {
            assert_eq!(check_pickle(broken), Ok(()), "{broken:?}");
        }
    }

    /// A `pytorch_model.bin` of these stored entries, in a temporary directory.
    fn checkpoint(entries: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(*name, stored).unwrap();
            std::io::Write::write_all(&mut zip, bytes).unwrap();
        }
        zip.finish().unwrap();
        dir
    }

    #[test]
    fn nested_pickle_in_a_checkpoint_is_a_user_error_naming_the_file() {
        let body = [vec![b']'; 200_000], vec![b'a'; 199_999]].concat();
        let dir = checkpoint(&[("archive/data.pkl", &pickle(&body))]);
        let err = read_pickle(&dir.path().join("pytorch_model.bin")).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("pytorch_model.bin") && msg.contains("data.pkl"),
            "{msg}"
        );
        assert!(msg.contains("deep"), "{msg}");
    }

    /// The pickle of {"w": _rebuild_tensor_v2(persistent ("storage", FloatStorage, "0",
    /// "cpu", 1), 0, size, stride, False, OrderedDict())}, as torch.save writes one tensor.
    fn one_tensor(size: &[i32], stride: &[i32]) -> Vec<u8> {
        let text = |s: &str| [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat();
        let ints = |v: &[i32]| {
            let mut out = vec![b'('];
            for x in v {
                out.push(b'J');
                out.extend_from_slice(&x.to_le_bytes());
            }
            out.push(b't');
            out
        };
        let body = [
            &b"}("[..],
            &text("w"),
            b"ctorch._utils\n_rebuild_tensor_v2\n(",
            b"(",
            &text("storage"),
            b"ctorch\nFloatStorage\n",
            &text("0"),
            &text("cpu"),
            b"K\x01tQK\x00",
            &ints(size),
            &ints(stride),
            b"\x89ccollections\nOrderedDict\n)RtRu",
        ]
        .concat();
        pickle(&body)
    }

    #[test]
    fn a_tensor_larger_than_its_storage_is_refused_before_it_is_allocated() {
        // 18 EB of f32 claimed, 4 bytes stored: candle would allocate the claim first.
        let huge = one_tensor(&[i32::MAX, i32::MAX], &[i32::MAX, 1]);
        let dir = checkpoint(&[("archive/data.pkl", &huge), ("archive/data/0", &[0u8; 4])]);
        let err = read_pickle(&dir.path().join("pytorch_model.bin")).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("pytorch_model.bin")
                && msg.contains("tensor `w`")
                && msg.contains("4 bytes its storage `archive/data/0`"),
            "{msg}"
        );
        // The one float it stores reads.
        let one = one_tensor(&[1], &[1]);
        let bytes = 2.5f32.to_le_bytes();
        let dir = checkpoint(&[("archive/data.pkl", &one), ("archive/data/0", &bytes)]);
        let t = read_pickle(&dir.path().join("pytorch_model.bin")).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "w");
        assert_eq!(t[0].1.to_vec1::<f32>().unwrap(), vec![2.5]);
    }
}
