"""GPU and model facts, and the per-step cost model of a vLLM server built from them.

A decode step reads every weight once and the KV cache of every running sequence, and does
2 x params FLOPs per token in the batch; prefill is compute-bound. Efficiencies were fitted by
hand to the points in shared/vllm-calibration.md (vLLM blog v0.6.0 on H100/A100, NIM on H100):
tests/perf/test_calibration.py states the tolerance and checks it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    product_label: str  # nvidia.com/gpu.product as GPU Feature Discovery writes it
    memory_gb: float
    hbm_tb_s: float
    bf16_tflops: float  # dense


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("nvidia-h100", "NVIDIA-H100-80GB-HBM3", 80, 3.35, 989),
        GPU("nvidia-h200", "NVIDIA-H200", 141, 4.8, 989),
        GPU("nvidia-a100", "NVIDIA-A100-SXM4-80GB", 80, 2.0, 312),
        GPU("nvidia-a100-40gb", "NVIDIA-A100-SXM4-40GB", 40, 1.55, 312),
        GPU("nvidia-l40s", "NVIDIA-L40S", 48, 0.864, 362),
        GPU("nvidia-l4", "NVIDIA-L4", 24, 0.3, 121),
        GPU("nvidia-a10g", "NVIDIA-A10G", 24, 0.6, 125),
    )
}


def gpu_for(accelerator: str) -> GPU:
    """The GPU facts for an accelerator name; unknown names get H100-like facts (said in the reason)."""
    if accelerator in GPUS:
        return GPUS[accelerator]
    for name, g in GPUS.items():
        if name in accelerator or accelerator.replace("nvidia-", "") in name:
            return g
    return GPU(accelerator, accelerator, 80, 3.35, 989)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    params_b: float  # billions of parameters
    layers: int
    hidden: int
    kv_bytes_per_token: int  # K and V, all layers, bf16
    context: int | None = None  # the model's own maximum context (max_position_embeddings), when known

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * 2  # bf16


_KNOWN = {
    8: ModelProfile("8B", 8.0, 32, 4096, 2 * 32 * 8 * 128 * 2),
    7: ModelProfile("7B", 7.6, 28, 3584, 2 * 28 * 4 * 128 * 2),
    13: ModelProfile("13B", 13.0, 40, 5120, 2 * 40 * 40 * 128 * 2),
    70: ModelProfile("70B", 70.6, 80, 8192, 2 * 80 * 8 * 128 * 2),
}


# The maximum context vLLM uses without --max-model-len (the model config's
# max_position_embeddings), for families whose name says it; unknown otherwise.
_CONTEXT = (
    (re.compile(r"llama-3\.[123]", re.I), 131072),
    (re.compile(r"llama-3-", re.I), 8192),
    (re.compile(r"qwen2(\.5)?-", re.I), 32768),
    (re.compile(r"mistral-7b|mixtral", re.I), 32768),
)


def native_context(model: str) -> int | None:
    return next((n for pattern, n in _CONTEXT if pattern.search(model)), None)


def model_profile(model: str) -> ModelProfile:
    """Size facts from the model name ('meta-llama/Llama-3.1-8B-Instruct' -> 8B); 8B when unknown."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", model.split("/")[-1])
    size = float(m.group(1)) if m else 8.0
    best = min(_KNOWN, key=lambda k: abs(math.log(k / size)))
    p = _KNOWN[best]
    if abs(best - size) / size < 0.15:
        return ModelProfile(model, p.params_b, p.layers, p.hidden, p.kv_bytes_per_token, native_context(model))
    scale = size / p.params_b
    return ModelProfile(model, size, p.layers, p.hidden, int(p.kv_bytes_per_token * scale**0.6), native_context(model))


