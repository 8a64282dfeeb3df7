"""Serving: request models, the engine interface, token batching and the RRR post-processing.

Plain Python, testable without Ray; ``deployments/`` wraps these in Ray Serve deployments.
"""
