//! Prometheus metrics, /healthz and /readyz (being written).
