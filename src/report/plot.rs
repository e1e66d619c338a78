//! `peft report --plot`: training loss and the dev metric against step (one line per run),
//! and a bar chart of the final dev metric per task and method (median over seeds).
//!
//! PNG or SVG by the file's extension. Text is drawn with a font compiled into the binary
//! (`assets/fonts`), so plotting needs no fontconfig or system fonts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::runs::{main_metric, Run};
use super::table::medians;
use crate::error::user;
use crate::run::record::EvalRecord;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const WIDTH: u32 = 1400;
/// Each task's row of line charts, and the bar chart below them.
const ROW: u32 = 380;
const BARS: u32 = 440;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Png,
    Svg,
}

/// The format a plot path asks for; anything but .png or .svg is refused up front, before
/// reading runs.
pub fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(user(format!(
            "--plot {}: the file name must end in .png or .svg",
            path.display()
        ))),
    }
}

/// The largest magnitude drawn. A real run's losses and metrics (×100) stay below a few
/// thousand; a diverging one's loss can reach any float, and an axis towards 1e308 has no
/// width plotters can cut into ticks (its tick search then never ends). Values past this
/// are left out of the plot, with a note naming the run's metrics.jsonl.
const MAX_PLOTTED: f64 = 1e12;

/// A value the axes can hold; NaN and infinities were never drawn.
fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_PLOTTED
}

/// One line per run and metric with finite values too large to draw: which file, how many,
/// the first of them.
fn left_out(runs: &[Run]) -> Vec<String> {
    let mut notes = Vec::new();
    for run in runs {
        let mut seen: BTreeMap<String, (usize, usize, f64)> = BTreeMap::new();
        for r in &run.records {
            // (name, as recorded, as drawn): metrics are drawn ×100.
            let loss = ("train_loss".to_string(), r.train_loss, r.train_loss);
            let metric = main_metric(&run.train, r).map(|(name, v)| (name, v, 100.0 * v));
            for (name, v, drawn) in std::iter::once(loss).chain(metric) {
                if v.is_finite() && !plottable(drawn) {
                    seen.entry(name).or_insert((0, r.step, v)).0 += 1;
                }
            }
        }
        for (name, (n, step, v)) in seen {
            let times = if n > 1 {
                format!(" and {} more", n - 1)
            } else {
                String::new()
            };
            notes.push(format!(
                "note: --plot leaves out {name} {v:e} at step {step}{times} of {}: beyond \
                 ±{MAX_PLOTTED:e}, no axis holds it",
                run.dir.join(crate::run::dir::METRICS).display()
            ));
        }
    }
    notes
}

pub fn plot(runs: &[Run], path: &Path) -> Result<()> {
    let format = format_of(path)?;
    if runs.iter().all(|r| r.records.is_empty()) {
        return Err(user(
            "--plot: nothing to plot, none of the runs has an evaluation yet",
        ));
    }
    for note in left_out(runs) {
        eprintln!("{note}");
    }
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the bundled font does not parse"))?;
    let size = (WIDTH, ROW * tasks(runs).len().max(1) as u32 + BARS);
    let bytes = match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw(&root, runs)?;
                root.present().map_err(drawing)?;
            }
            svg.into_bytes()
        }
        Format::Png => {
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, runs)?;
                root.present().map_err(drawing)?;
            }
            encode_png(&rgb, size)?
        }
    };
    crate::run::dir::write_atomic(path, &bytes)
}

fn drawing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Best);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The runs' tasks, sorted: losses and metrics of different tasks do not share an axis
/// (STS-B's squared error is several times RTE's cross-entropy).
fn tasks(runs: &[Run]) -> Vec<String> {
    runs.iter()
        .map(|r| r.train.task.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[Run]) -> Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let tasks = tasks(runs);
    let (top, bottom) = root.split_vertically(ROW * tasks.len().max(1) as u32);
    let panels = top.split_evenly((tasks.len().max(1), 2));
    for (task, pair) in tasks.iter().zip(panels.chunks(2)) {
        // Indices into all runs, so a run keeps its colour in every panel.
        let mine: Vec<usize> = (0..runs.len())
            .filter(|&i| runs[i].train.task == *task)
            .collect();
        let metric = mine
            .iter()
            .find_map(|&i| {
                let run = &runs[i];
                run.records.iter().find_map(|r| main_metric(&run.train, r))
            })
            .map_or_else(|| "metric".to_string(), |(name, _)| name);
        lines(
            &pair[0],
            runs,
            &mine,
            &format!("{task}: training loss"),
            "loss",
            true,
            |_, r| Some(r.train_loss),
        )?;
        lines(
            &pair[1],
            runs,
            &mine,
            &format!("{task}: dev {metric}"),
            &format!("{metric} x100"),
            false,
            |run, r| main_metric(&run.train, r).map(|(_, v)| 100.0 * v),
        )?;
    }
    bars(&bottom, runs)
}

