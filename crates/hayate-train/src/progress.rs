//! Progress as plain lines, for runs whose output is not a terminal (logs, batch jobs). In a
//! terminal, Burn's own terminal UI is used instead.

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress through a known number of items as lines like "3000/10000 images (45.2 images/s,
/// 155 s left)": at most one every few seconds, and always one when the last item is done.
pub struct Countdown {
    what: &'static str,
    total: usize,
    every: Duration,
    started: Instant,
    last: Instant,
}

impl Countdown {
    /// Counts `total` items named `what` ("images", "pairs"), from now.
    pub fn new(what: &'static str, total: usize) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            every: Duration::from_secs(5),
            started: now,
            last: now,
        }
    }

    /// The same, with a line at most every `every`.
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    /// The line to print now that `done` items are done, if one is due.
    pub fn update(&mut self, done: usize) -> Option<String> {
        let now = Instant::now();
        if now - self.last < self.every && done < self.total {
            return None;
        }
        self.last = now;
        let seconds = (now - self.started).as_secs_f64().max(1e-9);
        let rate = done as f64 / seconds;
        let left = self.total.saturating_sub(done) as f64 / rate.max(1e-9);
        Some(format!(
            "{done}/{total} {what} ({rate:.1} {what}/s, {left:.0} s left)",
            total = self.total,
            what = self.what
        ))
    }
}

/// Burn's renderer for this output: the terminal UI on a terminal, else [`LineRenderer`].
pub fn renderer(every: usize) -> Option<Box<dyn MetricsRenderer>> {
    (!std::io::stdout().is_terminal()).then(|| Box::new(LineRenderer::new(every)) as _)
}

/// Prints one line every `every` steps with the newest value of each training metric.
pub struct LineRenderer {
    every: usize,
    names: Vec<(MetricId, String)>,
    metrics: Vec<(MetricId, String)>,
    interval: usize,
    intervals: usize,
    steps: usize,
    started: Instant,
}

impl LineRenderer {
    /// A renderer that prints every `every` steps (at least 1).
    pub fn new(every: usize) -> Self {
        Self {
            every: every.max(1),
            names: Vec::new(),
            metrics: Vec::new(),
            interval: 0,
            intervals: 0,
            steps: 0,
            started: Instant::now(),
        }
    }

    fn line(&self) -> String {
        let values: Vec<&str> = self.metrics.iter().map(|(_, v)| v.as_str()).collect();
        format!(
            "[{:>7.1}s] interval {}/{} | {}",
            self.started.elapsed().as_secs_f64(),
            self.interval,
            self.intervals,
            values.join(" | ")
        )
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => entry,
        };
        let name = self
            .names
            .iter()
            .find(|(id, _)| *id == entry.metric_id)
            .map_or("?", |(_, n)| n.as_str());
        let text = format!("{name}: {}", entry.serialized_entry.formatted);
        match self
            .metrics
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some((_, value)) => *value = text,
            None => self.metrics.push((entry.metric_id, text)),
        }
    }

    fn update_valid(&mut self, _state: MetricState) {}
}

impl TrainingProgressLogger for LineRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _: Option<usize>,
        _: Option<&str>,
    ) {
        self.intervals = total_epochs;
        self.interval = starting_epoch;
    }

    fn update_epoch(&mut self, epoch: usize) {
        self.interval = epoch + 1;
    }

    fn start_split(&mut self, _split: &str, _total_items: usize) {}

    fn update_split(&mut self, _items_processed: usize) {
        self.steps += 1;
        if self.steps.is_multiple_of(self.every) {
            println!("{}", self.line());
        }
    }

    fn end_split(&mut self) {}

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .push((definition.metric_id, definition.name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_countdown_reports_done_rate_and_time_left_and_always_the_end() {
        let mut quiet = Countdown::new("images", 10);
        assert_eq!(quiet.update(3), None, "a line before its interval");
        let end = quiet.update(10).expect("the last item always reports");
        assert!(
            end.starts_with("10/10 images (") && end.ends_with(", 0 s left)"),
            "{end}"
        );
        let mut every = Countdown::new("pairs", 8).every(Duration::ZERO);
        let line = every.update(2).expect("due at once");
        assert!(
            line.starts_with("2/8 pairs (") && line.contains(" pairs/s, "),
            "{line}"
        );
    }
}
