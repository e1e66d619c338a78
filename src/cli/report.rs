//! `peft report`: a table of run directories (and plots of them).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::report::{best_lr, plot, runs, table};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns for the terminal.
    Text,
    /// A GitHub table.
    Markdown,
    /// One row per run and metric, numbers as recorded (fractions, seconds).
    Csv,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories, or folders holding run directories (looked into one level deep,
    /// e.g. `runs/` or a sweep's folder).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also draw loss and dev metric against step, and methods per task: FILE.png or FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Only the grid's table: per task and method the best learning rate's median over
    /// seeds (in CSV one row per task, method and setting, numbers as recorded).
    #[arg(long)]
    pub grid: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    if let Some(p) = &args.plot {
        plot::format_of(p)?;
    }
    let runs = runs::collect(&args.runs)?;
    if args.grid {
        if !best_lr::applies(&runs) {
            crate::user_bail!(
                "--grid: no task and method here has finished runs of more than one seed"
            );
        }
        match args.format {
            Format::Text => print!("{}", best_lr::table(&runs).text()),
            Format::Markdown => print!(
                "{}\n{}",
                best_lr::table(&runs).markdown(),
                best_lr::wide(&runs).markdown()
            ),
            Format::Csv => print!("{}", best_lr::csv(&runs)),
        }
        if let Some(p) = &args.plot {
            plot::plot(&runs, p)?;
            eprintln!("plot written to {}", p.display());
        }
        return Ok(());
    }
    let several_seeds = table::medians(&runs).values().any(|(_, v)| v.len() > 1);
    let grid = best_lr::applies(&runs);
    match args.format {
        Format::Text => {
            print!("{}", table::runs_table(&runs).text());
            if several_seeds {
                println!(
                    "\nfinal dev metric x100 across finished runs of the same task and method"
                );
                print!("{}", table::groups_table(&runs).text());
            }
            if grid {
                println!(
                    "\nbest learning rate per task and method: median of the seeds' best dev \
                     metric x100"
                );
                print!("{}", best_lr::table(&runs).text());
                println!();
                print!("{}", best_lr::wide(&runs).text());
            }
        }
        Format::Markdown => {
            print!("{}", table::runs_table(&runs).markdown());
            if several_seeds {
                println!(
                    "\nFinal dev metric ×100 across finished runs of the same task and method:\n"
                );
                print!("{}", table::groups_table(&runs).markdown());
            }
            if grid {
                println!(
                    "\nBest learning rate per task and method: median of the seeds' best dev \
                     metric ×100:\n"
                );
                print!("{}", best_lr::table(&runs).markdown());
                println!("\nAs the papers lay it out (median ± std over seeds, at the best lr):\n");
                print!("{}", best_lr::wide(&runs).markdown());
            }
        }
        Format::Csv => print!("{}", table::csv(&runs)),
    }
    if let Some(p) = &args.plot {
        plot::plot(&runs, p)?;
        eprintln!("plot written to {}", p.display());
    }
    Ok(())
}
