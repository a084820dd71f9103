//! Reports: the percentile table on stdout, the HdrHistogram percentile-distribution
//! file (`.hgrm`, the format wrk2 prints and HdrHistogram's plotter reads), the JSON
//! summary, and plots drawn with plotters, as SVG or PNG. Text is set in DejaVu Sans,
//! embedded in the binary (the `dejavu` crate), so a PNG needs no system fonts.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{json, Value};

use crate::load::LoadReport;

/// Microseconds, printed in the unit that reads best.
pub fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

const TABLE_QUANTILES: [(&str, f64); 7] = [
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("max", 1.0),
];

pub fn print_table(report: &LoadReport, out: &mut impl Write) -> io::Result<()> {
    let r = &report.recorded;
    let mode = match report.config.rate {
        Some(rate) => format!("open loop at {rate} req/s (latency from intended send time)"),
        None => "closed loop".to_owned(),
    };
    let connections = if report.config.reconnect {
        "connections at a time, a new one per request,"
    } else {
        "connections"
    };
    writeln!(
        out,
        "{} for {:?} after {:?} warm-up, {} {connections} on {} threads ({}), {}",
        report.config.target,
        report.config.duration,
        report.config.warmup,
        report.config.connections,
        report.config.threads,
        report
            .drivers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        mode
    )?;
    writeln!(
        out,
        "throughput {:.0} req/s, hit ratio {:.4}, errors {}",
        report.throughput(),
        report.hit_ratio(),
        r.errors.total()
    )?;
    write!(out, "{:<10}{:>10}", "outcome", "count")?;
    for (name, _) in TABLE_QUANTILES {
        write!(out, "{name:>10}")?;
    }
    writeln!(out)?;
    for (name, h) in [
        ("all", &r.all()),
        ("get hit", &r.get_hit),
        ("get miss", &r.get_miss),
        ("put", &r.put),
        ("error", &r.error),
    ] {
        if h.is_empty() {
            continue;
        }
        write!(out, "{name:<10}{:>10}", h.len())?;
        for (_, q) in TABLE_QUANTILES {
            write!(out, "{:>10}", micros(h.value_at_quantile(q)))?;
        }
        writeln!(out)?;
    }
    let e = &r.errors;
    if e.total() > 0 {
        writeln!(
            out,
            "errors: connect {}, timeout {}, io {}, status {:?}",
            e.connect, e.timeout, e.io, e.status
        )?;
    }
    Ok(())
}

/// Writes `h` (in µs) as HdrHistogram's percentile distribution, values in milliseconds,
/// five ticks per half distance: the output of Java's `outputPercentileDistribution` and
/// of wrk2's `--latency`.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {q:>14.12} {total:>10}")?;
        }
    }
    let sub_buckets = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / SCALE,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    )?;
    Ok(())
}

/// Every value the histogram recorded, with its count, as JSON (`load --histogram`):
/// what `merge` adds runs together from, exactly to the histogram's precision, where the
/// `.hgrm` file keeps only points of the percentile curve.
pub fn histogram_to_json(h: &Histogram<u64>) -> Value {
    let counts: Vec<[u64; 2]> = h
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    json!({ "unit": "us", "counts": counts })
}

/// Reads back what [`histogram_to_json`] wrote.
pub fn histogram_from_json(value: &Value) -> anyhow::Result<Histogram<u64>> {
    let counts = value
        .get("counts")
        .and_then(Value::as_array)
        .context("no \"counts\" array of [µs, count] pairs")?;
    let mut h = crate::load::histogram();
    for pair in counts {
        let (Some(us), Some(count)) = (
            pair.get(0).and_then(Value::as_u64),
            pair.get(1).and_then(Value::as_u64),
        ) else {
            bail!("{pair} is not a [µs, count] pair of whole numbers");
        };
        h.record_n(us, count)
            .with_context(|| format!("{us} µs is outside the histogram's range (1 µs to 60 s)"))?;
    }
    Ok(h)
}

pub fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "p9999_us": h.value_at_quantile(0.9999),
        "max_us": h.max(),
        "mean_us": h.mean(),
    })
}

