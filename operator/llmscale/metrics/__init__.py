"""Reading metrics: PromQL for vLLM and DCGM, batched across deployments, into typed Signals."""
