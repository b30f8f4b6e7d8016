"""Pipelines: components + scheduler + the jitted generation programs."""
