//! PNG plots of `fulva bench migration`: throughput and p99.9 latency over
//! time per strategy, with the move shaded.

use super::report::StrategyResult;
use plotters::prelude::*;
use std::path::Path;

/// Fonts tried for labels, in order (Debian's fonts-dejavu-core first).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("no font for plot labels found (install fonts-dejavu-core)"))?;
    // Plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

/// Draws one row per strategy: ops/s (left) and p99.9 in µs (right) per bin,
/// moving keys and other keys, the move shaded.
pub fn draw(results: &[StrategyResult], bin_ms: u64, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let rows = results.len().max(1);
    let root = BitMapBackend::new(path, (1400, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, 2));
    let per_sec = 1000.0 / bin_ms.max(1) as f64;
    for (i, r) in results.iter().enumerate() {
        let end = r.bins.last().map_or(1, |b| b.t_ms + bin_ms) as f64 / 1000.0;
        let shade = (r.move_start_ms as f64 / 1000.0, r.move_end_ms as f64 / 1000.0);
        let series = |f: &dyn Fn(&super::report::Bin) -> f64| -> Vec<(f64, f64)> {
            r.bins.iter().map(|b| (b.t_ms as f64 / 1000.0, f(b))).collect()
        };
        let ops_total = series(&|b| (b.moving.ops + b.other.ops) as f64 * per_sec);
        let ops_moving = series(&|b| b.moving.ops as f64 * per_sec);
        let p999_moving = series(&|b| f64::from(b.moving.p999_us.max(1)));
        let p999_other = series(&|b| f64::from(b.other.p999_us.max(1)));
        let max_ops = ops_total.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let max_lat = p999_moving.iter().chain(&p999_other).map(|p| p.1).fold(10.0, f64::max) * 2.0;

        let mut left = ChartBuilder::on(&areas[2 * i])
            .caption(format!("{}: throughput", r.strategy), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..max_ops)?;
        left.configure_mesh().x_desc("seconds").y_desc("ops/s").draw()?;
        left.draw_series(std::iter::once(Rectangle::new(
            [(shade.0, 0.0), (shade.1.max(shade.0 + 0.01), max_ops)],
            RGBColor(255, 200, 120).mix(0.35).filled(),
        )))?;
        left.draw_series(LineSeries::new(ops_total, &BLUE))?
            .label("all keys")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
        left.draw_series(LineSeries::new(ops_moving, &RED))?
            .label("moving keys")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        left.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;

        let mut right = ChartBuilder::on(&areas[2 * i + 1])
            .caption(format!("{}: p99.9 latency", r.strategy), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, (1.0..max_lat).log_scale())?;
        right.configure_mesh().x_desc("seconds").y_desc("µs").draw()?;
        right.draw_series(std::iter::once(Rectangle::new(
            [(shade.0, 1.0), (shade.1.max(shade.0 + 0.01), max_lat)],
            RGBColor(255, 200, 120).mix(0.35).filled(),
        )))?;
        right
            .draw_series(LineSeries::new(p999_other, &BLUE))?
            .label("other keys")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
        right
            .draw_series(LineSeries::new(p999_moving, &RED))?
            .label("moving keys")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        right.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    }
    root.present()?;
    Ok(())
}
