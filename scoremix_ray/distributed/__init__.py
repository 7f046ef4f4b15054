"""The thin layer that maps the Ray-free core onto Ray Train / Data / Tune. Only this package imports Ray."""
