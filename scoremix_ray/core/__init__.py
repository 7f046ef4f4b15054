"""The ML core: data, diffusion, recognition, selection, methods, evaluation. No Ray, no MLflow, nothing from
the runtime, pipeline or commands above it (import-linter keeps this)."""
