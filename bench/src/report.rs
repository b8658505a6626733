//! The results table (Markdown) and the latency chart (SVG).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use plotters::prelude::*;

use crate::load::{Measured, Paired};

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

pub fn row_from(
    scenario: &str,
    measured: &Measured,
    connections: u32,
    baseline: Option<(&str, &Measured)>,
    goal: (&str, Option<f64>),
) -> Row {
    let ratio = baseline.map(|(_, base)| measured.throughput() / base.throughput());
    Row {
        scenario: scenario.to_owned(),
        load: format!("{connections} conns"),
        throughput: Some(measured.throughput()),
        latency_ms: Some([
            measured.p50_us / 1000.0,
            measured.p90_us / 1000.0,
            measured.p99_us / 1000.0,
            measured.max_us / 1000.0,
        ]),
        baseline: baseline.map_or("–".into(), |(name, base)| {
            format!("{name}: {:.0} req/s", base.throughput())
        }),
        ratio,
        goal: goal.0.to_owned(),
        met: goal.1.zip(ratio).map(|(target, ratio)| ratio >= target),
    }
}

/// The row of a scenario measured alternately with `/healthz`; the baseline
/// column also gives the spread of the rounds' ratios.
pub fn paired_row(
    scenario: &str,
    paired: &Paired,
    connections: u32,
    goal: Option<(&str, f64)>,
) -> Row {
    let mut row = row_from(
        scenario,
        &paired.scenario,
        connections,
        Some(("healthz", &paired.baseline)),
        goal.map_or(("–", None), |(text, target)| (text, Some(target))),
    );
    let (low, high) = paired.round_ratio_range();
    row.baseline
        .push_str(&format!("; rounds {low:.2}–{high:.2}×"));
    row
}

/// The row of a scenario measured alternately with the same load on another
/// setup (`baseline`: "standalone Redis", "tracing off"); the baseline column
/// also gives the spread of the rounds' ratios.
pub fn versus(
    scenario: &str,
    paired: &Paired,
    connections: u32,
    baseline: &str,
    goal: (&str, Option<f64>),
) -> Row {
    let mut row = row_from(
        scenario,
        &paired.scenario,
        connections,
        Some((baseline, &paired.baseline)),
        goal,
    );
    let (low, high) = paired.round_ratio_range();
    row.baseline
        .push_str(&format!("; rounds {low:.2}–{high:.2}×"));
    row
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub fn version_of(command: &str, arg: &str) -> String {
    Command::new(command)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "not found".into())
}

#[cfg(test)]
mod tests {
    use crate::load::{Measured, Paired};

    fn run_of(requests: u64) -> Measured {
        Measured {
            requests,
            duration_us: 1_000_000,
            errors: 0,
            status_errors: 0,
            server_errors: 0,
            p50_us: 1.0,
            p90_us: 1.0,
            p99_us: 1.0,
            max_us: 1.0,
        }
    }

    #[test]
    fn a_paired_row_gives_the_ratio_over_all_runs_and_the_range_of_the_rounds() {
        let paired = Paired {
            baseline: run_of(300),
            scenario: run_of(240),
            round_ratios: vec![0.9, 0.7, 0.8],
        };
        assert_eq!(paired.round_ratio_range(), (0.7, 0.9));
        let row = super::paired_row("s", &paired, 64, Some(("≥ 0.85×", 0.85)));
        assert_eq!(row.ratio, Some(0.8));
        assert_eq!(row.met, Some(false));
        assert!(
            row.baseline.ends_with("; rounds 0.70–0.90×"),
            "{}",
            row.baseline
        );
    }
}
