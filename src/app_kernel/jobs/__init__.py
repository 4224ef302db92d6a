"""Background jobs: registry, client, worker and queue backends."""
