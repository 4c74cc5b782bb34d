"""Engine adapters: one interface, one adapter per engine protocol. No Temporal, NATS or HTTP serving here."""
