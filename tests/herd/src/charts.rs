//! Charts of a `herd` run: each collector's sessions, handshakes, accept rate and CPU, the
//! processes' resources, connection attempts and refusals, and ack latency over time, each written as PNG (to look at) and SVG (to zoom into), with the
//! scenario's events drawn as labelled vertical lines.
//!
//! Owns: turning a [`Timeline`] into chart files, and the embedded font they are drawn with.
//! Must never: measure anything, or change the numbers beyond what a chart shows (the only
//! derived series is the sum of refusals over reasons).
//!
//! plotters is built without its `ttf` feature (that one needs fontconfig), so text goes through
//! `ab_glyph`, which knows no system fonts: DejaVu Sans (licence in
//! `tests/herd/assets/DejaVuSans.LICENSE`) is compiled in and registered once as `sans-serif`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::timeline::{Event, Timeline};

mod collectors;
mod resources;

/// DejaVu Sans, Bitstream Vera licence (see `tests/herd/assets/DejaVuSans.LICENSE`).
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family every text style below names; the one the font is registered under.
const FONT: &str = "sans-serif";
/// Width and height of every chart, pixels (SVG user units).
const SIZE: (u32, u32) = (1000, 500);
/// Line colours, in series order (Tableau 10: distinct, and all readable on white).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
/// Beyond this many collectors the sessions chart shows the busiest, the mean and the idlest
/// collector instead of a line for each.
const MAX_COLLECTOR_LINES: usize = 10;
/// The comparison chart of max/mean is cut at this height (a single-record DNS puts the whole
/// fleet on one collector: hundreds of times the mean would flatten every other line).
const BALANCE_CHART_CAP: f64 = 4.0;
/// Events past this fraction of the x range get their label left of their line, not right of it.
const LABEL_FLIP_FRACTION: f64 = 0.75;
/// Rows of event labels above the plot, so that events close in time stay readable.
const LABEL_ROWS: usize = 3;
/// Height of one row of event labels, pixels.
const LABEL_ROW_PX: i32 = 16;
/// Space between an event's line and its label, pixels.
const LABEL_GAP_PX: i32 = 4;

/// Writes `sessions`, `collector_handshakes`, `collector_accept_rate`, `attempts` and
/// `ack_latency` charts into `dir` (created if missing), and for a live run `collector_cpu` and
/// the `resources_*` charts (memory, descriptors, threads, tasks, sink queue of
/// each process), each as `.png` and `.svg`, and returns the paths written.
///
/// An empty timeline gives charts with empty plots.
pub fn write_charts(dir: &Path, title: &str, timeline: &Timeline) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut charts = collectors::charts(timeline);
    charts.extend([attempts_chart(timeline), latency_chart(timeline)]);
    charts.extend(resources::charts(timeline));
    write_all(dir, title, &charts, &timeline.events, x_range(timeline))
}

/// One variant of a `herd sim --compare` run, as the comparison charts draw it.
pub struct Variant<'a> {
    pub name: &'a str,
    pub timeline: &'a Timeline,
    /// Sessions max/mean over time: `(t_s, max/mean)`.
    pub balance: &'a [(f64, f64)],
}