# Fitted efficiencies (see module docstring).
BW_EFFICIENCY = 0.75
COMPUTE_EFFICIENCY = 0.65
STEP_OVERHEAD_S = 0.0015
TP_COMM_PER_GPU = 0.08
# Per running sequence per step: attention kernels, sampling and scheduler work that does not
# batch away; scaled by depth and inversely by compute. Fitted to the mid-load TPOT points.
SEQ_OVERHEAD_S = 50e-6  # extra time per step per additional tensor-parallel GPU (all-reduce)
GPU_MEMORY_UTILIZATION = 0.9
PREFILL_SATURATED = 0.8  # beyond this share of the time prefilling, mean_itl says nothing
MIN_KV_TOKENS = 2048  # less KV cache than this after the weights: the model does not fit
ACTIVATION_RESERVE_GB = 2.0


@dataclass(frozen=True)
class ServerProfile:
    """One vLLM replica: a model on `tp` GPUs of one type, with vLLM's scheduler limits."""

    model: ModelProfile
    gpu: GPU
    tp: int
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION  # vLLM's --gpu-memory-utilization
    # The pods' engine steps take this many times what the fitted model says: learnt from the
    # inter-token latency they report (policy.speed); 1.0 until then.
    step_scale: float = 1.0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens_at(self.gpu_memory_utilization)

    @property
    def fits(self) -> bool:
        return self.kv_capacity_tokens > MIN_KV_TOKENS

    def kv_tokens_at(self, gpu_memory_utilization: float) -> int:
        """KV cache tokens when vLLM may use this share of GPU memory (--gpu-memory-utilization)."""
        free = self.gpu.memory_gb * self.tp * gpu_memory_utilization - self.model.weight_bytes / 1e9
        free -= ACTIVATION_RESERVE_GB * self.tp
        return max(0, int(free * 1e9 / self.model.kv_bytes_per_token))

    def refuses_to_start(self, max_model_len: int | None, gpu_memory_utilization: float | None = None) -> str | None:
        """Why vLLM would refuse to start this replica, or None. vLLM checks at startup that the KV
        cache holds one sequence of the maximum length (--max-model-len, else the model's own
        context) and exits otherwise: Llama-3.1-8B on one 24 GB GPU holds some 27,000 tokens of
        its 131,072 unless --max-model-len is set."""
        tokens = self.kv_tokens_at(gpu_memory_utilization or self.gpu_memory_utilization)
        if tokens <= MIN_KV_TOKENS:
            return "the model does not fit in GPU memory"
        longest = max_model_len or self.model.context
        if longest is not None and tokens < longest:
            how = f"--max-model-len {longest:,}" if max_model_len else f"the model's {longest:,}-token context (set --max-model-len)"
            return f"its KV cache holds {tokens:,} tokens, less than {how}"
        return None

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        # Kept: the capacity model's caches are keyed by the profile, and hashing its nested
        # dataclasses field by field at every lookup was a tenth of a decision.
        return hash((self.model, self.gpu, self.tp, self.max_num_seqs, self.max_batched_tokens, self.gpu_memory_utilization,
                     self.step_scale))

    def __getstate__(self) -> dict[str, object]:
        # A string's hash differs between processes: a pickled copy computes its own.
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @functools.cached_property
    def _step_constants(self) -> tuple[float, ...]:
        # Hoisted out of step_seconds (called hundreds of thousands of times by the capacity
        # model); each is a subexpression step_seconds evaluated inline, in the same order, so
        # every step time is bit-for-bit what it was.
        bw = self.gpu.hbm_tb_s * 1e12 * BW_EFFICIENCY * self.tp
        flops = self.gpu.bf16_tflops * 1e12 * COMPUTE_EFFICIENCY * self.tp
        return (bw, flops, self.model.weight_bytes / bw, float(self.model.kv_bytes_per_token),
                2 * self.model.params_b * 1e9, 4 * self.model.layers * self.model.hidden,
                1 + TP_COMM_PER_GPU * (self.tp - 1), self.model.layers / 32, (989 / self.gpu.bf16_tflops) ** 0.5,
                STEP_OVERHEAD_S * (1 + 0.25 * (self.tp - 1)))

    def step_seconds(self, decode_seqs: int, context_tokens: float, prefill_tokens: int, prefill_ctx: float = 0.0) -> float:
        """Duration of one engine step.

        decode_seqs sequences emit one token each while reading context_tokens of KV cache in all;
        prefill_tokens prompt tokens are processed, attending to prefill_ctx tokens on average.
        """
        bw, flops, weights, kv_bytes, flops_per_token, attn_per_pair, comm, depth, speed, fixed = self._step_constants
        kv = context_tokens * kv_bytes / bw
        tokens = decode_seqs + prefill_tokens
        linear = flops_per_token * tokens / flops
        attn = attn_per_pair * prefill_tokens * prefill_ctx / flops
        # Memory reads and compute overlap: the step costs the larger of the two (written out, not
        # max/min: this runs a hundred thousand times per token mix).
        memory, compute = weights + kv, linear + attn
        body = memory + 0.15 * compute if memory >= compute else compute + 0.15 * memory
        body += decode_seqs * SEQ_OVERHEAD_S * depth * speed
        return (fixed + body * comm) * self.step_scale

    def mean_itl(self, decoding: float, context_tokens: float, prompts_per_s: float, prompt_tokens: float) -> float | None:
        """The mean inter-token latency (vLLM's histogram: _sum over _count, a mean over output
        tokens) of a replica that decodes `decoding` sequences on average over time, each holding
        `context_tokens` of KV cache, while prompts of `prompt_tokens` arrive at `prompts_per_s`; None
        when prefill would take nearly all of its time (the mean then says little about the steps).

        Weighted by tokens, the batch a token sees is larger than the time average by about its
        variance over its mean, about one for requests that come and go at random. While it decodes,
        each step lasts T_d, and each prompt (arriving at random, so at the same rate while it
        decodes) adds E to the steps that prefill it, chunk by chunk: per second of decoding there
        are (1 - rate x E) / T_d steps, so the mean step is T_d / (1 - rate x E)."""
        b = min(float(self.max_num_seqs), decoding + 1.0)
        lo, hi = math.floor(b), math.ceil(b)
        at_lo = self._mean_step(lo, b * context_tokens, prompts_per_s, prompt_tokens)
        if hi == lo or at_lo is None:
            return at_lo
        at_hi = self._mean_step(hi, b * context_tokens, prompts_per_s, prompt_tokens)
        return None if at_hi is None else at_lo + (b - lo) * (at_hi - at_lo)

    def _mean_step(self, batch: int, decode_ctx: float, prompts_per_s: float, prompt_tokens: float) -> float | None:
        decode = self.step_seconds(batch, decode_ctx, 0)
        extra, done, length = 0.0, 0, max(0, round(prompt_tokens))
        budget = max(1, self.max_batched_tokens - batch)
        while done < length:
            take = min(budget, length - done)
            extra += self.step_seconds(batch, decode_ctx, take, done + take / 2) - decode
            done += take
        busy = prompts_per_s * extra  # of each second of decoding, the share prefill adds
        return decode / (1.0 - busy) if busy < PREFILL_SATURATED else None

    def unloaded_itl(self, context_tokens: float = 1024) -> float:
        """Inter-token latency of a single stream on an idle replica: the floor no scaling can beat."""
        return self.step_seconds(1, context_tokens, 0)

    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second one replica prefills when it does nothing else (full chunks)."""
        chunk = self.max_batched_tokens
        return chunk / self.step_seconds(0, 0, chunk, chunk / 2)

    def unloaded_ttft(self, prompt_tokens: int) -> float:
        """TTFT of one request on an idle replica (chunked prefill)."""
        t, done = 0.0, 0
        while done < prompt_tokens:
            chunk = min(self.max_batched_tokens, prompt_tokens - done)
            t += self.step_seconds(0, 0, chunk, done + chunk / 2)
            done += chunk
        return t


@functools.lru_cache(maxsize=1024)
def server_profile(model: str, accelerator: str, gpus: int,
                   gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION, step_scale: float = 1.0) -> ServerProfile:
    # Cached: every decision asks for it, and one instance keeps its hoisted step constants.
    return ServerProfile(model_profile(model), gpu_for(accelerator), gpus, gpu_memory_utilization=gpu_memory_utilization,
                         step_scale=step_scale)
