//! Two kinds of failure: the user's input was wrong (exit 2), or we were (exit 1).
//!
//! Library code returns `anyhow::Result` with context naming the file, line or tensor.
//! Errors caused by user input carry a [`UserError`] somewhere in their chain so that
//! `main` can pick the exit code without string matching.

use std::fmt;

/// Marker for an error the user can fix: a missing file, a malformed row, a typo.
#[derive(Debug)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// Build an `anyhow::Error` that `main` reports with exit code 2.
pub fn user(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// `bail!` for user errors.
#[macro_export]
macro_rules! user_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::user(format!($($arg)*)))
    };
}

/// True when any error in the chain is a [`UserError`].
pub fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<UserError>())
}

/// Attach user-error context to I/O failures on a named path.
pub trait PathContext<T> {
    fn path_context(self, what: &str, path: &std::path::Path) -> anyhow::Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> PathContext<T> for Result<T, E> {
    fn path_context(self, what: &str, path: &std::path::Path) -> anyhow::Result<T> {
        self.map_err(|e| user(format!("{what} {}: {e}", path.display())))
    }
}
