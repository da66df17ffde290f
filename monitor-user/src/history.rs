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
//!
//! Every aggregate is kept up to date as samples come and go (sums and
//! counts in integers, maxima in monotonic queues), so a round costs the
//! same with a window of 3 or of 10,000: at 1,000 tasks of the
//! `intensive` profile a rescan would read a million samples a second.

use std::collections::VecDeque;

use crate::message::Aggregated;

/// One sample's contribution to the aggregates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// As the message has it: a percentage rounded to 0.01.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Growth of the cumulative counters since the previous sample.
    pub disk_read: Option<u64>,
    pub disk_write: Option<u64>,
    pub network_rx: Option<u64>,
    pub network_tx: Option<u64>,
}

/// A sample's figures, in this order: CPU in hundredths of a percent
/// (exact, since the message rounds it so), memory, then the four byte
/// counters (disk read, disk write, network rx, network tx).
const FIGURES: usize = 6;
/// The first figures, whose maximum is reported too: CPU and memory.
const WITH_MAX: usize = 2;

impl Sample {
    fn figures(&self) -> [Option<u64>; FIGURES] {
        [
            self.cpu_percent.map(|cpu| (cpu * 100.0).round() as u64),
            self.memory_bytes,
            self.disk_read,
            self.disk_write,
            self.network_rx,
            self.network_tx,
        ]
    }
}

/// A sample as kept in the ring: its figures, absent ones as clear bits of
/// `present`, CPU in 32 bits. 48 bytes rather than the 96 of a `Sample`.
#[derive(Clone, Copy, Debug)]
struct Stored {
    present: u8,
    cpu_hundredths: u32,
    others: [u64; FIGURES - 1],
}

impl Stored {
    fn new(figures: [Option<u64>; FIGURES]) -> Self {
        let mut present = 0;
        for (i, figure) in figures.iter().enumerate() {
            if figure.is_some() {
                present |= 1 << i;
            }
        }
        let [cpu, others @ ..] = figures.map(|figure| figure.unwrap_or(0));
        Stored {
            present,
            cpu_hundredths: cpu.min(u64::from(u32::MAX)) as u32,
            others,
        }
    }

    fn figures(&self) -> [Option<u64>; FIGURES] {
        std::array::from_fn(|i| {
            let value = match i {
                0 => u64::from(self.cpu_hundredths),
                _ => self.others[i - 1],
            };
            (self.present & 1 << i != 0).then_some(value)
        })
    }
}

/// Sum and count of one figure over the window.
#[derive(Clone, Copy, Debug, Default)]
struct Total {
    sum: u128,
    count: u64,
}

impl Total {
    fn add(&mut self, value: u64) {
        self.sum += u128::from(value);
        self.count += 1;
    }

    fn remove(&mut self, value: u64) {
        self.sum -= u128::from(value);
        self.count -= 1;
    }

    fn sum(&self) -> Option<u64> {
        (self.count > 0).then(|| u64::try_from(self.sum).unwrap_or(u64::MAX))
    }

    /// The mean, rounded half up to a whole unit.
    fn mean(&self) -> Option<u64> {
        let count = u128::from(self.count);
        (count > 0).then(|| ((self.sum + count / 2) / count) as u64)
    }
}

/// The maximum of a sliding window: values that can never be the maximum
/// again (an older one not above a newer one) are dropped as they come,
/// so the front is the maximum and each value is handled twice at most.
#[derive(Debug, Default)]
struct SlidingMax {
    /// (position of the sample, value): positions rising and values
    /// falling from front to back.
    candidates: VecDeque<(u64, u64)>,
}

impl SlidingMax {
    fn push(&mut self, position: u64, value: u64) {
        while self.candidates.back().is_some_and(|&(_, v)| v <= value) {
            self.candidates.pop_back();
        }
        self.candidates.push_back((position, value));
    }

    /// The sample at `position` left the window.
    fn evict(&mut self, position: u64) {
        if self.candidates.front().is_some_and(|&(p, _)| p == position) {
            self.candidates.pop_front();
        }
    }

    fn max(&self) -> Option<u64> {
        self.candidates.front().map(|&(_, value)| value)
    }
}

/// What one retained sample can cost: its record, and a place in each of
/// the two maxima queues (a steadily falling series keeps them all).
pub const MAX_BYTES_PER_SAMPLE: usize =
    std::mem::size_of::<Stored>() + WITH_MAX * std::mem::size_of::<(u64, u64)>();

/// A bounded ring of samples and their aggregates; capacity 0 keeps
/// nothing.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    samples: VecDeque<Stored>,
    /// Samples pushed so far: the position of the next one.
    pushed: u64,
    totals: [Total; FIGURES],
    maxima: [SlidingMax; WITH_MAX],
}

