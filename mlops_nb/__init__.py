"""Notebook-first MLOps toolkit: from a raw data lake to a monitored, governed churn model.

Modules:

- `mlops_nb.registry`: Lifecycle status in the MLflow Model Registry — development, staging, production, archived — with gated promotion, rollback, and a history that answers "which version was in production at time T"."""

__version__ = "0.1.0"
