"""Rollouts: a candidate revision takes main traffic step by step, judged on Envoy's stats, or is rolled back."""
