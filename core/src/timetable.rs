//! Data intervals: which scheduled runs are due, Airflow style.
//!
//! A run for the interval `[start, end)` is created once `end <= now`.
//!
//! DST (cron schedules are evaluated in wall-clock time of the DAG timezone):
//! - A fire time inside a spring-forward gap (e.g. 02:30 on the day New York jumps
//!   from 02:00 to 03:00) fires at the first valid instant after the gap (03:00 local),
//!   like Vixie cron running skipped jobs right after the jump.
//! - A fire time inside a fall-back fold (01:00-01:59 happens twice) fires once, at
//!   the first occurrence (the earlier, daylight-time instant). Wall-clock times of
//!   the repeated hour are not fired again during the second pass.

use chrono::{DateTime, Duration, DurationRound, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::model::{Dag, Schedule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Upper bound on the intervals `intervals_between` returns, so a per-second cron
/// over a decade cannot exhaust memory.
pub const MAX_INTERVALS: usize = 1_000_000;

/// Cron presets accepted in `schedule`.
pub(crate) fn preset(s: &str) -> Option<&'static str> {
    Some(match s {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        _ => return None,
    })
}

/// Parse a 5- or 6-field cron expression.
pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| e.to_string())
}

/// A cron expression bound to a timezone.
pub(crate) struct CronTz {
    cron: croner::Cron,
    tz: Tz,
}

impl CronTz {
    pub(crate) fn new(expr: &str, tz: Tz) -> Option<CronTz> {
        parse_cron(expr).ok().map(|cron| CronTz { cron, tz })
    }

    /// First fire time `>= t` (or `> t` when not inclusive).
    pub(crate) fn next_fire(&self, t: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        // Cron has second granularity: ceil a sub-second `t` so results never precede it.
        let (t, inclusive) = match t.duration_trunc(Duration::seconds(1)) {
            Ok(tr) if tr != t => (tr + Duration::seconds(1), true),
            _ => (t, inclusive),
        };
        let mut from = t.with_timezone(&self.tz);
        let mut incl = inclusive;
        // croner resolves an ambiguous (folded) wall-clock time to its first instant,
        // which can lie before `t` when `t` is in the second pass of the fold: skip
        // such results by searching again after them. Bounded for safety.
        for _ in 0..10_000 {
            let r = self.cron.find_next_occurrence(&from, incl).ok()?;
            let ru = r.with_timezone(&Utc);
            if ru > t || (inclusive && ru == t) {
                return Some(ru);
            }
            from = r;
            incl = false;
        }
        None
    }

    /// Last fire time `<= t` that is `>= floor`, searching backwards in growing windows.
    fn prev_fire(&self, t: DateTime<Utc>, floor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if t < floor {
            return None;
        }
        let mut window = Duration::minutes(1);
        loop {
            let lo = (t - window).max(floor);
            let mut last = None;
            let mut cur = self.next_fire(lo, true);
            while let Some(f) = cur {
                if f > t {
                    break;
                }
                last = Some(f);
                cur = self.next_fire(f, false);
            }
            if last.is_some() || lo == floor {
                return last;
            }
            // Past ~20 years without a fire there is no fire (the loader rejects such crons).
            if window > Duration::days(366 * 20) {
                return None;
            }
            window = window * 4;
        }
    }
}

/// How the DAG's schedule generates intervals (cron or fixed-length).
enum Gen {
    Cron(Box<CronTz>),
    Every {
        start: DateTime<Utc>,
        every: Duration,
    },
}

impl Gen {
    /// The first interval whose start is `>= t` (and >= start_date).
    fn at_or_after(&self, t: DateTime<Utc>, floor: Option<DateTime<Utc>>) -> Option<DataInterval> {
        let t = match floor {
            Some(f) => t.max(f),
            None => t,
        };
        match self {
            Gen::Cron(c) => {
                let start = c.next_fire(t, true)?;
                let end = c.next_fire(start, false)?;
                Some(DataInterval { start, end })
            }
            Gen::Every { start, every } => {
                let k = if t <= *start {
                    0
                } else {
                    let elapsed = (t - *start).num_milliseconds();
                    let step = every.num_milliseconds();
                    // Ceiling division without `elapsed + step` overflowing.
                    elapsed / step + i64::from(elapsed % step != 0)
                };
                self.every_k(*start, *every, k)
            }
        }
    }

