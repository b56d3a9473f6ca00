"""ffengine: the face-swap engine sidecar that emits hash-chained audit records."""
