//! A task's retained history and the aggregates Propeller reports over it.
//!
//! The window is the last `history_size` samples, the current one
//! included. Over that window:
//! - `avg_cpu_usage`, `max_cpu_usage`: mean and maximum of the samples'
//!   `cpu_percent`;
//! - `avg_memory_usage`, `max_memory_usage`: mean (rounded to a whole byte)
//!   and maximum of `memory_bytes`;
//! - `total_disk_read`, `total_disk_write`, `total_network_rx`,
//!   `total_network_tx`: bytes moved during the window, i.e. the sum of each
//!   sample's growth since the sample before it;
//! - `sample_count`: samples in the window.
//!
//! A figure the profile does not collect is left out of the aggregates too.

use std::collections::VecDeque;

use crate::message::Aggregated;

/// One sample's contribution to the aggregates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Growth of the cumulative counters since the previous sample.
    pub disk_read: Option<u64>,
    pub disk_write: Option<u64>,
    pub network_rx: Option<u64>,
    pub network_tx: Option<u64>,
}

/// A bounded ring of samples; capacity 0 keeps nothing.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        History {
            capacity,
            samples: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.capacity == 0 {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Aggregates over the window; `None` without history.
    pub fn aggregate(&self) -> Option<Aggregated> {
        if self.samples.is_empty() {
            return None;
        }
        let cpu = self.values(|s| s.cpu_percent);
        let memory = self.values(|s| s.memory_bytes);
        let total = |field: fn(&Sample) -> Option<u64>| {
            let values = self.values(field);
            (!values.is_empty()).then(|| values.iter().sum())
        };
        Some(Aggregated {
            avg_cpu_usage: mean(&cpu),
            max_cpu_usage: cpu.iter().copied().reduce(f64::max),
            avg_memory_usage: mean_bytes(&memory),
            max_memory_usage: memory.iter().copied().max(),
            total_disk_read: total(|s| s.disk_read),
            total_disk_write: total(|s| s.disk_write),
            total_network_rx: total(|s| s.network_rx),
            total_network_tx: total(|s| s.network_tx),
            sample_count: self.samples.len() as u64,
        })
    }

    fn values<T>(&self, field: impl Fn(&Sample) -> Option<T>) -> Vec<T> {
        self.samples.iter().filter_map(field).collect()
    }
}

/// The mean of byte counts, rounded to the nearest byte: Propeller declares
/// `avg_memory_usage` as `uint64`, and a strict decoder rejects a fraction.
fn mean_bytes(values: &[u64]) -> Option<u64> {
    let count = values.len() as u128;
    (count > 0).then(|| {
        let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
        ((sum + count / 2) / count) as u64
    })
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        (mean * 100.0).round() / 100.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu: f64, memory: u64, read: u64) -> Sample {
        Sample {
            cpu_percent: Some(cpu),
            memory_bytes: Some(memory),
            disk_read: Some(read),
            disk_write: Some(2 * read),
            network_rx: None,
            network_tx: None,
        }
    }

    #[test]
    fn aggregates_a_hand_computed_window() {
        let mut history = History::new(10);
        history.push(sample(10.0, 100, 1));
        history.push(sample(30.0, 300, 2));
        history.push(sample(50.0, 200, 3));
        let aggregated = history.aggregate().unwrap();
        assert_eq!(aggregated.avg_cpu_usage, Some(30.0));
        assert_eq!(aggregated.max_cpu_usage, Some(50.0));
        assert_eq!(aggregated.avg_memory_usage, Some(200));
        assert_eq!(aggregated.max_memory_usage, Some(300));
        assert_eq!(aggregated.total_disk_read, Some(6));
        assert_eq!(aggregated.total_disk_write, Some(12));
        assert_eq!(aggregated.total_network_rx, None, "not collected");
        assert_eq!(aggregated.sample_count, 3);
    }

    #[test]
    fn the_window_slides_when_the_ring_wraps() {
        let mut history = History::new(3);
        for (cpu, memory, read) in [(90.0, 900, 100), (10.0, 100, 1), (20.0, 200, 2)] {
            history.push(sample(cpu, memory, read));
        }
        history.push(sample(30.0, 300, 3)); // evicts the first sample
        assert_eq!(history.len(), 3);
        let aggregated = history.aggregate().unwrap();
        assert_eq!(aggregated.avg_cpu_usage, Some(20.0));
        assert_eq!(aggregated.max_cpu_usage, Some(30.0));
        assert_eq!(aggregated.max_memory_usage, Some(300));
        assert_eq!(aggregated.total_disk_read, Some(6));
        assert_eq!(aggregated.sample_count, 3);
    }

    #[test]
    fn means_round_to_hundredths() {
        let mut history = History::new(3);
        for cpu in [1.0, 1.0, 2.0] {
            history.push(sample(cpu, 1, 0));
        }
        assert_eq!(history.aggregate().unwrap().avg_cpu_usage, Some(1.33));
    }

    /// Issue 10, item 13: Propeller's `avg_memory_usage` is a `uint64`.
    #[test]
    fn mean_memory_is_a_whole_number_of_bytes() {
        let mut history = History::new(3);
        for memory in [13_907_057, 13_907_058, 13_907_058] {
            history.push(sample(1.0, memory, 0));
        }
        let aggregated = history.aggregate().unwrap();
        assert_eq!(aggregated.avg_memory_usage, Some(13_907_058));
        let json = serde_json::to_string(&aggregated).unwrap();
        assert!(json.contains(r#""avg_memory_usage":13907058,"#), "{json}");
        let mut huge = History::new(2);
        huge.push(sample(1.0, u64::MAX, 0));
        huge.push(sample(1.0, u64::MAX - 1, 0));
        assert_eq!(huge.aggregate().unwrap().avg_memory_usage, Some(u64::MAX));
    }

    #[test]
    fn no_history_means_no_aggregates() {
        let mut history = History::new(0);
        history.push(sample(1.0, 1, 1));
        assert!(history.is_empty());
        assert_eq!(history.aggregate(), None);
    }
}
