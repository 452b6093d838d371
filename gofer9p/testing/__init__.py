"""Test-only entry points.  Nothing in the release code path imports this package."""
