"""The lab: training recipes, benchmarks and the synthetic worlds. Runtime packages never import it."""
