"""Job queue backends: Redis and embedded SQLite behind one protocol."""
