"""Observability: Prometheus metrics, the queue snapshot behind the dashboard, the
``queues`` command and Flower's Queues page. See docs/monitoring.md."""
