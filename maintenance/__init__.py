"""The maintenance procedure: tasks run in sequence, one run fleet-wide."""
