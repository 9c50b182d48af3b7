"""Tiny random-weight transformers MoE models of the families capture supports.

For tests, benchmarks and smoke runs of ``plumb run``: no download, built from a config.
Needs ``transformers>=5``. DeepSeek-V3 gets a random ``e_score_correction_bias`` (zero in a
fresh model) so that its biased, group-limited choice differs from a plain top-k of logits.
"""

from __future__ import annotations

from typing import Any, Dict

from ..errors import InputError

__all__ = ["FAMILIES", "tiny_config", "tiny_model"]

# family -> (config class, family-specific fields); E and k are chosen so that grouped routing
# (DeepSeek-V3) and dense layers between MoE layers (Qwen2-MoE, DeepSeek-V3) are exercised.
FAMILIES: Dict[str, tuple] = {
    "olmoe": ("OlmoeConfig", dict(num_experts=16, num_experts_per_tok=4, eos_token_id=None)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=16, num_experts_per_tok=4,
                                         moe_intermediate_size=16,
                                         shared_expert_intermediate_size=32,
                                         mlp_only_layers=[1])),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=16, num_experts_per_tok=4,
                                         moe_intermediate_size=16, head_dim=8)),
    "deepseek_v3": ("DeepseekV3Config", dict(n_routed_experts=16, num_experts_per_tok=4,
                                             n_group=4, topk_group=2, first_k_dense_replace=1,
                                             moe_intermediate_size=16, q_lora_rank=16,
                                             kv_lora_rank=16, qk_rope_head_dim=8,
                                             qk_nope_head_dim=8, v_head_dim=8,
                                             n_shared_experts=1, num_key_value_heads=4,
                                             rope_parameters={"rope_type": "default",
                                                              "rope_theta": 10000.0})),
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8)),
}


def tiny_config(family: str, *, num_layers: int = 3, hidden_size: int = 32,
                vocab_size: int = 64, **overrides: Any) -> Any:
    """A transformers config of ``family`` (a key of FAMILIES) with tiny dimensions."""
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    import transformers

    config_name, fields = FAMILIES[family]
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256)
    kwargs.update(fields)
    if family == "gpt_oss":
        kwargs["layer_types"] = ["sliding_attention", "full_attention"] * (num_layers // 2) + \
            ["sliding_attention"] * (num_layers % 2)
    kwargs.update(overrides)
    if family == "gpt_oss" and "rope_parameters" not in overrides:
        # GPT-OSS's YaRN scaling must agree with the short context, or transformers warns.
        kwargs["rope_parameters"] = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                     "beta_slow": 1.0, "truncate": False, "rope_theta": 150000.0,
                                     "original_max_position_embeddings":
                                         max(1, kwargs["max_position_embeddings"] // 32)}
    return getattr(transformers, config_name)(**kwargs)


def tiny_model(family: str, *, seed: int = 0, **config_overrides: Any) -> Any:
    """An eval-mode ``AutoModelForCausalLM`` of ``family`` with seeded random weights."""
    import torch
    import transformers

    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if family == "deepseek_v3":
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in model.modules():
                bias = getattr(module, "e_score_correction_bias", None)
                if bias is not None:
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.05)
    return model
