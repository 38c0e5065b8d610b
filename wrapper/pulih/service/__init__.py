"""pulih serve: the one long-running service that owns the record and runs the playbooks."""
