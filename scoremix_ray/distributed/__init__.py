"""The thin layer that maps the Ray-free training loops and generation onto Ray Train and Ray Data (the run
context, `scoremix_ray.context`, says whether they run there or in the calling process)."""
