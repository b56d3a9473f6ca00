"""Utilities shared by the audit service and the engine, and by nothing else of either:
durable file writes and running a click group as a program. Like audit.integrity, a leaf
(import-linter holds it, `.ci/run`)."""
