//! The run page's Gantt chart: one row per task instance, one bar per try, on a
//! time axis from the run's start to its end (or now while it runs). Drawn as SVG on
//! the server.

use std::collections::HashMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use sluice_store::{RunRow, TiRow, TryRow};

use super::graph::esc;

const LABEL_W: f64 = 230.0;
const CHART_W: f64 = 760.0;
const ROW_H: f64 = 22.0;
const AXIS_H: f64 = 24.0;
const TICKS: usize = 6;

/// The chart for `tis` (in display order) and the run's tries, as of `now`.
pub fn render(
    run: &RunRow,
    tis: &[&TiRow],
    tries: &[(String, TryRow)],
    now: DateTime<Utc>,
) -> String {
    let mut by_ti: HashMap<i64, Vec<&TryRow>> = HashMap::new();
    for (_, t) in tries {
        by_ti.entry(t.ti_id).or_default().push(t);
    }
    let starts = tries
        .iter()
        .map(|(_, t)| t.start_date)
        .chain(run.start_date);
    let Some(t0) = starts.min() else {
        return r#"<p class="muted">No task has started in this run yet.</p>"#.to_string();
    };
    let ends = tries
        .iter()
        .map(|(_, t)| t.end_date.unwrap_or(now))
        .chain(run.end_date)
        .chain(std::iter::once(t0 + chrono::Duration::milliseconds(1)));
    let t1 = ends.max().unwrap_or(now);
    let span_ms = ((t1 - t0).num_milliseconds().max(1)) as f64;
    let x = |t: DateTime<Utc>| LABEL_W + ((t - t0).num_milliseconds() as f64 / span_ms) * CHART_W;
    let height = AXIS_H + tis.len() as f64 * ROW_H + 4.0;
    let width = LABEL_W + CHART_W + 10.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="gantt" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="Gantt chart of the run's tries">"#
    );
    for i in 0..=TICKS {
        let frac = i as f64 / TICKS as f64;
        let tx = LABEL_W + frac * CHART_W;
        let _ = write!(
            svg,
            r#"<line class="tick" x1="{tx:.1}" y1="{AXIS_H}" x2="{tx:.1}" y2="{height:.0}"/><text class="axis" x="{tx:.1}" y="14" text-anchor="{anchor}">+{label}</text>"#,
            anchor = if i == 0 {
                "start"
            } else if i == TICKS {
                "end"
            } else {
                "middle"
            },
            label = super::format_duration(Some(frac * span_ms)),
        );
    }
    for (row, ti) in tis.iter().enumerate() {
        let y = AXIS_H + row as f64 * ROW_H;
        let name = if ti.map_index >= 0 {
            format!("{} [{}]", ti.task_id, ti.map_index)
        } else {
            ti.task_id.clone()
        };
        let _ = write!(
            svg,
            r#"<text class="label" x="4" y="{:.1}">{}</text>"#,
            y + ROW_H * 0.7,
            esc(&name)
        );
        for t in by_ti.get(&ti.id).into_iter().flatten() {
            let end = t.end_date.unwrap_or(now);
            let bx = x(t.start_date);
            let bw = (x(end) - bx).max(2.0);
            let _ = write!(
                svg,
                r#"<rect class="bar s-{state}" x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{bh:.1}" rx="2"><title>{name} try {n}: {state}, {dur}</title></rect>"#,
                state = esc(&t.state),
                by = y + 3.0,
                bh = ROW_H - 6.0,
                name = esc(&name),
                n = t.try_number,
                dur = super::format_duration(Some((end - t.start_date).num_milliseconds() as f64)),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}
