//! The Datadog nozzle: firehose → Datadog's metrics API v2 (skeleton; being built).
