"""Thin Hydra entry points. The library (``brainrecon``) never imports Hydra."""
