//! The report's PNG charts: accuracy bars with error bars, one reasoning-length histogram per
//! model, and speed against size. Drawn with plotters' bitmap backend and the embedded font
//! the corpus crate's chart module registers, so text renders on a machine without system fonts.

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{human_bytes, role_suffix};

use distill_corpus::chart::FONT;
const WIDTH: u32 = 960;
/// Colours that stay apart for colour-blind readers (Okabe–Ito blue and orange).
const PASS: RGBColor = RGBColor(0, 114, 178);
const CONS: RGBColor = RGBColor(230, 159, 0);
const GREY: RGBColor = RGBColor(90, 90, 90);

fn ensure_font() -> anyhow::Result<()> {
    Ok(distill_corpus::chart::ensure_font()?)
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw `{}`: {e}", path.display())
}

/// Labels longer than this are shortened so neighbours never overlap.
fn short(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_string()
    } else {
        let head: String = label.chars().take(max - 1).collect();
        format!("{head}…")
    }
}

/// One model's bars in the accuracy chart (fractions in 0..=1).
#[derive(Debug, Clone)]
pub struct AccuracyBar {
    pub label: String,
    pub pass_at_1: Option<f64>,
    pub se: Option<f64>,
    pub cons_at_k: Option<f64>,
}

/// Grouped bars: pass@1 with ± one standard error, and cons@k, per model.
pub fn accuracy(path: &Path, bars: &[AccuracyBar], k: u32) -> anyhow::Result<()> {
    ensure_font()?;
    let n = bars.len().max(1);
    let root = BitMapBackend::new(path, (WIDTH, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let (head, body) = root.split_vertically(70);
    head.draw_text(
        "Accuracy on held-out problems",
        &(FONT, 24).into_text_style(&head),
        (20, 14),
    )
    .map_err(|e| draw_err(path, e))?;
    // The legend sits in the header, so it can never cover a bar.
    let legend = [
        (PASS, "pass@1 (± 1 standard error)".to_string()),
        (CONS, format!("cons@{k} (majority vote)")),
    ];
    let mut x = 20;
    for (colour, text) in &legend {
        head.draw(&Rectangle::new([(x, 48), (x + 16, 62)], colour.filled()))
            .map_err(|e| draw_err(path, e))?;
        head.draw_text(text, &(FONT, 15).into_text_style(&head), (x + 22, 47))
            .map_err(|e| draw_err(path, e))?;
        x += 40 + 9 * text.chars().count() as i32;
    }
    let max_label = (110 / n).clamp(8, 28);
    let labels: Vec<String> = bars
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let name = short(&b.label, max_label);
            format!("{name}{}", role_suffix(i, &b.label))
        })
        .collect();
    let mut chart = ChartBuilder::on(&body)
        .margin_left(16)
        .margin_right(24)
        .margin_bottom(10)
        .margin_top(10)
        .x_label_area_size(40)
        .y_label_area_size(64)
        // Models sit at integer x; ±0.5 leaves half a slot at each end.
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..105f64)
        .map_err(|e| draw_err(path, e))?;
    let x_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(1)
        .x_labels(n + 1)
        .x_label_formatter(&x_label)
        .y_labels(6)
        .y_label_formatter(&|y| format!("{y:.0}%"))
        .y_desc("problems solved")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    // Anchored at its bottom centre, so a value label sits right above its bar or whisker.
    let value_style = (FONT, 14)
        .into_font()
        .color(&GREY)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, bar) in bars.iter().enumerate() {
        let c = i as f64;
        for (value, colour, x0, x1) in [
            (bar.pass_at_1, PASS, c - 0.38, c - 0.02),
            (bar.cons_at_k, CONS, c + 0.02, c + 0.38),
        ] {
            let Some(v) = value else { continue };
            let v = 100.0 * v;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x1, v)],
                    colour.filled(),
                )))
                .map_err(|e| draw_err(path, e))?;
            let top = if colour == PASS {
                v + 100.0 * bar.se.unwrap_or(0.0)
            } else {
                v
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.0}%"),
                    ((x0 + x1) / 2.0, (top + 1.0).min(104.0)),
                    value_style.clone(),
                )))
                .map_err(|e| draw_err(path, e))?;
        }
        if let (Some(v), Some(se)) = (bar.pass_at_1, bar.se.filter(|&se| se > 0.0)) {
            let (v, se) = (100.0 * v, 100.0 * se);
            let (lo, hi, x, w) = ((v - se).max(0.0), (v + se).min(100.0), c - 0.2, 0.05);
            // Whisker and caps as plain paths (plotters' `ErrorBar` is a feature we do not
            // build).
            let style = BLACK.stroke_width(2);
            chart
                .draw_series([
                    PathElement::new(vec![(x, lo), (x, hi)], style),
                    PathElement::new(vec![(x - w, lo), (x + w, lo)], style),
                    PathElement::new(vec![(x - w, hi), (x + w, hi)], style),
                ])
                .map_err(|e| draw_err(path, e))?;
        }
    }
    root.present().map_err(|e| draw_err(path, e))
}

