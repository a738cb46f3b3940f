"""Payments: Stripe customers, payment links, subscriptions and PaymentIntents."""
