"""Benchmarks behind ``plumb bench``: each module times plumb against a baseline in one run."""