pub fn to_json(report: &LoadReport) -> Value {
    let r = &report.recorded;
    let all = r.all();
    json!({
        "tool": "cache-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "throughput_rps": report.throughput(),
        "p50_us": all.value_at_quantile(0.5),
        "p90_us": all.value_at_quantile(0.9),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
        "p9999_us": all.value_at_quantile(0.9999),
        "max_us": all.max(),
        "errors": r.errors.total(),
        "errors_by_kind": r.errors,
        "hit_ratio": report.hit_ratio(),
        "key_prefix": report.config.key_prefix,
        "requests": r.requests(),
        "elapsed_s": report.elapsed.as_secs_f64(),
        "outcomes": {
            "get_hit": percentiles(&r.get_hit),
            "get_miss": percentiles(&r.get_miss),
            "put": percentiles(&r.put),
            "error": percentiles(&r.error),
        },
        "windows": report.windows,
        "io_drivers": report.drivers,
        "config": report.config,
    })
}

/// Refuses a plot file this build cannot write, before any work is done.
pub fn check_plot_path(path: &Path) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg" | "png") => Ok(()),
        _ => bail!("plot files end in .svg or .png, got {}", path.display()),
    }
}

const CANVAS: (u32, u32) = (960, 540);

fn register_font() {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_err()
        {
            panic!("the embedded DejaVu Sans is a valid font");
        }
    });
}

