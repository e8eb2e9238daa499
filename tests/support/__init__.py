"""Helpers for the test suite: certificates, kubelet-style swaps, a throw-away PostgreSQL."""
