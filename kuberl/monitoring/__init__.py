"""Grafana dashboards and Prometheus alert rules for kuberl, generated from the metric tables.

``python -m kuberl.monitoring`` rewrites the committed copies in the Helm chart
(``charts/kuberl/dashboards/*.json`` and ``charts/kuberl/rules/kuberl-alerts.yaml``); a test fails when they drift.
Every query names series through ``kuberl.worker.metrics.METRICS`` and the operator's metric names, so a renamed
metric breaks the generator rather than a dashboard in production.
"""
