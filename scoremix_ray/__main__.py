"""`python -m scoremix_ray ...` is the `scoremix-ray` command (handy as a `ray job submit` entrypoint)."""

from scoremix_ray.cli import main

main()
