//! PNG charts for `stats`: histograms and horizontal bar charts, drawn with plotters' bitmap
//! backend and the DejaVu Sans font embedded by the `dejavu` crate, so text renders the same on
//! a machine with no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{Error, Result};

/// The font family every distill chart draws text with (registered by [`ensure_font`]).
pub const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 520);
const BAR: RGBColor = RGBColor(70, 110, 180);

/// Registers the DejaVu Sans font embedded by the `dejavu` crate under [`FONT`], once per
/// process, so charts render text on a machine without system fonts.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the embedded DejaVu font did not load".into(),
        ))
    }
}

fn chart_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Histogram of `values` in `bins` equal-width bins from 0 to the largest value.
pub fn histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    values: &[u64],
    bins: usize,
) -> Result<()> {
    ensure_font()?;
    let bins = bins.max(1);
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let width = max.div_ceil(bins as u64).max(1);
    let mut counts = vec![0u64; bins];
    for &v in values {
        counts[((v / width) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..width * bins as u64, 0u64..top + top / 20 + 1)
        .map_err(|e| chart_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(1)
        .x_desc(x_label)
        .y_desc("rows")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = i as u64 * width;
            Rectangle::new([(x0, 0), (x0 + width, c)], BAR.filled())
        }))
        .map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}

/// Horizontal bars, one per `(label, value)`, top to bottom in the given order.
pub fn bars(path: &Path, title: &str, x_label: &str, items: &[(String, u64)]) -> Result<()> {
    ensure_font()?;
    let n = items.len().max(1);
    let top = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let height = SIZE.1.max(120 + 36 * n as u32);
    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(220)
        // A segmented `0..k` range has k + 1 segments, so `0..n - 1` gives one per item.
        .build_cartesian_2d(0u64..top + top / 10 + 1, (0usize..n - 1).into_segmented())
        .map_err(|e| chart_err(path, e))?;
    let label = |v: &SegmentValue<usize>| match v {
        // Row 0 at the top: segments count upwards.
        SegmentValue::CenterOf(i) if *i < items.len() => items[items.len() - 1 - i].0.clone(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_max_light_lines(1)
        .y_labels(n)
        .y_label_formatter(&label)
        .x_desc(x_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(|e| chart_err(path, e))?;
    chart
        .draw_series(items.iter().rev().enumerate().map(|(i, (_, v))| {
            let mut bar = Rectangle::new(
                [
                    (0, SegmentValue::Exact(i)),
                    (*v, SegmentValue::Exact(i + 1)),
                ],
                BAR.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(|e| chart_err(path, e))?;
    root.present().map_err(|e| chart_err(path, e))
}
