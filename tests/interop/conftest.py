"""The real service with producers, as tests/producers runs it."""

from tests.producers.test_producers import service  # noqa: F401  (the fixture)
