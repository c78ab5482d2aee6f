"""Preview sessions and their sandboxes (to come)."""