/// One line per run of `value` at each evaluation.
fn lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Run],
    which: &[usize],
    title: &str,
    y_desc: &str,
    legend: bool,
    value: impl Fn(&Run, &EvalRecord) -> Option<f64>,
) -> Result<()> {
    let series: Vec<Vec<(f64, f64)>> = which
        .iter()
        .map(|&i| {
            let run = &runs[i];
            run.records
                .iter()
                .filter_map(|r| value(run, r).map(|v| (r.step as f64, v)))
                .filter(|(_, v)| plottable(*v))
                .collect()
        })
        .collect();
    let all = series.iter().flatten();
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = padded(all.map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..max_x * 1.02, lo..hi)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing)?;
    for (&i, points) in which.iter().zip(&series) {
        let run = &runs[i];
        let color = Palette99::pick(i).to_rgba();
        let drawn = chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(drawing)?;
        if legend {
            drawn.label(run.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(drawing)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(drawing)?;
    }
    Ok(())
}

/// A range around the values with a little room; a single value gets a unit around it.
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.06 * (hi - lo) } else { 0.5 };
    // Wide enough for ticks at any magnitude: 1e12 ± 1e-6 is one float.
    let pad = pad.max(1e-9 * lo.abs().max(hi.abs()));
    (lo - pad, hi + pad)
}

/// Bars of the final main metric per method, grouped by task; several finished seeds of a
/// task and method make one bar at their median.
fn bars<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[Run]) -> Result<()> {
    let groups = medians(runs);
    let tasks: Vec<String> = groups
        .keys()
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let methods: Vec<String> = groups
        .keys()
        .map(|(_, m)| m.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let bars: Vec<(usize, usize, f64, usize)> = groups
        .iter()
        .filter_map(|((t, m), (_, values))| {
            let ti = tasks.iter().position(|x| x == t)?;
            let mi = methods.iter().position(|x| x == m)?;
            let med = crate::stats::median(values)?;
            Some((ti, mi, 100.0 * med, values.len()))
        })
        .filter(|b| plottable(b.2))
        .collect();
    let top = bars.iter().map(|b| b.2).fold(0.0, f64::max);
    let bottom = bars.iter().map(|b| b.2).fold(0.0, f64::min);
    let span = (top - bottom).max(1.0);
    let n = tasks.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "final dev metric (x100) by task and method, median over finished runs",
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..n, (bottom - 0.05 * span).min(0.0)..top + 0.15 * span)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc("dev metric x100")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing)?;
    // A lone method's bar stays a bar, not a wall.
    let width = (0.8 / methods.len().max(1) as f64).min(0.25);
    let indent = (1.0 - width * methods.len() as f64) / 2.0;
    for (mi, method) in methods.iter().enumerate() {
        let color = Palette99::pick(mi + 3).to_rgba();
        let mine: Vec<_> = bars.iter().filter(|b| b.1 == mi).collect();
        let x0 = |b: &(usize, usize, f64, usize)| b.0 as f64 + indent + width * mi as f64;
        chart
            .draw_series(mine.iter().map(|b| {
                Rectangle::new(
                    [(x0(b) + 0.01, 0.0), (x0(b) + width - 0.01, b.2)],
                    color.filled(),
                )
            }))
            .map_err(drawing)?
            .label(method.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let label = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(mine.iter().map(|b| {
                let runs = if b.3 > 1 {
                    format!(" ({} runs)", b.3)
                } else {
                    String::new()
                };
                Text::new(
                    format!("{:.1}{runs}", b.2),
                    (x0(b) + width / 2.0, b.2.max(0.0)),
                    label.clone(),
                )
            }))
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(drawing)?;
    // Task names under their groups, in the label area the mesh left empty.
    let base = area.get_base_pixel();
    let (_, y_range) = (chart.x_range(), chart.y_range());
    for (ti, t) in tasks.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(ti as f64 + 0.5, y_range.start));
        area.draw(&Text::new(
            t.clone(),
            (px - base.0, py - base.1 + 12),
            ("sans-serif", 18)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(drawing)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_png_and_svg() {
        assert_eq!(format_of(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(format_of(Path::new("b.svg")).unwrap(), Format::Svg);
        for bad in ["b.jpg", "b", "png"] {
            let err = format_of(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(".png or .svg"), "{err}");
        }
    }

    #[test]
    fn ranges_have_room() {
        assert_eq!(padded([1.0, 1.0].into_iter()), (0.5, 1.5));
        let (lo, hi) = padded([0.0, 10.0].into_iter());
        assert!(lo < 0.0 && hi > 10.0);
        assert_eq!(padded(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = padded([1e12, 1e12].into_iter());
        assert!(lo < 1e12 && hi > 1e12 && (hi - lo) > 1.0);
    }

    #[test]
    fn huge_and_non_finite_values_are_not_drawn() {
        for v in [1e308, -1e13, f64::NAN, f64::INFINITY] {
            assert!(!plottable(v), "{v}");
        }
        for v in [0.0, -3.5, 1e12, 92.1] {
            assert!(plottable(v), "{v}");
        }
    }
}
