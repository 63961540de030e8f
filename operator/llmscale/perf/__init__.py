"""The vLLM performance model: pure functions and a deterministic engine simulator.

Shared by the policy (capacity seed), the twin (`llmscale simulate`) and the e2e fleet simulator.
"""

from .engine import Engine, Request
from .hardware import GPU, GPUS, ModelProfile, ServerProfile, gpu_for, model_profile, server_profile

__all__ = ["GPU", "GPUS", "Engine", "ModelProfile", "Request", "ServerProfile", "gpu_for", "model_profile", "server_profile"]
