"""The embedded SQLite file that coordinates processes on one host without Redis."""