    /// The interval after `iv` (they are consecutive).
    fn after(&self, iv: &DataInterval) -> Option<DataInterval> {
        match self {
            Gen::Cron(c) => {
                let end = c.next_fire(iv.end, false)?;
                Some(DataInterval { start: iv.end, end })
            }
            Gen::Every { every, .. } => Some(DataInterval {
                start: iv.end,
                end: iv.end.checked_add_signed(*every)?,
            }),
        }
    }

    /// The complete interval (end <= now) with the latest end, starting at or after
    /// `floor` (start_date) and, when given, at or before `end_date`.
    fn latest_complete(
        &self,
        now: DateTime<Utc>,
        floor: DateTime<Utc>,
        end_date: Option<DateTime<Utc>>,
    ) -> Option<DataInterval> {
        match self {
            Gen::Cron(c) => {
                let first = c.next_fire(floor, true)?;
                let end = c.prev_fire(now, first)?;
                let start = c.prev_fire(end - Duration::seconds(1), first)?;
                let iv = DataInterval { start, end };
                match end_date {
                    Some(ed) if iv.start > ed => {
                        // Clamp to the last interval that may still run.
                        let start = c.prev_fire(ed, first)?;
                        let end = c.next_fire(start, false)?;
                        Some(DataInterval { start, end })
                    }
                    _ => Some(iv),
                }
            }
            Gen::Every { start, every } => {
                if now < *start {
                    return None;
                }
                let step = every.num_milliseconds();
                let mut k = (now - *start).num_milliseconds() / step - 1;
                if let Some(ed) = end_date {
                    if ed < *start {
                        return None;
                    }
                    k = k.min((ed - *start).num_milliseconds() / step);
                }
                if k < 0 {
                    return None;
                }
                self.every_k(*start, *every, k)
            }
        }
    }

    fn every_k(&self, start: DateTime<Utc>, every: Duration, k: i64) -> Option<DataInterval> {
        let s = start.checked_add_signed(every.checked_mul(k.try_into().ok()?)?)?;
        let e = s.checked_add_signed(every)?;
        Some(DataInterval { start: s, end: e })
    }
}

impl Dag {
    fn generator(&self) -> Option<Gen> {
        match &self.schedule {
            Schedule::Cron { expr } => {
                CronTz::new(expr, self.timezone).map(|c| Gen::Cron(Box::new(c)))
            }
            Schedule::Every { every_ms } => {
                let every = Duration::milliseconds(i64::try_from(*every_ms).ok()?);
                if every <= Duration::zero() {
                    return None;
                }
                Some(Gen::Every {
                    start: self.start_date?,
                    every,
                })
            }
            Schedule::None | Schedule::Once => None,
        }
    }

    fn before_end(&self, iv: &DataInterval) -> bool {
        self.end_date.is_none_or(|ed| iv.start <= ed)
    }

    /// The interval the scheduler would create next, whether or not it is due yet.
    fn next_candidate(
        &self,
        last: Option<&DataInterval>,
        now: DateTime<Utc>,
    ) -> Option<DataInterval> {
        let start_date = self.start_date?;
        let generator = self.generator()?;
        let mut candidate = match last {
            Some(l) => generator.at_or_after(l.end, Some(start_date))?,
            None => generator.at_or_after(start_date, None)?,
        };
        if !self.catchup {
            // Airflow skips missed intervals: run only the latest complete one.
            if let Some(latest) = generator.latest_complete(now, start_date, self.end_date) {
                if latest.start > candidate.start {
                    candidate = latest;
                }
            }
        }
        self.before_end(&candidate).then_some(candidate)
    }

    /// The next interval the scheduler must create a run for now, or None if nothing is due.
    pub fn next_due_interval(
        &self,
        last: Option<&DataInterval>,
        now: DateTime<Utc>,
    ) -> Option<DataInterval> {
        match self.schedule {
            Schedule::None => None,
            Schedule::Once => {
                let sd = self.start_date?;
                (last.is_none() && sd <= now).then_some(DataInterval { start: sd, end: sd })
            }
            Schedule::Cron { .. } | Schedule::Every { .. } => {
                self.next_candidate(last, now).filter(|iv| iv.end <= now)
            }
        }
    }

