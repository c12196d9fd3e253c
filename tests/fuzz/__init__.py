"""Helpers for the reliability tests: hostile inputs (strategies, generators) and invariant checks."""
