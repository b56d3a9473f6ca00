"""Retention: policies per action class, legal holds, archive-then-purge of whole UTC days,
signed retention checkpoints that keep what remains verifiable, and restore for
investigations (docs/record-spec.md §12)."""
