//! Reports over run directories: a table of runs, a sweep's summary, a grid's best
//! learning rates, plots.

pub mod best_lr;
pub mod plot;
pub mod runs;
pub mod summary;
pub mod table;
