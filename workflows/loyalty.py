"""The loyalty job family's workflows (WORKFLOWS is what the worker registers)."""

from __future__ import annotations

WORKFLOWS: list[type] = []
