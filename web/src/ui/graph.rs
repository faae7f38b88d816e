//! The graph view: a DAG laid out left to right as an SVG, drawn on the server.
//!
//! A small layered (Sugiyama-style) layout, enough for the tens of tasks a DAG has:
//! each task's column is its longest path from a root; within a column, tasks are
//! ordered by the mean row of their neighbours, sweeping right then left a few times,
//! which removes most edge crossings. No JavaScript layout library is needed.

use std::collections::HashMap;
use std::fmt::Write;

use sluice_core::Dag;

const NODE_W: f64 = 190.0;
const NODE_H: f64 = 44.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 18.0;
const PAD: f64 = 12.0;
const SWEEPS: usize = 4;

/// Where each task goes: (column, row).
pub fn layout(dag: &Dag) -> HashMap<String, (usize, usize)> {
    // Tasks come in topological order, so upstream columns are known first.
    let mut column: HashMap<&str, usize> = HashMap::new();
    for t in dag.tasks.values() {
        let c = t
            .upstream
            .iter()
            .filter_map(|u| column.get(u.as_str()))
            .map(|c| c + 1)
            .max()
            .unwrap_or(0);
        column.insert(t.task_id.as_str(), c);
    }
    let n_cols = column.values().copied().max().map_or(0, |m| m + 1);
    let mut cols: Vec<Vec<&str>> = vec![Vec::new(); n_cols];
    for t in dag.tasks.values() {
        cols[column[t.task_id.as_str()]].push(t.task_id.as_str());
    }
    let mut row: HashMap<&str, f64> = HashMap::new();
    for col in &cols {
        for (i, t) in col.iter().enumerate() {
            row.insert(t, i as f64);
        }
    }
    for sweep in 0..SWEEPS {
        let rightwards = sweep % 2 == 0;
        let order: Vec<usize> = if rightwards {
            (1..n_cols).collect()
        } else {
            (0..n_cols.saturating_sub(1)).rev().collect()
        };
        for c in order {
            let mut keyed: Vec<(f64, usize, &str)> = cols[c]
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let neighbours: Vec<f64> = if rightwards {
                        dag.tasks[*t]
                            .upstream
                            .iter()
                            .filter(|u| column.get(u.as_str()) == Some(&(c - 1)))
                            .filter_map(|u| row.get(u.as_str()).copied())
                            .collect()
                    } else {
                        dag.downstream_of(t)
                            .iter()
                            .filter(|d| column.get(d.as_str()) == Some(&(c + 1)))
                            .filter_map(|d| row.get(d.as_str()).copied())
                            .collect()
                    };
                    let key = if neighbours.is_empty() {
                        i as f64
                    } else {
                        neighbours.iter().sum::<f64>() / neighbours.len() as f64
                    };
                    (key, i, *t)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            cols[c] = keyed.into_iter().map(|(_, _, t)| t).collect();
            for (i, t) in cols[c].iter().enumerate() {
                row.insert(t, i as f64);
            }
        }
    }
    cols.iter()
        .enumerate()
        .flat_map(|(c, col)| {
            col.iter()
                .enumerate()
                .map(move |(r, t)| (t.to_string(), (c, r)))
        })
        .collect()
}

