"""Reproducible benchmarks of expiryd against a bare subscriber, on a throwaway local cluster."""
