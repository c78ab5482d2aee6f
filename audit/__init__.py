"""The hash-chained audit log, signed checkpoints, exports and verification (to come)."""
