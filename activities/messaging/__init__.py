"""Messaging: the outbox, templates and the Twilio gateway (sends run on the `messaging` queue)."""
