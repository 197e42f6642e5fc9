//! Inline SVG line charts of a rollout's history (no script, no external library).

use std::fmt::Write;

use jiff::Timestamp;

use super::pages::esc;
use crate::server::RolloutView;

/// One line: its legend name, CSS class and (x, y) points (x in seconds).
pub struct Series {
    pub name: String,
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A dashed horizontal line (a threshold).
pub struct Rule {
    pub name: String,
    pub y: f64,
}

const W: f64 = 560.0;
const H: f64 = 170.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 22.0;

fn fmt_y(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A chart titled `title`; `y_unit` labels the axis. `None` when there is nothing to draw.
pub fn line_chart(
    title: &str,
    y_unit: &str,
    series: &[Series],
    rules: &[Rule],
    floor_zero: bool,
) -> Option<String> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    points().next()?;
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(x, y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for r in rules {
        y0 = y0.min(r.y);
        y1 = y1.max(r.y);
    }
    if floor_zero {
        y0 = y0.min(0.0);
    }
    if (x1 - x0).abs() < 1e-9 {
        x0 -= 30.0;
        x1 += 30.0;
    }
    if (y1 - y0).abs() < 1e-12 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (
        if floor_zero && y0 >= 0.0 {
            y0
        } else {
            y0 - pad
        },
        y1 + pad,
    );
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<figure class="chart"><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    // Frame and axis labels.
    let _ = write!(
        svg,
        r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{}" height="{}"/>"#,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for y in [y0, (y0 + y1) / 2.0, y1] {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            sy(y) + 3.0,
            esc(&fmt_y(y))
        );
    }
    let span = x1 - x0;
    let _ = write!(
        svg,
        r#"<text class="tick" x="{LEFT}" y="{}">−{}</text><text class="tick" x="{}" y="{}" text-anchor="end">now</text>"#,
        H - 6.0,
        esc(&super::pages::duration(span)),
        W - RIGHT,
        H - 6.0
    );
    let _ = write!(
        svg,
        r#"<text class="unit" x="4" y="{}" transform="rotate(-90 10 {})">{}</text>"#,
        H / 2.0,
        H / 2.0,
        esc(y_unit)
    );
    for r in rules {
        let _ = write!(
            svg,
            r#"<line class="rule" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="rule-label" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            W - RIGHT - 2.0,
            sy(r.y) - 3.0,
            esc(&r.name),
            y = sy(r.y)
        );
    }
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="line {}" points="{}"><title>{}</title></polyline>"#,
            s.class,
            pts.join(" "),
            esc(&s.name)
        );
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(
                svg,
                r#"<circle class="dot {}" cx="{:.1}" cy="{:.1}" r="3"/>"#,
                s.class,
                sx(x),
                sy(y)
            );
        }
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for s in series {
        let _ = write!(
            svg,
            r#"<li><span class="swatch {}"></span>{}</li>"#,
            s.class,
            esc(&s.name)
        );
    }
    for r in rules {
        let _ = write!(
            svg,
            r#"<li><span class="swatch rule"></span>{}</li>"#,
            esc(&r.name)
        );
    }
    svg.push_str("</ul></figure>");
    Some(svg)
}

/// The charts of one API's history: green's weight, each stream's rates per window and its
/// evidence against the thresholds.
pub(super) fn rollout_charts(out: &mut String, v: &RolloutView) {
    let Some(last) = v.history.last() else {
        out.push_str(r#"<section><h2>Charts</h2><p class="muted">No decision yet.</p></section>"#);
        return;
    };
    let x = |t: Timestamp| -(last.at.duration_since(t).as_secs_f64());
    let mut html = String::from(r#"<section><h2>Charts</h2><div class="charts">"#);
    let green = Series {
        name: "green share %".into(),
        class: "green",
        points: v
            .history
            .iter()
            .map(|r| {
                let total = (r.weights.blue + r.weights.green).max(1) as f64;
                (x(r.at), 100.0 * r.weights.green as f64 / total)
            })
            .collect(),
    };
    html.extend(line_chart("Green's weight", "%", &[green], &[], true));
    for e in &v.evidence {
        let rates = |blue: bool| -> Vec<(f64, f64)> {
            v.history
                .iter()
                .filter_map(|r| {
                    let c = r.counted.iter().find(|c| c.stream == e.stream)?.counts;
                    let c = if blue { c.blue } else { c.green };
                    (c.requests > 0.0).then(|| (x(r.at), c.bad / c.requests))
                })
                .collect()
        };
        let what = if e.edge.is_some() {
            "share slower than the edge"
        } else {
            "error rate"
        };
        html.extend(line_chart(
            &format!("{}: {what} per window", e.stream),
            "rate",
            &[
                Series {
                    name: "blue".into(),
                    class: "blue",
                    points: rates(true),
                },
                Series {
                    name: "green".into(),
                    class: "green",
                    points: rates(false),
                },
            ],
            &[],
            true,
        ));
        let ev = |rollback: bool| -> Vec<(f64, f64)> {
            v.history
                .iter()
                .filter_map(|r| {
                    let rec = r.evidence.iter().find(|x| x.stream == e.stream)?;
                    Some((
                        x(r.at),
                        if rollback {
                            rec.rollback_log_e
                        } else {
                            rec.advance_log_e
                        },
                    ))
                })
                .collect()
        };
        html.extend(line_chart(
            &format!("{}: evidence (ln E)", e.stream),
            "ln E",
            &[
                Series {
                    name: "against green (rollback)".into(),
                    class: "bad",
                    points: ev(true),
                },
                Series {
                    name: "for green at each step (advance)".into(),
                    class: "good",
                    points: ev(false),
                },
            ],
            &[
                Rule {
                    name: format!("rollback at 1/α = {:.0}", e.rollback_threshold),
                    y: e.rollback_threshold.ln(),
                },
                Rule {
                    name: format!("advance at {:.0}", e.advance_threshold),
                    y: e.advance_threshold.ln(),
                },
            ],
            false,
        ));
    }
    html.push_str("</div></section>");
    out.push_str(&html);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_every_series_and_rule_and_escapes_names() {
        let svg = line_chart(
            "E <rollback>",
            "ln E",
            &[Series {
                name: "errors".into(),
                class: "green",
                points: vec![(0.0, 0.0), (60.0, 2.0), (120.0, 1.0)],
            }],
            &[Rule {
                name: "ln(1/α)".into(),
                y: 5.7,
            }],
            false,
        )
        .unwrap();
        assert!(svg.contains("E &lt;rollback&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("class=\"rule\"").count(), 1);
        assert!(line_chart("empty", "", &[], &[], true).is_none());
    }
}
