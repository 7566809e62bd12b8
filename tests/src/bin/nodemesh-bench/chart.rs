//! The report as a picture: one horizontal bar per scenario for its headline
//! figure's mesh/direct ratio, on a log scale centred on 1 (= direct), so
//! "half as fast" and "twice as slow" are bars of the same length. Each bar
//! is green where it meets the issue's target for that scenario, red where
//! it misses it, grey where there is none; the target is a dashed mark on
//! its row. Hand-written SVG: a few dozen elements, no plotting crate.
use std::fmt::Write as _;

use serde_json::Value;

/// What a scenario's bar shows.
struct Headline {
    /// The figure whose ratio is drawn.
    figure: &'static str,
    /// How the row names it.
    label: &'static str,
    /// Whether a ratio above 1 is the better side (rates) or the worse
    /// (latencies).
    higher_is_better: bool,
    /// The mesh/direct ratio the issue asks for, if it names one.
    target: Option<f64>,
}

/// The headline of `scenario`, if it has a mesh/direct one (footprint has no
/// direct side; the waypoint scenarios compare with nginx, in their own
/// table).
fn headline(scenario: &str) -> Option<Headline> {
    let (figure, label, higher_is_better) = if scenario.contains("throughput") {
        ("mib_per_s", "MiB/s", true)
    } else if scenario.contains("latency") {
        ("p50_us", "p50 latency", false)
    } else if scenario == "churn" {
        ("per_second", "connections/s", true)
    } else {
        return None;
    };
    let target = match scenario {
        "throughput-1" => Some(0.8),
        // Eight streams between two pairs of identities are still eight
        // streams: the same target.
        "throughput-8" | "throughput-8-pairs" => Some(0.6),
        "same-node-throughput" => Some(0.9),
        "latency-1" => Some(1.5),
        "latency-32" => Some(2.0),
        "churn" => Some(0.7),
        _ => None,
    };
    Some(Headline {
        figure,
        label,
        higher_is_better,
        target,
    })
}

/// One row of the chart.
struct Bar {
    scenario: String,
    headline: Headline,
    ratio: Option<f64>,
}

impl Bar {
    fn meets_target(&self) -> Option<bool> {
        let (ratio, target) = (self.ratio?, self.headline.target?);
        Some(if self.headline.higher_is_better {
            ratio >= target
        } else {
            ratio <= target
        })
    }

    /// "MiB/s, higher is better; target ≥ 0.8×".
    fn caption(&self) -> String {
        let h = &self.headline;
        let (better, sign) = if h.higher_is_better {
            ("higher", "≥")
        } else {
            ("lower", "≤")
        };
        let mut caption = format!("{}, {better} is better", h.label);
        if let Some(t) = h.target {
            let _ = write!(caption, "; target {sign} {t}×");
        }
        caption
    }
}

const WIDTH: f64 = 900.0;
const LEFT: f64 = 290.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 86.0;
const ROW: f64 = 40.0;
const BAR: f64 = 20.0;