/// XML text: `&`, `<`, `>` and quotes escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text that fits a node: long ids are cut with an ellipsis (the full id is the
/// node's tooltip).
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// The DAG as an SVG; `states` gives each task's state in the selected run, the link
/// to open, and how many task instances it has (several when mapped).
pub fn render(dag: &Dag, states: &HashMap<String, (String, Option<String>, usize)>) -> String {
    let pos = layout(dag);
    let rows_per_col = {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for (c, _) in pos.values() {
            *counts.entry(*c).or_default() += 1;
        }
        counts
    };
    let n_cols = rows_per_col.keys().copied().max().map_or(0, |m| m + 1);
    let max_rows = rows_per_col.values().copied().max().unwrap_or(0);
    let width = PAD * 2.0 + n_cols as f64 * NODE_W + n_cols.saturating_sub(1) as f64 * GAP_X;
    let height = PAD * 2.0 + max_rows as f64 * NODE_H + max_rows.saturating_sub(1) as f64 * GAP_Y;
    // Columns with fewer tasks are centred vertically.
    let xy = |task: &str| -> (f64, f64) {
        let (c, r) = pos[task];
        let n = rows_per_col[&c] as f64;
        let col_h = n * NODE_H + (n - 1.0) * GAP_Y;
        let top = PAD + (height - 2.0 * PAD - col_h) / 2.0;
        (
            PAD + c as f64 * (NODE_W + GAP_X),
            top + r as f64 * (NODE_H + GAP_Y),
        )
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="graph of {}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>"#,
        esc(&dag.dag_id)
    );
    for t in dag.tasks.values() {
        let (x2, y2) = xy(&t.task_id);
        for u in &t.upstream {
            if !pos.contains_key(u) {
                continue;
            }
            let (x1, y1) = xy(u);
            let (sx, sy) = (x1 + NODE_W, y1 + NODE_H / 2.0);
            let (ex, ey) = (x2 - 2.0, y2 + NODE_H / 2.0);
            let mid = (sx + ex) / 2.0;
            let _ = write!(
                svg,
                r#"<path class="edge" data-from="{}" data-to="{}" d="M{sx:.1},{sy:.1} C{mid:.1},{sy:.1} {mid:.1},{ey:.1} {ex:.1},{ey:.1}" marker-end="url(#arrow)"/>"#,
                esc(u),
                esc(&t.task_id)
            );
        }
    }
    for t in dag.tasks.values() {
        let (x, y) = xy(&t.task_id);
        let (state, href, count) = states
            .get(&t.task_id)
            .map(|(s, h, n)| (s.as_str(), h.as_deref(), *n))
            .unwrap_or(("none", None, 0));
        let kind = if t.map_over.is_some() {
            format!("{} [{}]", t.kind, count)
        } else {
            t.kind.clone()
        };
        let node = format!(
            r#"<g class="node s-{state}" data-task="{id}"><title>{id}: {state}</title><rect x="{x:.1}" y="{y:.1}" width="{NODE_W}" height="{NODE_H}" rx="6"/><text x="{tx:.1}" y="{ty1:.1}" class="task">{label}</text><text x="{tx:.1}" y="{ty2:.1}" class="kind">{kind}</text></g>"#,
            state = esc(state),
            id = esc(&t.task_id),
            tx = x + 10.0,
            ty1 = y + 18.0,
            ty2 = y + 35.0,
            label = esc(&fit(&t.task_id, 24)),
            kind = esc(&fit(&kind, 28)),
        );
        match href {
            Some(h) => {
                let _ = write!(svg, r#"<a href="{}">{node}</a>"#, esc(h));
            }
            None => svg.push_str(&node),
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(src: &str) -> Dag {
        let reg = sluice_tasks::Registry::builtin();
        sluice_core::loader::parse_dag(src, std::path::Path::new("t.toml"), &reg)
            .unwrap_or_else(|d| panic!("bad test DAG: {d:?}"))
    }

    #[test]
    fn columns_follow_the_longest_path_and_rows_avoid_crossings() {
        let d = dag(r#"
[dag]
id = "g"
schedule = "None"
[tasks.a]
kind = "noop"
[tasks.b]
kind = "noop"
[tasks.x]
kind = "noop"
upstream = ["b"]
[tasks.y]
kind = "noop"
upstream = ["a"]
[tasks.z]
kind = "noop"
upstream = ["a", "y"]
"#);
        let pos = layout(&d);
        assert_eq!(pos["a"].0, 0);
        assert_eq!(pos["y"].0, 1);
        assert_eq!(pos["z"].0, 2, "z waits for y, so it sits after it");
        // y follows a, x follows b: no crossing between column 0 and 1.
        assert_eq!(pos["a"].1 < pos["b"].1, pos["y"].1 < pos["x"].1);
    }

    #[test]
    fn the_svg_names_every_task_with_its_state_and_escapes_ids() {
        let d = dag(r#"
[dag]
id = "g"
schedule = "None"
[tasks.extract]
kind = "noop"
[tasks.load]
kind = "noop"
upstream = ["extract"]
"#);
        let mut states = HashMap::new();
        states.insert(
            "extract".to_string(),
            ("success".to_string(), Some("/t?a=1&b=2".to_string()), 1),
        );
        let svg = render(&d, &states);
        assert!(svg.contains(r#"class="node s-success" data-task="extract""#));
        assert!(svg.contains(r#"class="node s-none" data-task="load""#));
        assert!(svg.contains(r#"href="/t?a=1&amp;b=2""#));
        assert_eq!(svg.matches("class=\"edge\"").count(), 1);
    }
}
