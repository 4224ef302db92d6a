"""Redis plumbing: the shared client and the one place keys are built."""
