//! The one exponential backoff every retry loop uses (HTTP requests, Elasticsearch
//! bulk calls, PostgreSQL and Redis reconnects, the store at start-up), so they all
//! wait the same way and a change of policy happens in one place.

use std::time::Duration;

/// The wait before retry number `attempt` (1 = the first retry): `base` doubling each
/// time, never more than `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_and_caps() {
        let ms = Duration::from_millis;
        let b = |n| backoff(n, ms(100), ms(1000));
        assert_eq!(
            [b(0), b(1), b(2), b(3), b(4)],
            [ms(100), ms(100), ms(200), ms(400), ms(800)]
        );
        assert_eq!(b(5), ms(1000));
        assert_eq!(b(u32::MAX), ms(1000));
    }
}
