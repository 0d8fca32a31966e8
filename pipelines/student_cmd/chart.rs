//! The loss-curve PNG of a training run: training loss per step and held-out loss at each
//! evaluation. Neither the corpus charts (histograms, bars; private to that crate) nor the
//! compare report's charts draw lines over steps, so this one is drawn here, with the same
//! plotters bitmap backend and the embedded font the corpus crate's chart module registers.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use distill_corpus::chart::FONT;
const SIZE: (u32, u32) = (960, 540);
/// Okabe–Ito blue and vermillion: distinguishable for colour-blind readers.
const TRAIN: RGBColor = RGBColor(0, 114, 178);
const EVAL: RGBColor = RGBColor(213, 94, 0);

fn ensure_font() -> anyhow::Result<()> {
    Ok(distill_corpus::chart::ensure_font()?)
}

/// Draws `train` (step, loss) as a line (a path element: plotters' `LineSeries` needs a
/// feature the workspace does not enable) and `eval` (step, loss) as a line with markers.
pub fn loss_curve(path: &Path, train: &[(u64, f64)], eval: &[(u64, f64)]) -> anyhow::Result<()> {
    ensure_font()?;
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw `{}`: {e}", path.display());
    let finite = |p: &&(u64, f64)| p.1.is_finite();
    let points: Vec<(u64, f64)> = train.iter().chain(eval).filter(finite).copied().collect();
    let last = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let top = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss", (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..last, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("cross-entropy (nats / label token)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(|e| err(&e))?;
    let train: Vec<(u64, f64)> = train.iter().filter(finite).copied().collect();
    chart
        .draw_series(std::iter::once(PathElement::new(
            train,
            TRAIN.stroke_width(2),
        )))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], TRAIN.stroke_width(2)));
    if !eval.is_empty() {
        let eval: Vec<(u64, f64)> = eval.iter().filter(finite).copied().collect();
        chart
            .draw_series(std::iter::once(PathElement::new(
                eval.clone(),
                EVAL.stroke_width(2),
            )))
            .map_err(|e| err(&e))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], EVAL.stroke_width(2)));
        chart
            .draw_series(eval.iter().map(|&p| Circle::new(p, 4, EVAL.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
