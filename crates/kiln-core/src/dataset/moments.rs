//! Count, mean and sum of squared deviations of values seen part by part, merged
//! exactly enough for a mean or a population standard deviation over a whole split
//! (Chan, Golub and LeVeque's pairwise update).

/// The moments of the values seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Values seen.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Their sum of squared deviations from `mean`.
    pub m2: f64,
}

impl Moments {
    /// The moments of `v` (two passes, in f64).
    pub fn of(v: impl Iterator<Item = f64> + Clone) -> Moments {
        let n = v.clone().count();
        if n == 0 {
            return Moments::default();
        }
        let mean = v.clone().sum::<f64>() / n as f64;
        let m2 = v.map(|x| (x - mean).powi(2)).sum();
        Moments { n, mean, m2 }
    }

    /// The moments of the values of `self` and `o` together.
    pub fn merge(self, o: Moments) -> Moments {
        if self.n == 0 {
            return o;
        }
        if o.n == 0 {
            return self;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        Moments {
            n,
            mean: self.mean + d * o.n as f64 / n as f64,
            m2: self.m2 + o.m2 + d * d * (self.n as f64 * o.n as f64) / n as f64,
        }
    }

    /// The population variance (0 for no values).
    pub fn variance(&self) -> f64 {
        self.m2 / self.n.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_parts_give_the_whole_mean_and_variance() {
        let v: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1009) as f64 * 0.37 + 1e6)
            .collect();
        let whole = Moments::of(v.iter().copied());
        let parts = v
            .chunks(37)
            .map(|c| Moments::of(c.iter().copied()))
            .fold(Moments::default(), Moments::merge);
        assert_eq!(parts.n, 1000);
        assert!((parts.mean - whole.mean).abs() <= 1e-12 * whole.mean);
        assert!((parts.variance() - whole.variance()).abs() <= 1e-9 * whole.variance());
        // the variance is the population one: of 1, 2, 3 it is 2/3
        let m = Moments::of([1.0, 2.0, 3.0].into_iter());
        assert!((m.variance() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(Moments::of(std::iter::empty()).variance(), 0.0);
    }
}
