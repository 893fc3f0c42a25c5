//! Timing: warm-up, repeated samples, and the statistics reported for them.
//!
//! A measurement first runs the code for the warm-up time (caches, branch
//! predictors, the allocator and wasmtime's instance pool settle) and uses the
//! warm-up rate to choose how many iterations one sample runs, so that each
//! sample lasts about [`Sampling::sample_time`] whatever the cost of one
//! iteration. Each sample yields the mean time of one iteration; a
//! measurement reports the median and the min–max of those means. Medians
//! resist the noise of a shared machine; the min–max shows how much noise
//! there was. Things that are compared (wasm and native) are measured as a
//! pair with interleaved samples, so a burst of background load hits both.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampling {
    /// Time spent running the code before any sample is taken.
    pub(crate) warm_up: Duration,
    /// Number of samples.
    pub(crate) samples: usize,
    /// Target duration of one sample.
    pub(crate) sample_time: Duration,
}

impl Sampling {
    /// Full mode: the numbers written to BENCHMARKS.md.
    pub(crate) fn full() -> Self {
        Sampling {
            warm_up: Duration::from_secs(1),
            samples: 30,
            sample_time: Duration::from_millis(50),
        }
    }

    /// `--quick`: a smoke run, the whole suite in well under a minute.
    pub(crate) fn quick() -> Self {
        Sampling {
            warm_up: Duration::from_millis(200),
            samples: 10,
            sample_time: Duration::from_millis(20),
        }
    }
}

/// Median and range of the per-sample mean times of one measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) median: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Stats {
    /// The same statistics for `1/n` of an iteration (e.g. per job of a batch).
    pub(crate) fn per(self, n: usize) -> Stats {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        Stats {
            median: self.median / n,
            min: self.min / n,
            max: self.max / n,
        }
    }
}

/// Measures `a` and `b` with their samples interleaved (a, b, a, b, …), so
/// that both see the same background load and their ratio is fair on a
/// shared, noisy machine.
pub(crate) fn measure_pair<A, B>(
    sampling: Sampling,
    mut a: impl FnMut() -> anyhow::Result<A>,
    mut b: impl FnMut() -> anyhow::Result<B>,
) -> anyhow::Result<(Stats, Stats)> {
    let iterations_a = calibrate(sampling, &mut a)?;
    let iterations_b = calibrate(sampling, &mut b)?;
    let mut means_a = Vec::with_capacity(sampling.samples);
    let mut means_b = Vec::with_capacity(sampling.samples);
    for _ in 0..sampling.samples.max(1) {
        means_a.push(sample(iterations_a, &mut a)?);
        means_b.push(sample(iterations_b, &mut b)?);
    }
    Ok((stats(means_a), stats(means_b)))
}

/// Runs `f` for the warm-up time and returns how many iterations make a
/// sample of about `sample_time`.
fn calibrate<T>(
    sampling: Sampling,
    f: &mut impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<u32> {
    let started = Instant::now();
    let mut iterations: u32 = 0;
    while iterations == 0 || started.elapsed() < sampling.warm_up {
        black_box(f()?);
        iterations = iterations.saturating_add(1);
    }
    let per_iteration = started.elapsed().as_nanos() / u128::from(iterations);
    let per_sample = sampling.sample_time.as_nanos() / per_iteration.max(1);
    Ok(u32::try_from(per_sample.clamp(1, 1_000_000)).unwrap_or(1_000_000))
}

/// The mean time of one iteration over `iterations` runs of `f`.
fn sample<T>(
    iterations: u32,
    f: &mut impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(f()?);
    }
    Ok(started.elapsed() / iterations)
}

/// Median and range of per-sample means (`means` is not empty).
fn stats(mut means: Vec<Duration>) -> Stats {
    means.sort_unstable();
    let n = means.len();
    let median = if n % 2 == 1 {
        means[n / 2]
    } else {
        (means[n / 2 - 1] + means[n / 2]) / 2
    };
    Stats {
        median,
        min: means[0],
        max: means[n - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_ordered_and_per_divides() -> anyhow::Result<()> {
        let sampling = Sampling {
            warm_up: Duration::from_millis(5),
            samples: 5,
            sample_time: Duration::from_millis(1),
        };
        let mut x = 0u64;
        let (stats, _) = measure_pair(
            sampling,
            || {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                Ok(x)
            },
            || Ok(()),
        )?;
        assert!(stats.min <= stats.median && stats.median <= stats.max);
        let per = stats.per(4);
        assert_eq!(per.median, stats.median / 4);
        Ok(())
    }

    #[test]
    fn pairs_are_measured_separately() -> anyhow::Result<()> {
        let sampling = Sampling {
            warm_up: Duration::from_millis(5),
            samples: 3,
            sample_time: Duration::from_millis(1),
        };
        let slow = || {
            std::thread::sleep(Duration::from_micros(200));
            Ok(())
        };
        let (fast, slow) = measure_pair(sampling, || Ok(black_box(1) + 1), slow)?;
        assert!(fast.median < slow.median);
        assert!(slow.min >= Duration::from_micros(200));
        Ok(())
    }

    #[test]
    fn an_error_aborts_the_measurement() {
        let sampling = Sampling::quick();
        let result = measure_pair(
            sampling,
            || Ok(()),
            || -> anyhow::Result<()> { anyhow::bail!("boom") },
        );
        assert!(result.is_err());
    }
}
