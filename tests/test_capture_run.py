"""``plumb run`` end to end: an unmodified script builds and runs a tiny transformers MoE model."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import plumb  # noqa: E402
from plumb.capture import Recorder  # noqa: E402
from plumb.capture.launcher import Settings, child_env, parse_interval  # noqa: E402
from plumb.errors import InputError  # noqa: E402
from plumb.io.npz import load_plumb_npz  # noqa: E402

PLUMB = str(Path(sys.executable).with_name("plumb"))

# The user's program: no plumb import anywhere. It counts what its routers return itself
# (one row per forward of the whole model) so that the test can compare exactly.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch, transformers

    stats_path, report_path = sys.argv[1], sys.argv[2]
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
        num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    routers = [m for m in model.modules() if type(m).__name__ == "MixtralTopKRouter"]
    steps, current = [], [[0] * 8 for _ in routers]

    def count(layer):
        def hook(module, args, output):
            for expert in output[2].reshape(-1).tolist():
                current[layer][expert] += 1
        return hook

    def close_step(module, args, output):
        steps.append([row[:] for row in current])
        for row in current:
            row[:] = [0] * 8

    for layer, router in enumerate(routers):
        router.register_forward_hook(count(layer))
    model.register_forward_hook(close_step)
    with torch.no_grad():
        model.generate(torch.randint(0, 64, (2, 6)), max_new_tokens=4, do_sample=False,
                       pad_token_id=0)
        model(torch.randint(0, 64, (3, 5)))
    if os.environ.get("WAIT_FOR_PERIODIC"):
        deadline = time.time() + 20
        while not os.path.exists(stats_path) and time.time() < deadline:
            time.sleep(0.05)
    report = {"steps": steps, "periodic": os.path.exists(stats_path),
              "user_sitecustomize": os.environ.get("USER_SITECUSTOMIZE_RAN"),
              "plumb_loaded": "plumb" in sys.modules}
    with open(report_path, "w") as handle:
        json.dump(report, handle)
    if os.environ.get("SLEEP_FOREVER"):
        print("ready", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    user_site = tmp_path / "user_site"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text(
        "import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = 'yes'\n")
    return tmp_path


def env_with(user_site, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(user_site)
    env.update(extra)
    return env


def test_plumb_run_writes_exact_window_and_vllm_jsonl(workdir):
    stats, report, jsonl = workdir / "stats.npz", workdir / "report.json", workdir / "e.jsonl"
    result = subprocess.run(
        [PLUMB, "run", "--out", str(stats), "--every", "100ms", "--vllm-jsonl", str(jsonl),
         "--", sys.executable, "script.py", str(stats), str(report)],
        cwd=workdir, env=env_with(workdir / "user_site", WAIT_FOR_PERIODIC="1"),
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "plumb run" not in result.stderr  # no capture warnings
    seen = json.loads(report.read_text())
    assert seen["user_sitecustomize"] == "yes"
    assert seen["plumb_loaded"] and seen["periodic"]
    expected = np.array(seen["steps"])
    assert expected.shape == (5, 3, 8)  # prefill + 3 decode forwards, then one more forward
    loaded = load_plumb_npz(stats)
    np.testing.assert_array_equal(loaded.window, expected)
    assert loaded.meta["model"] == "MixtralForCausalLM"
    assert loaded.meta["steps"] == 5 and loaded.meta["model_layers"] == [0, 1, 2]
    assert loaded.meta["layer_names"] == [f"model.layers.{i}.mlp.gate" for i in range(3)]
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines[0]["record_type"] == "eplb_load_meta" and lines[0]["num_layers"] == 3
    assert [line["expert_load"] for line in lines[1:]] == expected.tolist()
    # plumb inspect reads the stats file back: shape, steps and every routed token.
    shown = subprocess.run([PLUMB, "inspect", str(stats)], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines()[:5])
    assert (fields["layers"], fields["experts"]) == ("3", "8")
    assert fields["steps"].split()[0] == "5"
    assert int(fields["tokens"].split()[0].replace(",", "")) == expected.sum()


def test_plumb_run_writes_at_sigterm(workdir):
    stats, report = workdir / "stats.npz", workdir / "report.json"
    proc = subprocess.Popen(
        [PLUMB, "run", "--out", str(stats), "--every", "0", "--",
         sys.executable, "script.py", str(stats), str(report)],
        cwd=workdir, env=env_with(workdir / "user_site", SLEEP_FOREVER="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert not stats.exists()  # --every 0: only at exit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    expected = np.array(json.loads(report.read_text())["steps"])
    np.testing.assert_array_equal(load_plumb_npz(stats).window, expected)


def test_processes_without_torch_do_not_load_plumb(tmp_path):
    code = "import sys; print('plumb' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([PLUMB, "run", "--out", str(tmp_path / "s.npz"), "--",
                             sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
    assert not (tmp_path / "s.npz").exists()


def test_usage_errors(tmp_path):
    marker = tmp_path / "ran"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    for argv, message in ((["run"], "no command given"),
                          (["run", "--every", "soon", "--", "true"], "interval"),
                          (["run", "--window", "0", "--", "true"], "--window"),
                          (["run", "--", "no-such-command-plumb"], "command not found"),
                          # Output paths are checked before CMD starts, not at its exit.
                          (["run", "--out", tmp_path / "no-dir" / "s.npz", *command],
                           "does not exist"),
                          (["run", "--out", tmp_path, *command], "is a directory"),
                          (["run", "--out", tmp_path / "s.npz", "--vllm-jsonl",
                            tmp_path / "no-dir" / "s.jsonl", *command], "--vllm-jsonl")):
        result = subprocess.run([PLUMB, *map(str, argv)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_session_attaches_each_model_once_and_names_their_files(tmp_path):
    """The child side in-process: the global pre-hook attaches to each model tree's root on
    its first forward, a second model gets its own file, and write() is atomic per model."""
    import torch

    from plumb.capture.launcher import Session
    from plumb.capture.tiny_models import tiny_model

    session = Session(Settings(tmp_path / "s.npz", 0.0, 4, tmp_path / "e.jsonl"))
    models = [tiny_model("mixtral"), tiny_model("olmoe"), torch.nn.Linear(2, 2)]
    probe = torch.nn.modules.module.register_module_forward_pre_hook(session.on_forward)
    try:
        with torch.no_grad():
            for _ in range(2):
                for model in models[:2]:
                    model(torch.zeros(1, 3, dtype=torch.int64))
            models[2](torch.zeros(1, 2))
        session.write()
    finally:
        probe.remove()
        for _, handle in session.models:
            handle.detach()
    assert [name for name, _ in session.models] == ["MixtralForCausalLM", "OlmoeForCausalLM"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "e.jsonl", "e.model1.jsonl", "s.model1.npz", "s.npz"]
    for path, experts, top_k in ((tmp_path / "s.npz", 8, 2), (tmp_path / "s.model1.npz", 16, 4)):
        stats = load_plumb_npz(path)
        # Two forwards of 3 tokens each, every layer: the root stepped once per forward.
        assert stats.window.shape == (2, 3, experts)
        assert stats.window.sum(-1).tolist() == [[3 * top_k] * 3] * 2


def test_settings_and_environment(tmp_path):
    assert [parse_interval(t) for t in ("2s", "500ms", "1.5m", "1h", "3", "0")] == \
        [2.0, 0.5, 90.0, 3600.0, 3.0, 0.0]
    with pytest.raises(InputError):
        parse_interval("-1s")
    with pytest.raises(InputError, match="finite"):
        parse_interval("1e999s")
    with pytest.raises(InputError, match=r"--window must be in \[1, 2147483647\]"):
        Settings(Path("s.npz"), 1.0, 2 ** 70).validate()
    # The child reads back what the parent accepted: repr() writes exponents.
    for every in (1e-05, 1e16, 0.25):
        env = child_env(Settings(Path("s.npz"), every, 4), {})
        assert Settings.from_env(env).every == every
    settings = Settings(Path("rel.npz"), 2.0, 16, Path("e.jsonl"))
    env = child_env(settings, {"PYTHONPATH": "/mine", "PATH": "/bin"})
    assert env["PYTHONPATH"].endswith(os.pathsep + "/mine")
    assert Settings.from_env(env) == Settings(Path("rel.npz").absolute(), 2.0, 16,
                                              Path("e.jsonl").absolute())
    assert Settings.from_env({}) is None


def test_a_window_that_does_not_fit_is_refused_whole():
    from plumb.capture.tiny_models import tiny_model

    recorder = Recorder(2, 8, window=2 ** 62)
    for _ in range(2):  # refused the same way again: no half-built buffers
        with pytest.raises(InputError, match="Recorder buffers do not fit"):
            recorder.record(0, torch.tensor([[0, 1]]))
    assert recorder.device is None
    # attach(device=...) allocates at once, so a plumb run session reports it when it
    # attaches instead of raising inside the user's forward.
    with pytest.raises(InputError, match="do not fit"):
        plumb.attach(tiny_model("mixtral", num_layers=1), window=2 ** 62, device="cpu")
