"""Notebook-first MLOps toolkit: from a raw data lake to a monitored, governed churn model.

Modules:

- `mlops_nb.catalog`: Every name one room writes and another reads — phase names, MLflow tags and artifacts, audit event kinds, warehouse tables, registry aliases, settings sections, environment variables — defined once, with who writes and who reads it.
- `mlops_nb.registry`: Lifecycle status in the MLflow Model Registry — development, staging, production, archived — with gated promotion, rollback, and a history that answers "which version was in production at time T"."""

__version__ = "0.1.0"
