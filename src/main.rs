// As in the library: every unsafe operation in a block that says why it is sound.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::Parser;
use peft::cli::{run, Cli};

fn main() -> ExitCode {
    end_quietly_on_a_closed_pipe();
    keep_freed_memory();
    no_backtraces_in_error_messages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(i) = err.downcast_ref::<peft::train::fit::Interrupted>() {
                eprintln!("{i}");
                return ExitCode::from(130);
            }
            eprintln!("error: {err:#}");
            if peft::error::is_user_error(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// With `RUST_BACKTRACE=1` in the environment (common on developer machines and CI),
/// candle captures a backtrace into every error it builds and prints it as part of the
/// message: a bad input became 60 lines. Errors are messages for the user, so library
/// backtraces are off unless asked for by name (`RUST_LIB_BACKTRACE=1`); a panic, which
/// is our bug, still prints its backtrace under `RUST_BACKTRACE`.
fn no_backtraces_in_error_messages() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Before any other thread exists and before any backtrace is captured (the
        // standard library reads the variable once, on the first capture).
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Training allocates and frees the same large activation buffers every step. glibc hands
/// blocks above its mmap threshold back to the kernel on free and pays page faults and
/// zeroing on the next allocation: a quarter of a training step in `perf`. Serving them
/// from the heap and never trimming it keeps them for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes plain integers and only changes glibc's allocator thresholds
    // (no pointer is passed, no memory is freed); it is called before any other thread
    // exists, so no allocation runs concurrently.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// `peft predict ... | head -1`: when the reader of stdout goes away, end as `cat` and
/// `grep` do, by SIGPIPE, silently (the shell reports 141), not with an error message or a
/// panic. Rust ignores SIGPIPE before `main`, so each write to the closed pipe would fail
/// with EPIPE, which `println!` turns into a panic; restoring the default action covers
/// every command and every writer at once, stderr included. Sockets are not affected:
/// std sends on them with MSG_NOSIGNAL and gets EPIPE as an error.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: signal(2) with SIG_DFL installs no handler (no code runs in signal context);
    // it only restores the kernel's default action for SIGPIPE, before any other thread
    // exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
