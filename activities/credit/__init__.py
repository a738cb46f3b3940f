"""The credit job family's activities: reminders, guardrails, payment recording."""
