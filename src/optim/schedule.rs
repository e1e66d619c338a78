//! Linear warm-up then linear decay to zero, as transformers'
//! `get_linear_schedule_with_warmup`: the factor for update k (0-based) is k / warmup
//! during warm-up, then (total − k) / (total − warmup). Note the first update of a run
//! with warm-up has learning rate 0, exactly as in transformers.

#[derive(Debug, Clone, Copy)]
pub struct LinearSchedule {
    pub base_lr: f64,
    pub warmup: usize,
    pub total: usize,
}

impl LinearSchedule {
    /// transformers' `get_warmup_steps`: ceil(total × ratio).
    pub fn new(base_lr: f64, warmup_ratio: f64, total: usize) -> Self {
        let warmup = (total as f64 * warmup_ratio).ceil() as usize;
        Self {
            base_lr,
            warmup,
            total,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let rest = self.total.saturating_sub(step) as f64;
            (rest / (self.total.saturating_sub(self.warmup)).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = LinearSchedule::new(1.0, 0.1, 100);
        assert_eq!(s.warmup, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(100), 0.0);
        assert_eq!(s.lr(150), 0.0);
        let flat = LinearSchedule::new(2.0, 0.0, 4);
        assert_eq!(flat.lr(0), 2.0);
        assert_eq!(LinearSchedule::new(1.0, 0.06, 390).warmup, 24);
    }
}
