"""Fast unit tests (``pytest -m "not slow"``): tiny random backbones, synthetic data, no servers."""