    /// When the next interval to be created becomes due (its end). If that interval
    /// is already due the returned time is `<= now` (create it immediately). None when
    /// the schedule has no more intervals.
    pub fn next_due_at(
        &self,
        last: Option<&DataInterval>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self.schedule {
            Schedule::None => None,
            Schedule::Once => match last {
                None => self.start_date,
                Some(_) => None,
            },
            Schedule::Cron { .. } | Schedule::Every { .. } => {
                self.next_candidate(last, now).map(|iv| iv.end)
            }
        }
    }

    /// The next `count` intervals whose start is >= `after` (and within start/end date),
    /// regardless of catchup and of now.
    pub fn intervals_after(&self, after: DateTime<Utc>, count: usize) -> Vec<DataInterval> {
        let mut out = Vec::new();
        if count == 0 {
            return out;
        }
        match self.schedule {
            Schedule::None => {}
            Schedule::Once => {
                if let Some(sd) = self.start_date {
                    if sd >= after {
                        out.push(DataInterval { start: sd, end: sd });
                    }
                }
            }
            Schedule::Cron { .. } | Schedule::Every { .. } => {
                let Some(generator) = self.generator() else {
                    return out;
                };
                let mut cur = generator.at_or_after(after, self.start_date);
                while let Some(iv) = cur {
                    if out.len() >= count || !self.before_end(&iv) {
                        break;
                    }
                    out.push(iv);
                    cur = generator.after(&iv);
                }
            }
        }
        out
    }

    /// Every interval whose start lies in `[from, to]` (backfill), honouring start/end
    /// date; at most [`MAX_INTERVALS`].
    pub fn intervals_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DataInterval> {
        let mut out = Vec::new();
        if from > to {
            return out;
        }
        match self.schedule {
            Schedule::None => {}
            Schedule::Once => {
                if let Some(sd) = self.start_date {
                    if sd >= from && sd <= to {
                        out.push(DataInterval { start: sd, end: sd });
                    }
                }
            }
            Schedule::Cron { .. } | Schedule::Every { .. } => {
                let Some(generator) = self.generator() else {
                    return out;
                };
                let mut cur = generator.at_or_after(from, self.start_date);
                while let Some(iv) = cur {
                    if iv.start > to || !self.before_end(&iv) || out.len() >= MAX_INTERVALS {
                        break;
                    }
                    out.push(iv);
                    cur = generator.after(&iv);
                }
            }
        }
        out
    }
}

