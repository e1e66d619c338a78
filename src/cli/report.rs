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
    /// Send each finished run, whole, to a tracker instead of printing: mlflow (the server
    /// at $MLFLOW_TRACKING_URI): a run a down server missed, or one from before tracking.
    #[arg(long, value_enum)]
    pub to: Option<Sink>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Sink {
    Mlflow,
}

/// Each finished run to MLflow: its settings, every evaluation's metrics at its step (and
/// the training loss and rate recorded with it), the best ones, finished; its
/// mlflow_pending.jsonl goes, since the run is sent whole.
fn to_mlflow(runs: &[runs::Run]) -> Result<()> {
    let (mut sent, mut failed) = (0, 0);
    for r in runs.iter().filter(|r| r.finished) {
        let info = crate::run::dir::RunInfo::load(&r.dir)?;
        let _ = std::fs::remove_file(r.dir.join(crate::run::mlflow::PENDING));
        let m = crate::train::trackers::mlflow_for(&info.train)?;
        for rec in &r.records {
            let mut values = vec![
                ("train/loss".to_string(), rec.train_loss),
                ("train/learning_rate".to_string(), rec.lr),
                ("train/epoch".to_string(), rec.epoch),
            ];
            for (split, metrics) in &rec.dev {
                for (k, v) in metrics {
                    values.push((format!("eval/{split}/{k}"), *v));
                }
            }
            m.metrics(rec.step, &values);
        }
        if let Some(best) = r.best() {
            let values: Vec<(String, f64)> = best
                .dev
                .iter()
                .flat_map(|(split, ms)| {
                    ms.iter()
                        .map(move |(k, v)| (format!("best/{split}/{k}"), *v))
                })
                .collect();
            m.metrics(best.step, &values);
        }
        match m.finish() {
            true => sent += 1,
            false => failed += 1,
        }
    }
    println!("sent {sent} runs to MLflow");
    if failed > 0 {
        anyhow::bail!("{failed} runs were not sent; each kept what it could not send in its mlflow_pending.jsonl");
    }
    Ok(())
}

pub fn run(args: ReportArgs) -> Result<()> {
    if let Some(p) = &args.plot {
        plot::format_of(p)?;
    }
    let runs = runs::collect(&args.runs)?;
    if let Some(Sink::Mlflow) = args.to {
        return to_mlflow(&runs);
    }
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
