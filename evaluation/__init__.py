"""Evaluation: metrics, the registry of routing methods, score caches, reports and plots, and
`saferoute evaluate`."""
