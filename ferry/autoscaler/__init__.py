"""Knative's KPA on Envoy's per-revision stats: the autoscaling issue builds it here."""
