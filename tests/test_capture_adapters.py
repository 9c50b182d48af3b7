"""Router registration, the duck-typed vLLM adapter, and the vLLM offline-EPLB stats writer."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
nn = torch.nn

import plumb  # noqa: E402
from plumb.capture import Recorder, register_router, stats_writer  # noqa: E402
from plumb.capture import registry  # noqa: E402
from plumb.capture.vllm_stats import physical_loads  # noqa: E402
from plumb.errors import InputError  # noqa: E402

HIDDEN, EXPERTS, TOP_K = 8, 6, 2


@pytest.fixture
def clean_registry():
    saved = list(registry._ADAPTERS)
    yield
    registry._ADAPTERS[:] = saved


class NamedTupleRouter(nn.Module):
    """A custom router returning a dict, to be registered by the user."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(HIDDEN, EXPERTS)
        self.n_routed = EXPERTS

    def forward(self, x):
        return {"ids": self.proj(x).topk(TOP_K, -1).indices}


class CustomMoE(nn.Module):
    def __init__(self, layers=2):
        super().__init__()
        self.blocks = nn.ModuleList(NamedTupleRouter() for _ in range(layers))

    def forward(self, x):
        return [block(x)["ids"] for block in self.blocks]


def test_register_router_by_class_with_callables(clean_registry):
    model = CustomMoE()
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="no MoE router"):
        plumb.attach(model)
    register_router(NamedTupleRouter, ids=lambda out: out["ids"],
                    num_experts=lambda module: module.n_routed)
    with plumb.profile(model) as rec:
        chosen = model(x)
    for layer, ids in enumerate(chosen):
        assert rec.window()[0, layer].tolist() == np.bincount(
            ids.reshape(-1).numpy(), minlength=EXPERTS).tolist()


def test_register_router_by_name_and_bad_registrations(clean_registry):
    register_router("NamedTupleRouter", ids=lambda out: out["ids"], num_experts="n_routed")
    assert registry.find_adapter(NamedTupleRouter()) is not None
    with pytest.raises(InputError):
        register_router(42)
    with pytest.raises(InputError):
        register_router("X", ids="indices")
    with pytest.raises(InputError):
        register_router("X", num_experts=3)
    with pytest.raises(InputError, match="lacks a callable"):
        registry.register_adapter(object())


def test_missing_expert_count_attribute_is_explained(clean_registry):
    register_router(NamedTupleRouter, ids=lambda out: out["ids"])
    with pytest.raises(InputError, match="no attribute 'num_experts'"):
        plumb.attach(CustomMoE())


# -- vLLM-style layers: only the attribute names the adapter documents --------------------

class CaptureFnRouter:
    """Like vLLM's BaseRouter: calls capture_fn with logical ids before EPLB mapping."""

    def __init__(self):
        self.capture_fn = None

    def set_capture_fn(self, fn):
        self.capture_fn = fn

    def select_experts(self, hidden_states, router_logits):
        ids = router_logits.topk(TOP_K, -1).indices.to(torch.int32)
        if self.capture_fn is not None:
            self.capture_fn(ids)
        return torch.ones_like(ids, dtype=torch.float32), ids + 100  # "physical" ids


class NewFusedMoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.top_k = TOP_K
        self.global_num_experts = EXPERTS + 2   # redundant slots included
        self.logical_num_experts = EXPERTS
        self.router = CaptureFnRouter()
        self.gate = nn.Linear(HIDDEN, EXPERTS)

    def forward(self, x):
        return self.router.select_experts(x, self.gate(x))[1]


class OldFusedMoE(nn.Module):
    def __init__(self, enable_eplb=False):
        super().__init__()
        self.top_k = TOP_K
        self.global_num_experts = EXPERTS
        self.enable_eplb = enable_eplb
        self.gate = nn.Linear(HIDDEN, EXPERTS)

    @staticmethod
    def select_experts(hidden_states, router_logits, top_k):
        ids = router_logits.topk(top_k, -1).indices
        return torch.ones_like(ids, dtype=torch.float32), ids

    def forward(self, x):
        return self.select_experts(x, self.gate(x), self.top_k)[1]


class VllmLikeModel(nn.Module):
    def __init__(self, layer_cls, layers=3):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"experts": layer_cls()})
                                    for _ in range(layers))

    def forward(self, x):
        return [layer["experts"](x) for layer in self.layers]


@pytest.mark.parametrize("layer_cls", [NewFusedMoE, OldFusedMoE])
def test_vllm_adapter_records_logical_ids_and_detaches(layer_cls):
    model = VllmLikeModel(layer_cls)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, HIDDEN, generator=gen)
    layers = [layer["experts"] for layer in model.layers]
    previous = [(vars(m).get("select_experts"), getattr(getattr(m, "router", None),
                                                        "capture_fn", None)) for m in layers]
    reference = model(x)
    handle = plumb.attach(model)
    assert handle.layer_names == [f"layers.{i}.experts" for i in range(3)]
    assert handle.model_layers == [0, 1, 2]
    hooked = model(x)
    handle.detach()
    assert all(torch.equal(a, b) for a, b in zip(reference, hooked))
    logical = [m.gate(x).topk(TOP_K, -1).indices for m in layers]
    window = handle.recorder.window()
    assert window.shape == (1, 3, EXPERTS)
    for layer, ids in enumerate(logical):
        assert window[0, layer].tolist() == np.bincount(ids.reshape(-1).numpy(),
                                                        minlength=EXPERTS).tolist()
    assert [(vars(m).get("select_experts"), getattr(getattr(m, "router", None),
                                                    "capture_fn", None))
            for m in layers] == previous


