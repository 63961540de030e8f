"""vLLM's histogram bucket edges (vllm/v1/metrics, identical in 0.10, 0.12 and 2026 sources)."""

TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
        80.0, 160.0, 640.0, 2560.0)
ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
# Tokens per request (vllm:request_prompt_tokens, vllm:request_generation_tokens): vLLM's
# build_1_2_5_buckets up to the model's context; 100,000 covers a 128k context's last edge.
REQUEST_TOKENS = tuple(float(m * 10 ** k) for k in range(6) for m in (1, 2, 5) if m * 10 ** k <= 100_000)
