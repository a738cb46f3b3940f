"""Outbound events: the outbox (`outbox.emit`, the audit trigger) and their signed delivery."""
