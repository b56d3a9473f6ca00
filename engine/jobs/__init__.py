"""Jobs: a persisted spec holding every argument that affects the result, and its states."""