/// `herd sim --compare`: `compare_attempts` (attempts/s) and `compare_balance` (sessions
/// max/mean, cut at [`BALANCE_CHART_CAP`]) with one line per variant, each as `.png` and
/// `.svg`; returns the four paths written.
pub fn write_comparison(dir: &Path, title: &str, variants: &[Variant<'_>]) -> Result<Vec<PathBuf>> {
    let attempts = Chart {
        file_stem: "compare_attempts",
        name: "connection attempts per variant".into(),
        y_desc: "attempts per second",
        y_cap: None,
        series: variants
            .iter()
            .map(|v| {
                let points = v.timeline.samples.iter().map(|s| (s.t_s, s.attempts_per_s));
                Series::new(v.name, points)
            })
            .collect(),
    };
    let balance = Chart {
        file_stem: "compare_balance",
        name: "sessions max/mean per variant".into(),
        y_desc: "max / mean",
        y_cap: Some(BALANCE_CHART_CAP),
        series: variants
            .iter()
            .map(|v| {
                let points = v.balance.iter().map(|&(t, r)| (t, r.min(BALANCE_CHART_CAP)));
                Series::new(v.name, points)
            })
            .collect(),
    };
    let events = variants
        .first()
        .map(|v| v.timeline.events.clone())
        .unwrap_or_default();
    let x = variants.first().map_or(0.0..1.0, |v| x_range(v.timeline));
    write_all(dir, title, &[attempts, balance], &events, x)
}

fn write_all(
    dir: &Path,
    title: &str,
    charts: &[Chart],
    events: &[Event],
    x_range: Range<f64>,
) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::with_capacity(2 * charts.len());
    for chart in charts {
        let caption = if title.is_empty() {
            chart.name.to_string()
        } else {
            format!("{title}: {}", chart.name)
        };
        let png = dir.join(format!("{}.png", chart.file_stem));
        draw(
            &BitMapBackend::new(&png, SIZE).into_drawing_area(),
            &caption,
            chart,
            events,
            x_range.clone(),
        )
        .with_context(|| format!("drawing {}", png.display()))?;
        let svg = dir.join(format!("{}.svg", chart.file_stem));
        draw(
            &SVGBackend::new(&svg, SIZE).into_drawing_area(),
            &caption,
            chart,
            events,
            x_range.clone(),
        )
        .with_context(|| format!("drawing {}", svg.display()))?;
        written.extend([png, svg]);
    }
    Ok(written)
}

/// Registers the embedded font with plotters, once per process. plotters keeps fonts in a global
/// table and every text style looks its family up there; without this, drawing any text fails.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        // plotters' `InvalidFont` carries no detail (and implements neither Debug nor Display).
        Err(anyhow!(
            "the embedded DejaVuSans.ttf is not a font plotters can read"
        ))
    }
}

/// What one chart shows, independent of the backend it is drawn on.
struct Chart {
    file_stem: &'static str,
    name: String,
    y_desc: &'static str,
    /// The y axis ends here at most.
    y_cap: Option<f64>,
    series: Vec<Series>,
}

struct Series {
    label: String,
    /// `(t_s, value)`, finite values only.
    points: Vec<(f64, f64)>,
}

impl Series {
    fn new(label: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        Self {
            label: label.into(),
            points: points
                .into_iter()
                .filter(|(t, v)| t.is_finite() && v.is_finite())
                .collect(),
        }
    }
}

fn attempts_chart(timeline: &Timeline) -> Chart {
    let samples = &timeline.samples;
    Chart {
        file_stem: "attempts",
        name: "connection attempts and refusals".into(),
        y_desc: "per second",
        y_cap: None,
        series: vec![
            Series::new("attempts/s", samples.iter().map(|s| (s.t_s, s.attempts_per_s))),
            Series::new(
                "refusals/s (all reasons)",
                samples
                    .iter()
                    .map(|s| (s.t_s, s.refusals_per_s.values().sum::<f64>())),
            ),
        ],
    }
}

fn latency_chart(timeline: &Timeline) -> Chart {
    let samples = &timeline.samples;
    Chart {
        file_stem: "ack_latency",
        name: "ack latency".into(),
        y_desc: "ms",
        y_cap: None,
        series: vec![
            Series::new(
                "p50",
                samples.iter().filter_map(|s| s.ack_p50_ms.map(|v| (s.t_s, v))),
            ),
            Series::new(
                "p99",
                samples.iter().filter_map(|s| s.ack_p99_ms.map(|v| (s.t_s, v))),
            ),
        ],
    }
}

