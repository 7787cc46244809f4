//! Metrics for the Learner's display beyond Burn's own: images per second, and values the host
//! knows (mean t/T of the batch, beta1 of the step).

use crate::step::DenoisingOutput;
use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use std::marker::PhantomData;
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

/// A value of one training step that the host computed, shown as a metric.
pub trait HostInput: Send + Sync + 'static {
    /// The value.
    fn value(&self) -> f64;
}

/// Mean t / T of a step's batch.
pub struct MeanT(pub f64);

/// Adam's beta1 in a step.
pub struct Beta1(pub f64);

impl HostInput for MeanT {
    fn value(&self) -> f64 {
        self.0
    }
}

impl HostInput for Beta1 {
    fn value(&self) -> f64 {
        self.0
    }
}

impl Adaptor<MeanT> for DenoisingOutput {
    fn adapt(&self) -> MeanT {
        MeanT(self.mean_t_over_t)
    }
}

impl Adaptor<Beta1> for DenoisingOutput {
    fn adapt(&self) -> Beta1 {
        Beta1(self.beta1)
    }
}

/// Shows a [`HostInput`] under a name, averaged over the interval like the loss.
pub struct HostValue<I> {
    name: MetricName,
    state: NumericMetricState,
    _input: PhantomData<fn() -> I>,
}

impl<I> Clone for HostValue<I> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            state: self.state.clone(),
            _input: PhantomData,
        }
    }
}

impl<I> HostValue<I> {
    /// A metric called `name` (Burn's file logger makes it a file name: no `/`).
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            state: NumericMetricState::default(),
            _input: PhantomData,
        }
    }
}

impl<I: HostInput> Metric for HostValue<I> {
    type Input = I;

    fn update(
        &mut self,
        item: &I,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        self.state.update(item.value(), 1);
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {}

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl<I: HostInput> Numeric for HostValue<I> {
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
