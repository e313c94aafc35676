//! Retry delays, in one place: exponential backoff from `start`, doubling up to `max`, from the `backon`
//! crate. Reconnects to a server add random jitter (each delay is stretched by up to its own length), so that
//! a fleet of devices that lost the same server does not come back in step; a local capture device needs none.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays before each retry, in order, without end.
pub fn delays(start: Duration, max: Duration, jitter: bool) -> impl Iterator<Item = Duration> + Send {
    let builder = ExponentialBuilder::new().with_min_delay(start).with_max_delay(max).with_factor(2.0).without_max_times();
    let builder = if jitter { builder.with_jitter() } else { builder };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stretches_each_by_less_than_itself() {
        let (start, max) = (Duration::from_millis(500), Duration::from_secs(8));
        let plain: Vec<Duration> = delays(start, max, false).take(7).collect();
        let ms: Vec<u128> = plain.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        let jittered: Vec<Duration> = delays(start, max, true).take(200).collect();
        let nominal = plain.iter().copied().chain(std::iter::repeat(max));
        for (got, nominal) in jittered.iter().zip(nominal) {
            assert!(*got >= nominal && *got < nominal * 2, "{got:?} for {nominal:?}");
        }
        assert!(jittered.windows(2).any(|w| w[0] != w[1]), "the jitter varies");
    }
}