/// The same x range for all charts of a run, so they line up: from 0 to the last sample or event.
fn x_range(timeline: &Timeline) -> Range<f64> {
    let end = timeline
        .samples
        .iter()
        .map(|s| s.t_s)
        .chain(timeline.events.iter().map(|e| e.t_s))
        .filter(|t| t.is_finite())
        .fold(0.0_f64, f64::max);
    0.0..if end > 0.0 { end } else { 1.0 }
}

/// From 0 to a little above the highest value, leaving room at the top for the legend.
fn y_range(chart: &Chart) -> Range<f64> {
    let max = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, v)| v))
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.2 } else { 1.0 };
    0.0..chart.y_cap.map_or(top, |cap| top.min(cap * 1.05))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    chart: &Chart,
    events: &[Event],
    x_range: Range<f64>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let body = root.margin(8, 8, 12, 20).titled(caption, (FONT, 22))?;
    let y_range = y_range(chart);

    // Event labels get a band of their own between the caption and the plot, so they never hide
    // data or the legend. The band's height depends on how many rows the labels need, which
    // depends on where they fall horizontally: lay them out on a trial chart first (building a
    // chart draws nothing; the band does not change the horizontal layout).
    let trial = build_plot(&body, &x_range, &y_range)?;
    let labels = layout_event_labels(root, &trial, events, &x_range)?;
    let rows = labels.iter().map(|l| l.row + 1).max().unwrap_or(0);
    let band = 4 + LABEL_ROW_PX * i32::try_from(rows).unwrap_or(0);
    let (_, plot) = body.split_vertically(band);

    let mut ctx = build_plot(&plot, &x_range, &y_range)?;
    ctx.configure_mesh()
        .x_desc("seconds")
        .y_desc(chart.y_desc)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    // Events before the data, so the data lines are drawn over them.
    draw_event_labels(root, &mut ctx, &labels, &y_range)?;

    for (i, series) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        ctx.draw_series(LineSeries::new(
            series.points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(series.label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }

    if !chart.series.is_empty() {
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()
}

type Plot<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn build_plot<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
) -> Result<Plot<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    ChartBuilder::on(area)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
}

/// Where an event's label goes: which row of the band, and which side of its line.
struct EventLabel<'e> {
    t_s: f64,
    what: &'e str,
    row: usize,
    /// Left of the line (near the right edge) rather than right of it.
    flip: bool,
}

fn event_label_style(color: &RGBAColor, flip: bool) -> TextStyle<'_> {
    TextStyle::from((FONT, 13)).color(color).pos(Pos::new(
        if flip { HPos::Right } else { HPos::Left },
        VPos::Bottom,
    ))
}

/// Puts each event label in the first row where it does not overlap the previous label (or, if
/// none is free, in the row that ends leftmost).
fn layout_event_labels<'e, DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    plot: &Plot<'_, DB>,
    events: &'e [Event],
    x_range: &Range<f64>,
) -> Result<Vec<EventLabel<'e>>, DrawingAreaErrorKind<DB::ErrorType>> {
    let flip_at = x_range.start + (x_range.end - x_range.start) * LABEL_FLIP_FRACTION;
    let mut shown: Vec<&Event> = events
        .iter()
        .filter(|e| (x_range.start..=x_range.end).contains(&e.t_s))
        .collect();
    shown.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));

    // Rightmost pixel used so far in each row.
    let mut row_ends = [i32::MIN; LABEL_ROWS];
    let mut labels = Vec::with_capacity(shown.len());
    for event in shown {
        let (px, _) = plot.backend_coord(&(event.t_s, 0.0));
        let flip = event.t_s > flip_at;
        let (w, _) = root.estimate_text_size(&event.what, &event_label_style(&BLACK.into(), flip))?;
        let w = i32::try_from(w).unwrap_or(i32::MAX / 2);
        let (left, right) = if flip {
            (px - LABEL_GAP_PX - w, px)
        } else {
            (px, px + LABEL_GAP_PX + w)
        };
        let row = row_ends
            .iter()
            .position(|&end| end.saturating_add(6) < left)
            .or_else(|| (0..LABEL_ROWS).min_by_key(|&r| row_ends[r]))
            .unwrap_or(0);
        row_ends[row] = right;
        labels.push(EventLabel {
            t_s: event.t_s,
            what: &event.what,
            row,
            flip,
        });
    }
    Ok(labels)
}

