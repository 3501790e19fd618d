"""Replicas sharing one PostgreSQL: the schema they agree on (`schema`) and the leases on
virtual shards that split the work between the live ones (`leases`)."""
