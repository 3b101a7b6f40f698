"""Test data, and the numpy-only builders both the tests and their reference scripts use."""
