"""The twin (`llmscale simulate`): traces, baselines and a virtual-time fleet that runs the real policy."""