impl History {
    pub fn new(capacity: usize) -> Self {
        History {
            capacity,
            samples: VecDeque::with_capacity(capacity.min(1024)),
            pushed: 0,
            totals: [Total::default(); FIGURES],
            maxima: Default::default(),
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.capacity == 0 {
            return;
        }
        if self.samples.len() == self.capacity {
            self.evict_oldest();
        }
        let stored = Stored::new(sample.figures());
        let position = self.pushed;
        self.pushed += 1;
        for (i, value) in stored.figures().into_iter().enumerate() {
            let Some(value) = value else { continue };
            self.totals[i].add(value);
            if let Some(max) = self.maxima.get_mut(i) {
                max.push(position, value);
            }
        }
        self.samples.push_back(stored);
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.samples.pop_front() else {
            return;
        };
        let position = self.pushed - self.samples.len() as u64 - 1;
        for (i, value) in oldest.figures().into_iter().enumerate() {
            let Some(value) = value else { continue };
            self.totals[i].remove(value);
            if let Some(max) = self.maxima.get_mut(i) {
                max.evict(position);
            }
        }
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
        let percent = |hundredths: u64| hundredths as f64 / 100.0;
        let [cpu, memory, disk_read, disk_write, network_rx, network_tx] = self.totals;
        let [max_cpu, max_memory] = &self.maxima;
        Some(Aggregated {
            avg_cpu_usage: cpu.mean().map(percent),
            max_cpu_usage: max_cpu.max().map(percent),
            avg_memory_usage: memory.mean(),
            max_memory_usage: max_memory.max(),
            total_disk_read: disk_read.sum(),
            total_disk_write: disk_write.sum(),
            total_network_rx: network_rx.sum(),
            total_network_tx: network_tx.sum(),
            sample_count: self.samples.len() as u64,
        })
    }
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

    /// The aggregates straight from the window, as a reader would compute
    /// them by hand.
    fn recomputed(window: &[Sample]) -> Aggregated {
        fn whole_mean(values: &[u64]) -> Option<u64> {
            let count = values.len() as u128;
            let sum: u128 = values.iter().map(|&v| u128::from(v)).sum();
            (count > 0).then(|| ((sum + count / 2) / count) as u64)
        }
        let cpu: Vec<u64> = window
            .iter()
            .filter_map(|s| Some((s.cpu_percent? * 100.0).round() as u64))
            .collect();
        let memory: Vec<u64> = window.iter().filter_map(|s| s.memory_bytes).collect();
        let total = |field: fn(&Sample) -> Option<u64>| {
            let values: Vec<u64> = window.iter().filter_map(field).collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        Aggregated {
            avg_cpu_usage: whole_mean(&cpu).map(|h| h as f64 / 100.0),
            max_cpu_usage: window.iter().filter_map(|s| s.cpu_percent).reduce(f64::max),
            avg_memory_usage: whole_mean(&memory),
            max_memory_usage: memory.iter().copied().max(),
            total_disk_read: total(|s| s.disk_read),
            total_disk_write: total(|s| s.disk_write),
            total_network_rx: total(|s| s.network_rx),
            total_network_tx: total(|s| s.network_tx),
            sample_count: window.len() as u64,
        }
    }

    /// Kept up to date sample by sample, the aggregates equal a rescan of
    /// the window after every push: noisy, rising, falling and flat
    /// series, figures missing now and then, many times round the ring.
    #[test]
    fn running_aggregates_equal_a_rescan_of_the_window() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |range: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % range
        };
        for capacity in [1, 2, 7, 64] {
            let mut history = History::new(capacity);
            let mut all = Vec::new();
            for i in 0..2_000u64 {
                let phase = (i / 150) % 4;
                let memory = match phase {
                    0 => next(1 << 30),
                    1 => 1_000_000 + i * 4096,
                    2 => 1 << 32u64.saturating_sub(i % 150),
                    _ => 7_777_777,
                };
                let sometimes = |value: u64, roll: u64| (roll != 0).then_some(value);
                let sample = Sample {
                    cpu_percent: sometimes(next(20_001), next(10)).map(|h| h as f64 / 100.0),
                    memory_bytes: sometimes(memory, next(10)),
                    disk_read: sometimes(next(1 << 40), next(5)),
                    disk_write: sometimes(next(4096), next(2)),
                    network_rx: Some(next(1 << 20)),
                    network_tx: None,
                };
                history.push(sample);
                all.push(sample);
                let window = &all[all.len().saturating_sub(capacity)..];
                assert_eq!(
                    history.aggregate().unwrap(),
                    recomputed(window),
                    "capacity {capacity}, after sample {i}"
                );
            }
        }
    }
}
