//! Reports over run directories: a table of runs, a sweep's summary, plots.

pub mod plot;
pub mod runs;
pub mod summary;
pub mod table;
