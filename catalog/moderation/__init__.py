"""The moderation gate before publish (docs/moderation.md).

`rules` holds the local rules (pure functions over bytes and text), `backends` the pluggable
backends that turn a SKU's artifact, manifest or listing into a verdict (pass, flag, block,
with reasons), `local` or `http` (MARKETPLACE_MODERATION_BACKEND). Writes of reviews and
moderators' decisions are services (catalog.services.moderation); reads are selectors.
"""