/// One histogram panel per model over shared bins, so lengths compare at a glance.
pub fn reasoning_lengths(path: &Path, models: &[(String, Vec<u64>)]) -> anyhow::Result<()> {
    ensure_font()?;
    const BINS: u64 = 30;
    const PANEL: u32 = 170;
    let n = models.len().max(1);
    let height = 60 + PANEL * n as u32 + 50;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let (head, rest) = root.split_vertically(60);
    head.draw_text(
        "Reasoning length per sample (tokens inside <think>)",
        &(FONT, 24).into_text_style(&head),
        (20, 18),
    )
    .map_err(|e| draw_err(path, e))?;
    let max = models
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let width = max.div_ceil(BINS).max(1);
    let x_end = width * BINS;
    let panels = rest.split_evenly((n, 1));
    for (i, ((label, values), area)) in models.iter().zip(panels.iter()).enumerate() {
        let mut counts = vec![0u64; BINS as usize];
        for &v in values {
            counts[((v / width) as usize).min(BINS as usize - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(0).max(1);
        let caption = if values.is_empty() {
            format!("{} — no samples", short(label, 40))
        } else {
            let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
            format!(
                "{} — {} samples, mean {mean:.0}",
                short(label, 40),
                values.len()
            )
        };
        let last = i + 1 == models.len();
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 16))
            .margin_left(16)
            .margin_right(24)
            .margin_top(8)
            .x_label_area_size(if last { 44 } else { 22 })
            .y_label_area_size(64)
            .build_cartesian_2d(0u64..x_end, 0u64..top + top / 8 + 1)
            .map_err(|e| draw_err(path, e))?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .y_max_light_lines(1)
            .y_labels(4)
            .y_desc("samples")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14));
        if last {
            mesh.x_desc("reasoning tokens");
        }
        mesh.draw().map_err(|e| draw_err(path, e))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(b, &c)| {
                let x0 = b as u64 * width;
                let mut bar = Rectangle::new([(x0, 0), (x0 + width, c)], PASS.mix(0.85).filled());
                bar.set_margin(0, 0, 1, 1);
                bar
            }))
            .map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))
}

/// One point per model: bytes on disk against generated tokens per second, both on log scales
/// (a 1.5B student and a 70B teacher differ by orders of magnitude in both).
pub fn speed_size(
    path: &Path,
    points: &[(String, Option<u64>, Option<f64>)],
) -> anyhow::Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (WIDTH, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let known: Vec<(usize, &str, f64, f64)> = points
        .iter()
        .enumerate()
        .filter_map(|(i, (l, b, s))| Some((i, l.as_str(), (*b)? as f64, (*s)?)))
        .filter(|(_, _, b, s)| *b > 0.0 && *s > 0.0 && s.is_finite())
        .collect();
    let span = |values: Vec<f64>, default: (f64, f64)| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(0.0, f64::max);
        if values.is_empty() {
            default
        } else {
            (lo / 3.0, hi * 3.0)
        }
    };
    let (x_lo, x_hi) = span(
        known.iter().map(|p| p.2).collect(),
        (1024.0, 1024.0 * 1024.0),
    );
    let (y_lo, y_hi) = span(known.iter().map(|p| p.3).collect(), (1.0, 1000.0));
    let mut chart = ChartBuilder::on(&root)
        .caption("Generation speed against size on disk", (FONT, 24))
        .margin(20)
        .margin_right(30)
        .x_label_area_size(50)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (x_lo..x_hi)
                .log_scale()
                .with_key_points(round_ticks(x_lo, x_hi, 1024.0)),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(round_ticks(y_lo, y_hi, 1000.0)),
        )
        .map_err(|e| draw_err(path, e))?;
    chart
        .configure_mesh()
        .max_light_lines(1)
        .x_label_formatter(&|b| human_bytes(b.round() as u64))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .x_desc("weights on disk (log scale)")
        .y_desc("generated tokens / s (log scale)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(|e| draw_err(path, e))?;
    if known.is_empty() {
        let style = (FONT, 18)
            .into_text_style(&root)
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw_text(
            "no model has both a size on disk and a measured speed",
            &style,
            (WIDTH as i32 / 2, 270),
        )
        .map_err(|e| draw_err(path, e))?;
    }
    let frac = |v: f64, lo: f64, hi: f64| (v.ln() - lo.ln()) / (hi.ln() - lo.ln());
    for (n, (i, label, bytes, speed)) in known.iter().enumerate() {
        let colour = if *i == 0 { CONS } else { PASS };
        let role = role_suffix(*i, label);
        chart
            .draw_series(std::iter::once(Circle::new(
                (*bytes, *speed),
                7,
                colour.filled(),
            )))
            .map_err(|e| draw_err(path, e))?;
        // Text goes left of points in the right half (never past the edge), and alternates
        // above and below so two models of similar size do not print over each other.
        let right_half = frac(*bytes, x_lo, x_hi) > 0.55;
        let above = if n % 2 == 0 {
            frac(*speed, y_lo, y_hi) < 0.85
        } else {
            frac(*speed, y_lo, y_hi) < 0.15
        };
        let (dx, h) = if right_half {
            (-12, HPos::Right)
        } else {
            (12, HPos::Left)
        };
        let (dy, v) = if above {
            (-8, VPos::Bottom)
        } else {
            (8, VPos::Top)
        };
        let style = (FONT, 14).into_font().color(&BLACK).pos(Pos::new(h, v));
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((*bytes, *speed))
                    + Text::new(
                        format!("{}{role}: {speed:.0} tok/s", short(label, 28)),
                        (dx, dy),
                        style,
                    ),
            ))
            .map_err(|e| draw_err(path, e))?;
    }
    root.present()
        .map_err(|e| draw_err(path, e))
        .with_context(|| format!("writing `{}`", path.display()))
}

