//! The percentile plot (`--svg`): latency against percentile on HdrHistogram's classic
//! axis, where 90%, 99%, 99.9%, ... are evenly spaced (x = log10(1 / (1 - q))), one line
//! per histogram (append, end-to-end, and the baselines that have a latency).
//!
//! Owns nothing but drawing; it never changes a histogram.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::Error;

/// The most nines drawn (99.9999%).
const NINES_MAX: f64 = 6.0;

/// `1 − q` to the axis: 0 → 0, 90% → 1, 99% → 2, ...
fn axis_x(quantile: f64) -> f64 {
    (1.0 / (1.0 - quantile)).log10()
}

/// The axis back to a percentile label: 1 → "90%", 3 → "99.9%".
fn percentile_label(x: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i64 - 2).max(0) as usize;
    format!("{percent:.decimals$}%")
}

/// The plot's points of `h`: (axis x, latency in ms).
fn points(h: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to()))
        .filter(|&(q, _)| q < 1.0 && axis_x(q) <= x_max)
        .map(|(q, us)| (axis_x(q), us as f64 / 1000.0))
        .collect()
}

/// Draws `series` (name, histogram) to an SVG file at `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), Error> {
    let drawing = |e: String| Error::Plot(format!("{}: {e}", path.display()));
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let samples_max = series.iter().map(|(_, h)| h.len()).max().unwrap_or(1) as f64;
    let x_max = samples_max.log10().ceil().clamp(2.0, NINES_MAX);
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, h)| (*name, points(h, x_max)))
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05;

    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| drawing(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| drawing(e.to_string()))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&percentile_label)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| drawing(e.to_string()))?;
    for (i, (name, line)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| drawing(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| drawing(e.to_string()))?;
    root.present().map_err(|e| drawing(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_an_svg() {
        assert_eq!(percentile_label(&0.0), "0%");
        assert_eq!(percentile_label(&1.0), "90%");
        assert_eq!(percentile_label(&3.0), "99.9%");
        let mut h = super::super::latency::histogram();
        for us in 1..5000 {
            h.record(us).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write_svg(&path, "test", &[("append", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("append") && svg.contains("99%"));
    }
}
