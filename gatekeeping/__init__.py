"""Who may do what and how much: keys, tenants, scopes, limits, settlement, PII."""
