"""The face pipeline: detect -> select -> embed -> swap (blend) -> paste back, or anonymize."""
