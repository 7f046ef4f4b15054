"""The runtime: the run context, the Ray Train / Data executors (the Ray-free training loops and generation
mapped onto Ray), MLflow tracking, checks, model export."""