/// Round values (1, 2, 5, 10, 20, 50… of each power of `unit`: 1024 for bytes so ticks read
/// `256 KiB`, 1000 for rates) between `lo` and `hi`, thinned to at most eight.
fn round_ticks(lo: f64, hi: f64, unit: f64) -> Vec<f64> {
    let mut ticks: Vec<f64> = (-2..6)
        .flat_map(|power| {
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
                .into_iter()
                .map(move |m| m * unit.powi(power))
        })
        .filter(|&t| t >= lo && t <= hi)
        .collect();
    ticks.dedup();
    while ticks.len() > 8 {
        ticks = ticks.into_iter().step_by(2).collect();
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
    }

    /// Crafted numbers (a good teacher, two students, one long label); the files stay in the
    /// temporary folder so a person can look at them.
    #[test]
    fn charts_render_crafted_data() {
        let dir = std::env::temp_dir().join("distill-compare-charts");
        std::fs::create_dir_all(&dir).unwrap();
        let bars = vec![
            AccuracyBar {
                label: "r1-teacher".into(),
                pass_at_1: Some(0.95),
                se: Some(0.04),
                cons_at_k: Some(1.0),
            },
            AccuracyBar {
                label: "student-with-a-rather-long-name-1.5B".into(),
                pass_at_1: Some(0.62),
                se: Some(0.08),
                cons_at_k: Some(0.7),
            },
            AccuracyBar {
                label: "tiny".into(),
                pass_at_1: Some(0.0),
                se: Some(0.0),
                cons_at_k: None,
            },
        ];
        accuracy(&dir.join("accuracy.png"), &bars, 4).unwrap();
        let lengths = vec![
            (
                "r1-teacher".to_string(),
                (0..400).map(|i| 200 + (i * 37) % 900).collect(),
            ),
            (
                "student".to_string(),
                (0..400).map(|i| 100 + (i * 53) % 400).collect(),
            ),
            ("tiny".to_string(), vec![]),
        ];
        reasoning_lengths(&dir.join("reasoning_lengths.png"), &lengths).unwrap();
        let points = vec![
            ("r1-teacher".to_string(), Some(3_400_000_000), Some(12.5)),
            ("student".to_string(), Some(900_000_000), Some(48.0)),
            ("tiny".to_string(), Some(250_000), Some(1500.0)),
            ("remote".to_string(), None, Some(30.0)),
        ];
        speed_size(&dir.join("speed_size.png"), &points).unwrap();
        speed_size(&dir.join("speed_size_empty.png"), &[]).unwrap();
        for name in [
            "accuracy",
            "reasoning_lengths",
            "speed_size",
            "speed_size_empty",
        ] {
            assert!(is_png(&dir.join(format!("{name}.png"))), "{name}");
        }
    }

    #[test]
    fn ticks_are_round_values() {
        let kib = [102_400.0, 204_800.0, 512_000.0];
        assert_eq!(round_ticks(100_000.0, 1_000_000.0, 1024.0), kib);
        assert!(round_ticks(1.0, 1e13, 1024.0).len() <= 8);
        assert_eq!(
            round_ticks(4.0, 150.0, 1000.0),
            [5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }
}