/// The chart of `report` (the JSON document the bench writes), a row per
/// scenario it has, in the order of `scenarios`.
pub fn svg(report: &Value, scenarios: &[&str]) -> String {
    let bars: Vec<Bar> = scenarios
        .iter()
        .filter_map(|name| {
            let s = report["scenarios"].get(name)?;
            let headline = headline(name)?;
            let ratio = s["ratio"][headline.figure]
                .as_f64()
                .filter(|r| r.is_finite() && *r > 0.0);
            Some(Bar {
                scenario: (*name).to_owned(),
                headline,
                ratio,
            })
        })
        .collect();
    // The axis spans whole powers of two, at least ½× to 2×, wide enough for
    // every ratio and target with room for the value beyond its bar.
    let extremes = bars
        .iter()
        .flat_map(|b| [b.ratio, b.headline.target])
        .flatten()
        .map(f64::log2);
    let room = 0.6;
    let lo = (extremes.clone().fold(0.0, f64::min) - room)
        .floor()
        .min(-1.0);
    let hi = (extremes.fold(0.0, f64::max) + room).ceil().max(1.0);
    let plot = WIDTH - LEFT - RIGHT;
    let x = |ratio: f64| LEFT + (ratio.log2() - lo) / (hi - lo) * plot;
    let rows = bars.len().max(1) as f64;
    let bottom = TOP + rows * ROW;
    let height = bottom + 70.0;

    let mut out = String::new();
    let mut put = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    put(format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"##
    ));
    put(format!(
        r##"<rect width="{WIDTH}" height="{height}" fill="white"/>"##
    ));
    let quick = report["quick"] == true;
    put(format!(
        r##"<text x="20" y="28" font-size="17" font-weight="bold">nodemesh bench: mesh / direct — commit {}, {}</text>"##,
        escape(report["commit"].as_str().unwrap_or("?")),
        escape(report["date"].as_str().unwrap_or("?")),
    ));
    put(format!(
        r##"<text x="20" y="50" fill="#555">{}{} cores, kernel {}; medians of {} repetition{}; 1× = the direct path</text>"##,
        if quick {
            "QUICK run (short loads, noisy): "
        } else {
            ""
        },
        report["machine"]["cores"],
        escape(report["machine"]["kernel"].as_str().unwrap_or("?")),
        report["reps"],
        if report["reps"] == 1 { "" } else { "s" },
    ));
    // Grid: a line per power of two, 1× bold.
    for power in (lo as i32)..=(hi as i32) {
        let ratio = 2f64.powi(power);
        let gx = x(ratio);
        let (stroke, width) = if power == 0 { ("#222", 2) } else { ("#ddd", 1) };
        put(format!(
            r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{bottom}" stroke="{stroke}" stroke-width="{width}"/>"##,
            TOP - 8.0
        ));
        put(format!(
            r##"<text x="{gx:.1}" y="{}" text-anchor="middle" fill="#555">{}×</text>"##,
            bottom + 18.0,
            trim(ratio)
        ));
    }
    put(format!(
        r##"<text x="{:.1}" y="{}" text-anchor="middle" font-weight="bold">direct</text>"##,
        x(1.0),
        TOP - 14.0
    ));
    if bars.is_empty() {
        put(format!(
            r##"<text x="{LEFT}" y="{}" fill="#555">no scenario with a mesh/direct ratio in this run</text>"##,
            TOP + ROW / 2.0
        ));
    }
    for (i, bar) in bars.iter().enumerate() {
        let top = TOP + i as f64 * ROW;
        let mid = top + ROW / 2.0;
        put(format!(
            r##"<text x="{}" y="{}" text-anchor="end" font-weight="bold">{}</text>"##,
            LEFT - 12.0,
            mid - 3.0,
            escape(&bar.scenario)
        ));
        put(format!(
            r##"<text x="{}" y="{}" text-anchor="end" font-size="11" fill="#555">{}</text>"##,
            LEFT - 12.0,
            mid + 11.0,
            escape(&bar.caption())
        ));
        let Some(ratio) = bar.ratio else {
            put(format!(
                r##"<text x="{:.1}" y="{}" fill="#555">no figure</text>"##,
                x(1.0) + 6.0,
                mid + 4.0
            ));
            continue;
        };
        let colour = match bar.meets_target() {
            Some(true) => "#2e7d32",
            Some(false) => "#c62828",
            None => "#78909c",
        };
        let (from, to) = (x(1.0).min(x(ratio)), x(1.0).max(x(ratio)));
        put(format!(
            r##"<rect x="{from:.1}" y="{}" width="{:.1}" height="{BAR}" fill="{colour}"/>"##,
            mid - BAR / 2.0,
            (to - from).max(1.0)
        ));
        // The value beyond the bar's free end.
        let (vx, anchor) = if ratio < 1.0 {
            (from - 5.0, "end")
        } else {
            (to + 5.0, "start")
        };
        put(format!(
            r##"<text x="{vx:.1}" y="{}" text-anchor="{anchor}" font-weight="bold">{ratio:.2}×</text>"##,
            mid + 4.0
        ));
        if let Some(target) = bar.headline.target {
            let tx = x(target);
            put(format!(
                r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#ef6c00" stroke-width="2" stroke-dasharray="4,3"/>"##,
                top + 3.0,
                top + ROW - 3.0
            ));
        }
    }
    // Legend.
    let ly = height - 22.0;
    let mut lx = LEFT;
    for (colour, text) in [
        ("#2e7d32", "meets the target"),
        ("#c62828", "misses it"),
        ("#78909c", "no target"),
    ] {
        put(format!(
            r##"<rect x="{lx}" y="{}" width="14" height="14" fill="{colour}"/>"##,
            ly - 11.0
        ));
        put(format!(
            r##"<text x="{}" y="{ly}">{text}</text>"##,
            lx + 20.0
        ));
        lx += 150.0;
    }
    put(format!(
        r##"<line x1="{lx}" y1="{}" x2="{lx}" y2="{}" stroke="#ef6c00" stroke-width="2" stroke-dasharray="4,3"/>"##,
        ly - 13.0,
        ly + 3.0
    ));
    put(format!(
        r##"<text x="{}" y="{ly}">target (mesh/direct)</text>"##,
        lx + 8.0
    ));
    put("</svg>".to_owned());
    out
}

/// A power of two as a short label: 0.25, 0.5, 1, 2, 4.
fn trim(ratio: f64) -> String {
    let s = format!("{ratio:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Text for an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn colours_bars_by_target_and_direction() {
        let report = json!({
            "commit": "abc<1>", "date": "2026-12-07T09:00:00Z", "quick": true, "reps": 1,
            "machine": {"cores": 2, "kernel": "6.1"},
            "scenarios": {
                "throughput-1": {"ratio": {"mib_per_s": 0.9}},
                "latency-1": {"ratio": {"p50_us": 1.9}},
                "footprint": {"ratio": null},
            },
        });
        let svg = svg(
            &report,
            &["throughput-1", "latency-1", "churn", "footprint"],
        );
        assert!(svg.contains("abc&lt;1&gt;"));
        assert!(svg.contains(">0.90×<") && svg.contains(">1.90×<"));
        // Throughput meets ≥ 0.8, latency misses ≤ 1.5; no row for footprint.
        assert_eq!(svg.matches(r##"fill="#2e7d32"/>"##).count(), 2, "{svg}");
        assert_eq!(svg.matches(r##"fill="#c62828"/>"##).count(), 2, "{svg}");
        assert!(!svg.contains(">footprint<") && !svg.contains(">churn<"));
        // In the order asked for.
        assert!(svg.find(">throughput-1<") < svg.find(">latency-1<"));
    }
}
