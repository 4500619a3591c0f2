"""Knative's KPA on Envoy's per-revision stats.

windows: per-second metric buckets and their stable/panic averages (Knative's bucketing).
decision: the autoscaler tick (Knative's Scale) and the reconciler-side bounds and scale-to-zero.
"""
