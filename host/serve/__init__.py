"""Serving on Ray Serve: scheduler, device replicas, the application, load test and fleet
simulation (see docs/serving.md)."""
