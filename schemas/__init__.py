"""Data shapes: database tables (SQLAlchemy typed models) and Temporal payloads (pydantic v2).

Imports nothing of ours, so workflows, activities and workers can all depend on it.
"""
