"""Tiled sampling: the region grid, the MultiDiffusion loop and merge, blended diffusion, low-pass bands."""