/// Runs a generic drawing function on the canvas the file's extension asks for, and
/// writes the file.
macro_rules! on_canvas {
    ($path:expr, $draw:ident($($arg:expr),*)) => {{
        let path: &Path = $path;
        check_plot_path(path)?;
        register_font();
        if path.extension().is_some_and(|e| e == "png") {
            let root = BitMapBackend::new(path, CANVAS).into_drawing_area();
            $draw(&root, $($arg),*)?;
            root.present().with_context(|| format!("writing {}", path.display()))?;
        } else {
            let root = SVGBackend::new(path, CANVAS).into_drawing_area();
            $draw(&root, $($arg),*)?;
            root.present().with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }};
}

/// A latency-by-percentile chart (HdrHistogram's plotter layout): the x axis is
/// 1/(1-percentile) on a log scale, so the tail gets the room it deserves.
pub fn plot_percentiles(report: &LoadReport, path: &Path) -> anyhow::Result<()> {
    on_canvas!(path, draw_percentiles(report))
}

fn draw_percentiles<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &LoadReport,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let r = &report.recorded;
    let series: Vec<(&str, Histogram<u64>, RGBColor)> = [
        ("get hit", r.get_hit.clone(), RGBColor(31, 119, 180)),
        ("get miss", r.get_miss.clone(), RGBColor(255, 127, 14)),
        ("put", r.put.clone(), RGBColor(44, 160, 44)),
    ]
    .into_iter()
    .filter(|(_, h, _)| !h.is_empty())
    .collect();
    if series.is_empty() {
        bail!("nothing was measured, so there is nothing to plot");
    }
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        h.iter_quantiles(5)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| {
                (
                    1.0 / (1.0 - v.quantile_iterated_to()),
                    v.value_iterated_to().max(1) as f64,
                )
            })
            .collect()
    };
    let max_x = series
        .iter()
        .flat_map(|(_, h, _)| points(h))
        .map(|p| p.0)
        .fold(10.0, f64::max);
    let max_y = series
        .iter()
        .map(|(_, h, _)| h.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 1.5;
    let min_y = series
        .iter()
        .map(|(_, h, _)| h.min())
        .min()
        .unwrap_or(1)
        .max(1) as f64
        / 1.5;
    root.fill(&WHITE)?;
    let title = format!(
        "Latency by percentile — {:.0} req/s, {}",
        report.throughput(),
        report.config.target
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_x).log_scale(), (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / x);
            let decimals = (x.log10().round() as usize).saturating_sub(2);
            format!("{p:.decimals$}%")
        })
        .y_label_formatter(&|y| micros(*y as u64))
        .draw()?;
    for (name, h, color) in &series {
        chart
            .draw_series(LineSeries::new(points(h), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A line chart of several named series over a shared x axis (sweeps, replays).
pub fn plot_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> anyhow::Result<()> {
    on_canvas!(path, draw_lines(title, x_desc, y_desc, series, log_y))
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (min_x, max_x) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ys = || series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let max_y = ys().fold(1.0, f64::max) * 1.2;
    let min_y = ys().fold(f64::MAX, f64::min).max(1.0) / 1.5;
    if min_x > max_x {
        bail!("nothing to plot");
    }
    let x_range = if min_x == max_x {
        min_x * 0.9..max_x * 1.1 + 1.0
    } else {
        min_x..max_x
    };
    root.fill(&WHITE)?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()?;
            for (i, (name, points)) in series.iter().enumerate() {
                let color = palette[i % palette.len()];
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }};
    }
    if log_y {
        draw!(builder.build_cartesian_2d(x_range, (min_y..max_y).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d(x_range, 0.0..max_y)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut h = crate::load::histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        // First row: the smallest value (10 µs = 0.010 ms) at percentile 0.
        assert_eq!(rows[0][0], "0.010");
        // Values and counts never decrease; the last row is the max at percentile 1.
        for pair in rows.windows(2) {
            assert!(pair[0][0].parse::<f64>().unwrap() <= pair[1][0].parse::<f64>().unwrap());
            assert!(pair[0][2].parse::<u64>().unwrap() <= pair[1][2].parse::<u64>().unwrap());
        }
        let last = rows.last().unwrap();
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(last[2], "1000");
        assert_eq!(last.len(), 3, "no 1/(1-p) at p = 1");
        let median = rows
            .iter()
            .find(|r| r[1].parse::<f64>().unwrap() >= 0.5)
            .unwrap();
        assert!(
            (median[0].parse::<f64>().unwrap() - 5.0).abs() < 0.01,
            "{median:?}"
        );
        // HdrHistogram reports the highest value equivalent to the max (10,000 µs is in a
        // bucket reaching 10,007 µs at three significant digits), as Java's does.
        let max_line = format!(
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            h.max() as f64 / 1000.0,
            1000
        );
        assert!(text.contains(&max_line), "{text}");
        assert!((h.max() as f64 / 1000.0 - 10.0).abs() < 0.01);
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn histograms_written_as_json_read_back_and_add_up() {
        let mut fast = crate::load::histogram();
        let mut slow = crate::load::histogram();
        let mut both = crate::load::histogram();
        for us in 1..=5_000u64 {
            fast.record(us).unwrap();
            both.record(us).unwrap();
        }
        for us in [9_000u64, 12_345, 1_500_000] {
            slow.record_n(us, 7).unwrap();
            both.record_n(us, 7).unwrap();
        }
        let mut merged = histogram_from_json(&histogram_to_json(&fast)).unwrap();
        assert_eq!(merged, fast);
        merged
            .add(histogram_from_json(&histogram_to_json(&slow)).unwrap())
            .unwrap();
        assert_eq!(percentiles(&merged), percentiles(&both));
        assert_eq!(merged.len(), 5_021);
    }

    #[test]
    fn a_histogram_file_that_is_not_one_is_an_error() {
        for bad in [
            json!({}),
            json!({"counts": [[1]]}),
            json!({"counts": [[-1, 2]]}),
            json!({"counts": [[120_000_000, 1]]}),
        ] {
            assert!(histogram_from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plots_are_svg_or_png() {
        assert!(check_plot_path(Path::new("a.svg")).is_ok());
        assert!(check_plot_path(Path::new("a.png")).is_ok());
        assert!(check_plot_path(Path::new("a.jpg")).is_err());
        let dir = std::env::temp_dir().join(format!("cache-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lines.svg");
        let series = vec![
            ("a".to_string(), vec![(1.0, 2.0), (2.0, 30.0)]),
            ("b".to_string(), vec![(1.0, 5.0), (2.0, 6.0)]),
        ];
        plot_lines(&path, "t", "x", "y", &series, true).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
        let png = dir.join("lines.png");
        plot_lines(&png, "t", "x", "y", &series, false).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG\r\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
