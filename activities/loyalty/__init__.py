"""The loyalty job family's activities: the points ledger, the reconciliation queue, the audit."""
