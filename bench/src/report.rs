//! The results table (Markdown) and the latency chart (SVG).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// One measured scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub load: String,
    pub throughput: Option<f64>,
    /// Latency percentiles in milliseconds: p50, p90, p99, max.
    pub latency_ms: Option<[f64; 4]>,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub goal: String,
    pub met: Option<bool>,
}

fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{:.3} ms", value)
    } else {
        format!("{:.1} ms", value)
    }
}

pub fn markdown(header: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "| scenario | load | throughput (req/s) | p50 | p99 | baseline (same run) | ratio | goal | met |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---|---|");
    for row in rows {
        let (p50, p99) = row
            .latency_ms
            .map_or(("–".into(), "–".into()), |l| (ms(l[0]), ms(l[2])));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.load,
            row.throughput.map_or("–".into(), |t| format!("{t:.0}")),
            p50,
            p99,
            row.baseline,
            row.ratio.map_or("–".into(), |r| format!("{r:.2}×")),
            row.goal,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    out
}

/// Horizontal grouped bars (p50, p90, p99, max) per scenario on a log scale, the
/// scenario names readable on the left.
pub fn latency_chart(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let rows: Vec<&Row> = rows.iter().filter(|row| row.latency_ms.is_some()).collect();
    let max = rows
        .iter()
        .flat_map(|row| row.latency_ms.unwrap())
        .fold(1.0_f64, f64::max);
    let height = 90 + rows.len() as u32 * 44;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let groups = rows.len() as f64;
    let labels: Vec<String> = rows.iter().map(|row| row.scenario.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency per scenario: p50, p90, p99, max (ms, log scale)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(340)
        .build_cartesian_2d((0.05..max * 2.0).log_scale(), 0.0..groups)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let index = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 0.01 && index < labels.len() {
                // Top to bottom in table order.
                labels[labels.len() - 1 - index].clone()
            } else {
                String::new()
            }
        })
        .y_label_style(("sans-serif", 13))
        .x_desc("milliseconds")
        .draw()?;
    let colors = [
        RGBColor(46, 134, 193),
        RGBColor(40, 180, 99),
        RGBColor(243, 156, 18),
        RGBColor(192, 57, 43),
    ];
    for (series, (name, color)) in ["p50", "p90", "p99", "max"].iter().zip(colors).enumerate() {
        chart
            .draw_series(rows.iter().enumerate().map(|(index, row)| {
                let value = row.latency_ms.unwrap()[series].max(0.051);
                let group = (rows.len() - 1 - index) as f64;
                let top = group + 0.9 - series as f64 * 0.2;
                Rectangle::new([(0.05, top - 0.18), (value, top)], color.filled())
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
