"""ml_collections configs; run commands from the repository root so `configs` is importable."""
