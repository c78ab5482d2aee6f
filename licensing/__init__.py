"""Signing keys, licenses, encrypted deliveries, download links and proofs (to come)."""
