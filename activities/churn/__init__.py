"""The churn job family's activities: cases, the company's nudge rules, audited actions.

The case workflow also calls `send_message` (messaging queue) and `extend_subscription` /
`cancel_subscription` (PaymentActivities, registered when a Stripe key is set).
"""
