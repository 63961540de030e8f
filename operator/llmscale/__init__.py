"""llmscale: an operator that autoscales vLLM-style GPU inference servers on Kubernetes.

Layers (imports point downwards only; tests/test_layers.py enforces it):

    cli
    controller   metrics   sim        <- I/O shells and the twin
    policy                            <- the pure decision core
    perf                              <- the pure vLLM performance model
    api                               <- the LLMDeployment models (schema, defaults, validation)
"""

__version__ = "0.1.0"
GROUP = "llmscale.io"
VERSION = "v1alpha1"