/// Draws each event as a thin vertical line through the plot, continued up into the label band
/// to its row, with the label beside the line's top.
fn draw_event_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    plot: &mut Plot<'_, DB>,
    labels: &[EventLabel<'_>],
    y_range: &Range<f64>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let line = BLACK.mix(0.45).stroke_width(1);
    let label_color = BLACK.mix(0.85);
    for label in labels {
        plot.draw_series(std::iter::once(PathElement::new(
            vec![(label.t_s, y_range.start), (label.t_s, y_range.end)],
            line,
        )))?;
        // Backend pixels, which are the root area's: it starts at the backend's origin.
        let (px, plot_top) = plot.backend_coord(&(label.t_s, y_range.end));
        let bottom = plot_top - 3 - LABEL_ROW_PX * i32::try_from(label.row).unwrap_or(0);
        root.draw(&PathElement::new(
            vec![(px, bottom - LABEL_ROW_PX + 4), (px, plot_top)],
            line,
        ))?;
        let x = if label.flip {
            px - LABEL_GAP_PX
        } else {
            px + LABEL_GAP_PX
        };
        root.draw(&Text::new(
            label.what,
            (x, bottom),
            event_label_style(&label_color, label.flip),
        ))?;
    }
    Ok(())
}

/// Axis numbers without a pointless ".0": "15000", "2.5", "0.25".
fn tick_label(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::timeline::Sample;
    use super::*;

    fn fake_timeline() -> Timeline {
        let samples = (1..=20u32)
            .map(|i| {
                let t_s = f64::from(i) * 0.1;
                Sample {
                    t_s,
                    sessions: vec![u64::from(i) * 10, u64::from(i) * 7],
                    attempts_per_s: 500.0 - f64::from(i),
                    refusals_per_s: BTreeMap::from([
                        ("accept_rate".to_string(), 20.0),
                        ("handshakes".to_string(), f64::from(i)),
                    ]),
                    ack_p50_ms: (i % 4 != 0).then_some(3.0),
                    ack_p99_ms: (i % 4 != 0).then_some(12.0 + f64::from(i)),
                    ..Sample::default()
                }
            })
            .collect();
        Timeline {
            collectors: vec!["c1".to_string(), "c2".to_string()],
            addresses: vec!["127.0.0.2:4433".to_string(), "127.0.0.3:4433".to_string()],
            samples,
            events: vec![Event {
                t_s: 1.0,
                what: "c2 killed".to_string(),
            }],
            silent_scrapes: 0,
            resources: Vec::new(),
        }
    }

    fn assert_charts(dir: &Path, written: &[PathBuf]) {
        assert_eq!(written.len(), 6);
        for stem in ["sessions", "attempts", "ack_latency"] {
            let png = dir.join(format!("{stem}.png"));
            let svg = dir.join(format!("{stem}.svg"));
            assert!(written.contains(&png) && written.contains(&svg), "{stem}");
            let png_bytes = std::fs::read(&png).unwrap();
            assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", png.display());
            let svg_text = std::fs::read_to_string(&svg).unwrap();
            assert!(svg_text.contains("<svg"), "{}", svg.display());
        }
    }

    #[test]
    fn writes_png_and_svg_for_each_chart() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_charts(dir.path(), "fake run", &fake_timeline()).unwrap();
        assert_charts(dir.path(), &written);
    }

    #[test]
    fn empty_timeline_gives_empty_charts() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_charts(dir.path(), "empty run", &Timeline::default()).unwrap();
        assert_charts(dir.path(), &written);
    }
}
