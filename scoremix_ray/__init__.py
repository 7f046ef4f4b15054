"""scoremix-ray: ScoreMix (convex score mixing of a class-conditional diffusion model) on Ray."""

__version__ = "0.1.0"