/// Whether a cron fires within ten years of `from` (the loader's "never fires" check).
pub(crate) fn cron_fires_within_10y(expr: &str, tz: Tz, from: DateTime<Utc>) -> bool {
    let Some(c) = CronTz::new(expr, tz) else {
        return false;
    };
    let from = from.duration_trunc(Duration::seconds(1)).unwrap_or(from);
    match c.next_fire(from, true) {
        Some(f) => f <= from + Duration::days(3653),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use indexmap::IndexMap;
    use std::collections::HashMap;

    fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap()
    }

    fn iv(start: DateTime<Utc>, end: DateTime<Utc>) -> DataInterval {
        DataInterval { start, end }
    }

    fn dag(schedule: Schedule, tz: Tz, start: Option<DateTime<Utc>>, catchup: bool) -> Dag {
        Dag {
            dag_id: "t".into(),
            description: None,
            schedule,
            timezone: tz,
            start_date: start,
            end_date: None,
            catchup,
            max_active_runs: 16,
            max_active_tasks: 16,
            dagrun_timeout_ms: None,
            tags: vec![],
            params: serde_json::Map::new(),
            checkpoints: IndexMap::new(),
            is_paused_upon_creation: None,
            tasks: IndexMap::new(),
            downstream: HashMap::new(),
            fileloc: "t.toml".into(),
            source_hash: String::new(),
        }
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::Cron { expr: expr.into() }
    }

    fn starts(ivs: &[DataInterval]) -> Vec<DateTime<Utc>> {
        ivs.iter().map(|i| i.start).collect()
    }

    #[test]
    fn catchup_true_runs_every_interval_in_order() {
        let d = dag(
            cron("0 0 * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 0, 0)),
            true,
        );
        let now = utc(2024, 1, 3, 12, 0);
        let first = d.next_due_interval(None, now).unwrap();
        assert_eq!(first, iv(utc(2024, 1, 1, 0, 0), utc(2024, 1, 2, 0, 0)));
        let second = d.next_due_interval(Some(&first), now).unwrap();
        assert_eq!(second, iv(utc(2024, 1, 2, 0, 0), utc(2024, 1, 3, 0, 0)));
        // [01-03, 01-04) is not complete yet.
        assert_eq!(d.next_due_interval(Some(&second), now), None);
        assert_eq!(
            d.next_due_at(Some(&second), now),
            Some(utc(2024, 1, 4, 0, 0))
        );
        // Nothing is due before the first interval ends.
        assert_eq!(d.next_due_interval(None, utc(2024, 1, 1, 23, 59)), None);
        assert_eq!(
            d.next_due_at(None, utc(2024, 1, 1, 5, 0)),
            Some(utc(2024, 1, 2, 0, 0))
        );
    }

    #[test]
    fn catchup_false_jumps_to_latest_complete_interval() {
        let d = dag(
            cron("0 0 * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 0, 0)),
            false,
        );
        let now = utc(2024, 1, 10, 12, 0);
        let latest = iv(utc(2024, 1, 9, 0, 0), utc(2024, 1, 10, 0, 0));
        assert_eq!(d.next_due_interval(None, now), Some(latest));
        // An old last run also jumps forward.
        let old = iv(utc(2024, 1, 1, 0, 0), utc(2024, 1, 2, 0, 0));
        assert_eq!(d.next_due_interval(Some(&old), now), Some(latest));
        assert_eq!(d.next_due_interval(Some(&latest), now), None);
        assert_eq!(
            d.next_due_at(Some(&latest), now),
            Some(utc(2024, 1, 11, 0, 0))
        );
        // Before any interval is complete there is nothing to run.
        assert_eq!(d.next_due_interval(None, utc(2024, 1, 1, 12, 0)), None);
    }

    #[test]
    fn start_date_alignment_and_end_date() {
        // start_date mid-day: the first interval starts at the next fire time.
        let mut d = dag(
            cron("0 0 * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 10, 0)),
            true,
        );
        let now = utc(2024, 2, 1, 0, 0);
        assert_eq!(
            d.next_due_interval(None, now),
            Some(iv(utc(2024, 1, 2, 0, 0), utc(2024, 1, 3, 0, 0)))
        );
        d.end_date = Some(utc(2024, 1, 3, 0, 0));
        let a = d.next_due_interval(None, now).unwrap();
        let b = d.next_due_interval(Some(&a), now).unwrap();
        assert_eq!(b.start, utc(2024, 1, 3, 0, 0)); // start == end_date is still included
        assert_eq!(d.next_due_interval(Some(&b), now), None);
        assert_eq!(d.next_due_at(Some(&b), now), None);
        // Without catchup, a long-past end_date still runs the last allowed interval once.
        d.catchup = false;
        assert_eq!(d.next_due_interval(None, now), Some(b));
        assert_eq!(d.next_due_interval(Some(&b), now), None);
        assert_eq!(
            starts(&d.intervals_after(utc(2020, 1, 1, 0, 0), 10)).len(),
            2
        );
    }

    #[test]
    fn cron_in_seoul() {
        let seoul = chrono_tz::Asia::Seoul;
        // Midnight in Seoul is 15:00 UTC the day before.
        let d = dag(
            cron("0 0 * * *"),
            seoul,
            Some(utc(2024, 7, 31, 15, 0)),
            true,
        );
        let ivs = d.intervals_after(utc(2024, 1, 1, 0, 0), 2);
        assert_eq!(
            ivs,
            vec![
                iv(utc(2024, 7, 31, 15, 0), utc(2024, 8, 1, 15, 0)),
                iv(utc(2024, 8, 1, 15, 0), utc(2024, 8, 2, 15, 0)),
            ]
        );
        let d = dag(
            cron("*/5 * * * *"),
            seoul,
            Some(utc(2024, 7, 31, 15, 0)),
            false,
        );
        assert_eq!(
            d.next_due_interval(None, utc(2024, 8, 1, 3, 7)),
            Some(iv(utc(2024, 8, 1, 3, 0), utc(2024, 8, 1, 3, 5)))
        );
    }

    #[test]
    fn dst_gap_fires_right_after_the_jump() {
        // 2024-03-10: New York jumps from 02:00 EST to 03:00 EDT; 02:30 does not exist.
        let ny = chrono_tz::America::New_York;
        let d = dag(cron("30 2 * * *"), ny, Some(utc(2024, 3, 1, 0, 0)), true);
        let ivs = d.intervals_after(utc(2024, 3, 8, 0, 0), 4);
        assert_eq!(
            starts(&ivs),
            vec![
                utc(2024, 3, 8, 7, 30),  // 02:30 EST
                utc(2024, 3, 9, 7, 30),  // 02:30 EST
                utc(2024, 3, 10, 7, 0),  // gap: 03:00 EDT, first instant after the jump
                utc(2024, 3, 11, 6, 30), // 02:30 EDT
            ]
        );
        assert_eq!(ivs[1].end, utc(2024, 3, 10, 7, 0));
    }

    #[test]
    fn dst_fold_fires_once_at_first_occurrence() {
        // 2024-11-03: New York repeats 01:00-01:59 (EDT, then EST).
        let ny = chrono_tz::America::New_York;
        let d = dag(cron("0 1 * * *"), ny, Some(utc(2024, 10, 1, 0, 0)), true);
        let ivs = d.intervals_after(utc(2024, 11, 2, 0, 0), 3);
        assert_eq!(
            starts(&ivs),
            vec![
                utc(2024, 11, 2, 5, 0), // 01:00 EDT
                utc(2024, 11, 3, 5, 0), // 01:00 EDT (first pass), not again at 01:00 EST
                utc(2024, 11, 4, 6, 0), // 01:00 EST
            ]
        );
        // The fold day's interval is 25 hours long.
        assert_eq!(ivs[1].end - ivs[1].start, Duration::hours(25));
        // Searching from inside the second pass does not go back to the first.
        let d = dag(cron("30 1 * * *"), ny, Some(utc(2024, 10, 1, 0, 0)), true);
        let ivs = d.intervals_after(utc(2024, 11, 3, 6, 0), 1);
        assert_eq!(ivs[0].start, utc(2024, 11, 4, 6, 30));
        // Sub-hourly: the repeated wall-clock times are skipped.
        let d = dag(cron("*/30 * * * *"), ny, Some(utc(2024, 10, 1, 0, 0)), true);
        let ivs = d.intervals_after(utc(2024, 11, 3, 4, 45), 4);
        assert_eq!(
            starts(&ivs),
            vec![
                utc(2024, 11, 3, 5, 0),
                utc(2024, 11, 3, 5, 30),
                utc(2024, 11, 3, 7, 0),
                utc(2024, 11, 3, 7, 30),
            ]
        );
    }

    #[test]
    fn every_intervals_align_to_start_date() {
        let every = Schedule::Every { every_ms: 600_000 };
        let d = dag(every.clone(), Tz::UTC, Some(utc(2024, 1, 1, 0, 5)), true);
        let now = utc(2024, 1, 1, 1, 0);
        assert_eq!(
            d.next_due_interval(None, now),
            Some(iv(utc(2024, 1, 1, 0, 5), utc(2024, 1, 1, 0, 15)))
        );
        let last = iv(utc(2024, 1, 1, 0, 5), utc(2024, 1, 1, 0, 15));
        assert_eq!(
            d.next_due_interval(Some(&last), now),
            Some(iv(utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 25)))
        );
        assert_eq!(
            starts(&d.intervals_after(utc(2024, 1, 1, 0, 17), 2)),
            vec![utc(2024, 1, 1, 0, 25), utc(2024, 1, 1, 0, 35)]
        );
        let d = dag(every, Tz::UTC, Some(utc(2024, 1, 1, 0, 5)), false);
        assert_eq!(
            d.next_due_interval(None, now),
            Some(iv(utc(2024, 1, 1, 0, 45), utc(2024, 1, 1, 0, 55)))
        );
        assert_eq!(
            d.next_due_at(
                Some(&iv(utc(2024, 1, 1, 0, 45), utc(2024, 1, 1, 0, 55))),
                now
            ),
            Some(utc(2024, 1, 1, 1, 5))
        );
    }

    #[test]
    fn once_and_none() {
        let sd = utc(2024, 5, 1, 12, 0);
        let d = dag(Schedule::Once, Tz::UTC, Some(sd), false);
        assert_eq!(d.next_due_interval(None, utc(2024, 5, 1, 11, 0)), None);
        assert_eq!(d.next_due_interval(None, sd), Some(iv(sd, sd)));
        assert_eq!(
            d.next_due_interval(Some(&iv(sd, sd)), utc(2025, 1, 1, 0, 0)),
            None
        );
        assert_eq!(d.next_due_at(None, utc(2024, 1, 1, 0, 0)), Some(sd));
        assert_eq!(
            d.next_due_at(Some(&iv(sd, sd)), utc(2024, 1, 1, 0, 0)),
            None
        );
        assert_eq!(
            d.intervals_after(utc(2024, 1, 1, 0, 0), 5),
            vec![iv(sd, sd)]
        );
        assert!(d.intervals_after(utc(2024, 6, 1, 0, 0), 5).is_empty());
        assert_eq!(
            d.intervals_between(utc(2024, 5, 1, 0, 0), utc(2024, 5, 2, 0, 0)),
            vec![iv(sd, sd)]
        );

        let d = dag(Schedule::None, Tz::UTC, Some(sd), true);
        assert_eq!(d.next_due_interval(None, utc(2030, 1, 1, 0, 0)), None);
        assert_eq!(d.next_due_at(None, utc(2030, 1, 1, 0, 0)), None);
        assert!(d.intervals_after(sd, 3).is_empty());
        assert!(d.intervals_between(sd, utc(2030, 1, 1, 0, 0)).is_empty());
    }

    #[test]
    fn intervals_after_ignores_catchup_and_now() {
        let d = dag(
            cron("0 */6 * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 0, 0)),
            false,
        );
        assert_eq!(
            starts(&d.intervals_after(utc(2024, 1, 1, 7, 0), 3)),
            vec![
                utc(2024, 1, 1, 12, 0),
                utc(2024, 1, 1, 18, 0),
                utc(2024, 1, 2, 0, 0)
            ]
        );
        // A start exactly on a fire time is included; before start_date clamps to it.
        assert_eq!(
            d.intervals_after(utc(2024, 1, 1, 12, 0), 1)[0].start,
            utc(2024, 1, 1, 12, 0)
        );
        assert_eq!(
            d.intervals_after(utc(2023, 1, 1, 0, 0), 1)[0].start,
            utc(2024, 1, 1, 0, 0)
        );
        assert!(d.intervals_after(utc(2024, 1, 1, 0, 0), 0).is_empty());
        // Seconds-level cron (6 fields).
        let d = dag(
            cron("*/20 * * * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 0, 0)),
            false,
        );
        let ivs = d.intervals_after(utc(2024, 1, 1, 0, 0), 2);
        assert_eq!(ivs[0].end - ivs[0].start, Duration::seconds(20));
    }

    #[test]
    fn intervals_between_for_backfill() {
        let mut d = dag(
            cron("0 0 * * *"),
            Tz::UTC,
            Some(utc(2024, 1, 1, 0, 0)),
            false,
        );
        assert_eq!(
            starts(&d.intervals_between(utc(2024, 1, 3, 0, 0), utc(2024, 1, 5, 0, 0))),
            vec![
                utc(2024, 1, 3, 0, 0),
                utc(2024, 1, 4, 0, 0),
                utc(2024, 1, 5, 0, 0)
            ]
        );
        // Clamped by start_date and end_date.
        d.end_date = Some(utc(2024, 1, 2, 12, 0));
        assert_eq!(
            starts(&d.intervals_between(utc(2023, 12, 1, 0, 0), utc(2024, 2, 1, 0, 0))),
            vec![utc(2024, 1, 1, 0, 0), utc(2024, 1, 2, 0, 0)]
        );
        assert!(d
            .intervals_between(utc(2024, 1, 5, 0, 0), utc(2024, 1, 1, 0, 0))
            .is_empty());
    }

    #[test]
    fn never_firing_cron_is_detected() {
        let from = utc(2024, 1, 1, 0, 0);
        assert!(!cron_fires_within_10y("0 0 30 2 *", Tz::UTC, from));
        assert!(cron_fires_within_10y("0 0 29 2 *", Tz::UTC, from));
    }
}
