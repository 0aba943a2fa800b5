//! The OTLP nozzle: firehose → OpenTelemetry over gRPC (skeleton; being built).
