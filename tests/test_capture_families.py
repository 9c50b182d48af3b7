"""Capture on tiny transformers models of every supported family.

Counts are checked independently against what the model itself did:
1. the ids the experts module of each MoE block received (read by a forward pre-hook of the
   test on ``mlp.experts``): the experts the model really ran;
2. the ids the router module returned (a separate forward hook of the test);
3. the model's routing rule recomputed from the router logits (the routers' outputs, equal to
   ``output_router_logits`` where the model returns them; top-k of logits for the
   softmax routers and GPT-OSS; sigmoid + correction bias + group-limited top-k for
   DeepSeek-V3), compared per token.
The recorder's window is smaller than the number of forwards, so the ring wraps and the
never-capped totals must still hold every count.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import plumb  # noqa: E402
from plumb.capture import find_routers  # noqa: E402
from plumb.capture.tiny_models import FAMILIES, tiny_model  # noqa: E402

VOCAB = 64
BATCHES = ((2, 7), (3, 5), (1, 1))  # two prefill-like steps and one decode-like step


def recompute_routing(family, router, logits):
    """Top-k ids [N, k] by the family's routing rule, from the router logits [N, E]."""
    logits = logits.float()
    if family != "deepseek_v3":
        # softmax is monotone, so top-k of probabilities = top-k of logits (GPT-OSS: logits
        # already include the router bias).
        return logits.topk(router.top_k, dim=-1).indices
    num_tokens, num_experts = logits.shape
    groups = router.num_group
    scores = (logits.sigmoid() + router.e_score_correction_bias).view(num_tokens, groups, -1)
    group_scores = scores.topk(2, dim=-1).values.sum(-1)
    keep = group_scores.topk(router.topk_group, dim=-1).indices
    mask = torch.zeros(num_tokens, groups, dtype=torch.bool).scatter_(1, keep, True)
    masked = scores.masked_fill(~mask.unsqueeze(-1), float("-inf")).view(num_tokens, num_experts)
    return masked.topk(router.top_k, dim=-1).indices


def hooks_of(model):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks))
            for name, m in model.named_modules()}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request):
    return request.param, tiny_model(request.param)


def test_counts_are_exactly_the_models_routing(family_model):
    family, model = family_model
    routers = find_routers(model)
    returned = {name: [] for name, _, _ in routers}
    logits = {name: [] for name, _, _ in routers}

    def spy(name, out):
        logits[name].append(out[0].clone())
        returned[name].append(out[2].clone())

    spies = [module.register_forward_hook(lambda _m, _a, out, name=name: spy(name, out))
             for name, module, _ in routers]
    # Every supported block calls self.experts(hidden_states, top_k_index, top_k_weights).
    experts = {name: model.get_submodule(name.rsplit(".", 1)[0] + ".experts")
               for name, _, _ in routers}
    consumed = {name: [] for name in experts}
    spies += [module.register_forward_pre_hook(
        lambda _m, args, name=name: consumed[name].append(args[1].clone()))
        for name, module in experts.items()]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, shape, generator=gen) for shape in BATCHES]
    window_size = len(BATCHES) - 1
    handle = plumb.attach(model, window=window_size)
    try:
        with torch.no_grad():
            outputs = [model(batch, output_router_logits=True) for batch in batches]
    finally:
        handle.detach()
        for spy in spies:
            spy.remove()
    recorder = handle.recorder
    num_experts = recorder.num_experts
    assert recorder.steps == len(BATCHES)
    per_step = np.zeros((len(BATCHES), len(routers), num_experts), dtype=np.int64)
    naive_differs = False
    for step, (batch, output) in enumerate(zip(batches, outputs)):
        # Older transformers 5.x releases leave router_logits out of some families' outputs
        # (DeepSeek-V3 in 5.17); the routers' own outputs carry the same logits.
        model_logits = getattr(output, "router_logits", None)
        for layer, (name, router, _) in enumerate(routers):
            ids = consumed[name][step]
            assert ids.shape == (batch.numel(), router.top_k)
            assert torch.equal(returned[name][step], ids), name
            per_step[step, layer] = np.bincount(ids.reshape(-1).numpy(), minlength=num_experts)
            router_logits = logits[name][step]
            if model_logits is not None:
                assert torch.equal(model_logits[layer], router_logits), name
            rule = recompute_routing(family, router, router_logits)
            assert torch.equal(rule.sort(-1).values, ids.sort(-1).values), name
            naive = router_logits.float().topk(router.top_k, -1).indices
            naive_differs |= not torch.equal(naive.sort(-1).values, ids.sort(-1).values)
    if family == "deepseek_v3":
        # The bias and group limit change the choice: re-running top-k on logits is wrong.
        assert naive_differs
    # The ring wrapped: the window is the last W steps, oldest first.
    window = recorder.window().numpy()
    np.testing.assert_array_equal(window, per_step[-window_size:])
    np.testing.assert_array_equal(recorder.loads().numpy(), window.sum(0))
    # Totals keep every step and grow past the window size (no saturation at W).
    totals = recorder.totals().numpy()
    np.testing.assert_array_equal(totals, per_step.sum(0))
    assert totals.max() > window_size


def test_detach_restores_outputs_bit_for_bit(family_model):
    _, model = family_model
    batch = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    before = hooks_of(model)
    with torch.no_grad():
        reference = model(batch).logits
        handle = plumb.attach(model)
        hooked = model(batch).logits
        assert hooks_of(model) != before
        handle.detach()
        after = model(batch).logits
    assert hooks_of(model) == before
    assert torch.equal(reference, hooked)
    assert torch.equal(reference, after)
    handle.detach()  # idempotent
    assert not handle.attached


def test_layer_numbers_come_from_module_paths():
    expected = {"qwen2_moe": [0, 2], "deepseek_v3": [1, 2], "mixtral": [0, 1, 2]}
    for family, layers in expected.items():
        with plumb.attach(tiny_model(family)) as handle:
            assert handle.model_layers == layers
            assert handle.recorder.layer_names == handle.layer_names
            assert all(name.startswith(f"model.layers.{n}.") for name, n in
                       zip(handle.layer_names, layers))


def test_profile_counts_generate_steps():
    model = tiny_model("mixtral")
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    with plumb.profile(model, window=8) as recorder:
        model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert not any(hooks for hooks in hooks_of(model).values() if hooks != (0, 0))
    window = recorder.window()
    top_k = model.config.num_experts_per_tok
    # One prefill of 2 x 5 tokens, then one token per sequence and step.
    assert recorder.steps == 4
    assert window.sum(-1).tolist() == [[10 * top_k] * 3] + [[2 * top_k] * 3] * 3


def test_attach_errors():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    with pytest.raises(plumb.errors.InputError, match="no MoE router"):
        plumb.attach(Plain())
    with pytest.raises(plumb.errors.InputError, match="torch.nn.Module"):
        plumb.attach(object())
    model = tiny_model("mixtral")
    with pytest.raises(plumb.errors.InputError, match="3 routers with 8 experts"):
        plumb.attach(model, plumb.Recorder(3, 16))
    with pytest.raises(plumb.errors.InputError, match="plumb.Recorder"):
        plumb.attach(model, recorder="nope")
    assert all(hooks == (0, 0) for hooks in hooks_of(model).values())
