"""Pipeline stages: the contract (:mod:`.base`) and one module per stage."""

from brainrecon.stages.base import Artifact, ArtifactStore, Runner, RunContext, Stage, compute_key

__all__ = ["Artifact", "ArtifactStore", "RunContext", "Runner", "Stage", "compute_key"]