def test_vllm_adapter_chains_an_existing_capture_fn():
    model = VllmLikeModel(NewFusedMoE, layers=1)
    router = model.layers[0]["experts"].router
    seen = []
    router.set_capture_fn(seen.append)
    with plumb.profile(model) as rec:
        model(torch.randn(4, HIDDEN))
    assert len(seen) == 1 and rec.loads().sum() == 4 * TOP_K
    assert router.capture_fn == seen.append


def test_vllm_adapter_refuses_physical_ids_of_old_eplb_layers():
    model = VllmLikeModel(lambda: OldFusedMoE(enable_eplb=True), layers=2)
    with pytest.raises(InputError, match="physical slot ids"):
        plumb.attach(model)
    assert all("select_experts" not in vars(layer["experts"]) for layer in model.layers)


# -- vLLM offline-EPLB JSONL ----------------------------------------------------------------

def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def filled_recorder(num_layers=2, num_experts=4, steps=5, window=3):
    rec = Recorder(num_layers, num_experts, window=window)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for layer in range(num_layers):
            rec.record(layer, torch.randint(0, num_experts, (9, 2), generator=gen))
        rec.step()
    return rec


def test_stats_writer_identity_placement(tmp_path):
    rec = filled_recorder()
    path = tmp_path / "eplb.jsonl"
    assert stats_writer(path, rec, model="tiny", num_ranks=2) == 3
    meta, *stats = read_jsonl(path)
    assert meta == {"record_type": "eplb_load_meta", "version": 1, "model": "tiny",
                    "num_ranks": 2, "num_groups": 1, "num_nodes": 1, "num_layers": 2,
                    "num_redundant_experts": 0}
    assert [record["step"] for record in stats] == [3, 4, 5]
    assert all(record["record_type"] == "eplb_load_stats" and record["version"] == 1
               and record["p2l_map"] == [[0, 1, 2, 3]] * 2 for record in stats)
    assert [record["expert_load"] for record in stats] == rec.window().tolist()


def test_stats_writer_splits_loads_over_replicas_exactly(tmp_path):
    rec = filled_recorder()
    phy2log = np.array([[0, 1, 2, 3, 0, 0], [3, 2, 1, 0, 1, 3]])
    path = tmp_path / "eplb.jsonl"
    stats_writer(path, rec, phy2log=torch.from_numpy(phy2log), num_ranks=3)
    meta, *stats = read_jsonl(path)
    assert meta["num_redundant_experts"] == 2
    window = rec.window().numpy()
    for record, logical in zip(stats, window):
        load = np.array(record["expert_load"])
        assert record["p2l_map"] == phy2log.tolist()
        for layer in range(2):
            back = np.bincount(phy2log[layer], weights=load[layer], minlength=4)
            np.testing.assert_array_equal(back, logical[layer])
            # Replicas of one expert differ by at most one token.
            for expert in range(4):
                share = load[layer][phy2log[layer] == expert]
                assert share.max() - share.min() <= 1


def test_physical_loads_remainder_goes_to_first_replicas():
    # Expert 1 (load 7) has slots 0, 2, 3: 7 = 3 + 2 + 2, the extra token on slot 0.
    loads = physical_loads(np.array([[[2, 7]]]), np.array([[1, 0, 1, 1]]))
    assert loads.tolist() == [[[3, 2, 2, 2]]]


@st.composite
def logical_and_placement(draw):
    """Counts int64 [T, L, E] and a phy2log [L, P] holding every expert at least once."""
    steps, layers = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    experts = draw(st.integers(1, 5))
    extra = draw(st.integers(0, 6))
    rows = []
    for _ in range(layers):
        row = list(range(experts)) + draw(st.lists(st.integers(0, experts - 1), min_size=extra,
                                                   max_size=extra))
        rows.append(draw(st.permutations(row)))
    counts = draw(st.lists(st.integers(0, 10**6), min_size=steps * layers * experts,
                           max_size=steps * layers * experts))
    return (np.array(counts, dtype=np.int64).reshape(steps, layers, experts),
            np.array(rows, dtype=np.int64))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(logical_and_placement())
def test_physical_loads_split_each_expert_exactly_and_evenly(case):
    logical, phy2log = case
    loads = physical_loads(logical, phy2log)
    assert loads.shape == logical.shape[:2] + phy2log.shape[1:] and loads.dtype == np.int64
    for step in range(logical.shape[0]):
        for layer, row in enumerate(phy2log):
            back = np.bincount(row, weights=loads[step, layer], minlength=logical.shape[2])
            np.testing.assert_array_equal(back, logical[step, layer])
            for expert in range(logical.shape[2]):
                share = loads[step, layer][row == expert]
                # Non-increasing over the expert's slots in ascending order, spread <= 1.
                assert share.max() - share.min() <= 1 and np.all(np.diff(share) <= 0)


@pytest.mark.parametrize("phy2log, message", [
    (np.array([[0, 1, 2]]), r"\[L=2, P\]"),
    (np.array([[0, 1, 2, 3], [0, 1, 2, 4]]), r"outside \[0, 4\)"),
    (np.array([[0, 1, 2, 3], [0, 1, 2, 2]]), r"layer 1 has no slot for experts \[3\]"),
    (np.array([[0.0, 1, 2, 3], [0, 1, 2, 3]]), "integer"),
])
def test_stats_writer_rejects_bad_placements(tmp_path, phy2log, message):
    path = tmp_path / "eplb.jsonl"
    with pytest.raises(InputError, match=message):
        stats_writer(path, filled_recorder(), phy2log=phy2log)
    with pytest.raises(InputError, match="num_ranks"):
        stats_writer(path, filled_recorder(), num_ranks=0)
    assert not path.exists()
