//! Throughput for the Learner's display: images per second.

use crate::step::DenoisingOutput;
use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use std::sync::Arc;
use std::time::Instant;

/// Images in one training step.
pub struct ImageCount(pub usize);

impl Adaptor<ImageCount> for DenoisingOutput {
    fn adapt(&self) -> ImageCount {
        ImageCount(self.images)
    }
}

/// Training images processed per second, measured between consecutive steps.
#[derive(Clone)]
pub struct ImagesPerSecond {
    name: MetricName,
    state: NumericMetricState,
    last: Option<Instant>,
}

impl ImagesPerSecond {
    /// A new meter; the first step only starts the clock.
    pub fn new() -> Self {
        Self {
            name: Arc::new("Throughput".to_string()),
            state: NumericMetricState::default(),
            last: None,
        }
    }

    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name()).unit("img/s").precision(1)
    }
}

impl Default for ImagesPerSecond {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for ImagesPerSecond {
    type Input = ImageCount;

    fn update(
        &mut self,
        item: &ImageCount,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let now = Instant::now();
        let rate = self
            .last
            .map_or(0.0, |t| item.0 as f64 / (now - t).as_secs_f64().max(1e-9));
        self.last = Some(now);
        self.state.update(rate, 1);
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.last = None;
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("img/s".to_string()),
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for ImagesPerSecond {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
