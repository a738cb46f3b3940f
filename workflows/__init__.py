"""Deterministic workflow code only: one module per job family."""
