"""Benchmarks: scripts run from the repository root as modules (``python -m bench.gpu_bench ...``) with statex
importable (``pip install -e .``, or ``PYTHONPATH=src``). Their cases live in one registry (bench/registry.py)."""
