"""Processes: the `jobctl` CLI, the worker, schedules, the dev stack and the emulators."""
