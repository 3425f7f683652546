"""brainrecon: reconstruct seen images from fMRI responses.

The package is importable without Hydra and without heavy dependencies: submodules
(``brainrecon.decoding``, ``brainrecon.latents`` ...) import torch and friends only
when they are used.
"""

__version__ = "0.1.0"
