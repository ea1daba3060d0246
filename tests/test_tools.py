"""The benchmark as a tool (custom configurations, dtypes, its JSON) and `make
gpu-check` on a machine without a GPU. Nothing here times anything: the
benchmark runs for a moment on tiny shapes only to check what it writes."""

import contextlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import configs  # noqa: E402


def test_config_parses_every_field():
    config = configs.Config.parse(
        "B=5,T=40,I=24,H=48,layers=2,bidirectional,packed,proj=8,batch_first")
    assert config == configs.Config(5, 40, 24, 48, layers=2, bidirectional=True, packed=True,
                                    proj=8, batch_first=True)


@pytest.mark.parametrize("text", ["B=5,T=40,I=24", "B=5,T=40,I=24,H=0", "B=5,T=4,I=2,H=4,fast",
                                  "B=5,T=4,I=2,H=4,packed=1"])
def test_config_refuses_what_it_cannot_run(text):
    with pytest.raises(ValueError):
        configs.Config.parse(text)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_bench_runs_custom_configs_and_records_them(dtype, tmp_path):
    specs = ["B=3,T=6,I=4,H=8,layers=2,bidirectional,packed,batch_first", "B=2,T=5,I=4,H=8,proj=3"]
    args = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--dtype", dtype,
            "--threads", "1", "--min-run-time", "0.01", "--out", str(tmp_path)]
    for spec in specs:
        args += ["--config", spec]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "bench.json").read_text())
    meta = result["meta"]
    assert (meta["dtype"], meta["device"], meta["threads"], meta["torch"]) == (
        dtype, "cpu", 1, torch.__version__)
    assert meta["machine"] and "--config" in meta["command"]
    rows = result["rows"]
    assert [(r["config"], r["mode"]) for r in rows] == [
        (configs.Config.parse(s).name, mode) for s in specs
        for mode in ("forward", "forward+backward")]
    for row in rows:
        assert row["ms"]["nn.LSTM"] > 0 and row["ms"]["lstm_ext"] > 0
        assert row["speedup"] > 0 and row["gflops"] > 0 and row["flops"] > 0
        assert set(row["peak_mb"]) >= {"nn.LSTM", "lstm_ext"}
    assert (tmp_path / "bench.md").read_text().count("| B=") == 4


def fake_nvidia_smi(tmp_path) -> pathlib.Path:
    """A folder holding an nvidia-smi that lists one GPU."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-fake)'\n")
    smi.chmod(0o755)
    return smi.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_bench_decode_rows(tmp_path):
    """A decode row (hx: the state given, no gradient) has one mode, and beside
    nn.LSTM the stacked cell loop, torch.mm reading the weights once, and in
    float32 onnxruntime with the state as inputs; lstm_ext's memory counts the
    weights' layouts it keeps."""
    spec = "B=2,T=1,I=4,H=8,layers=2,hx"
    args = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--threads", "1",
            "--min-run-time", "0.01", "--out", str(tmp_path), "--config", spec]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [row] = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert (row["config"], row["mode"]) == (configs.Config.parse(spec).name, "decode")
    expected = {"nn.LSTM", "lstm_ext", "LSTMCell loop", "torch.mm, weights once", "onnxruntime"}
    assert set(row["ms"]) == expected and all(v > 0 for v in row["ms"].values())
    # Laid out in float32: W_ih and W_hh of both layers (4H = 32 columns, 4, 8,
    # 8 and 8 rows) and the two bias sums.
    laid_out = (4 + 8 + 8 + 8 + 2) * 32 * 4
    assert row["peak_mb"]["lstm_ext"] >= laid_out / 2**20
    assert "over the LSTMCell loop median" in (tmp_path / "bench.md").read_text()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_phases_profile_adds_up(dtype, tmp_path):
    """benchmarks/phases.py on a tiny layer: a table per mode for both
    implementations (nn.LSTM's from oneDNN's verbose output), and a summary
    whose parts are non-negative, Python's a part of the total; it refuses what is not one plain layer."""
    script = str(ROOT / "benchmarks" / "phases.py")
    done = subprocess.run([sys.executable, script, "--dtype", dtype, "--threads", "1",
                           "--config", "B=3,T=5,I=8,H=16"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for title in ("**lstm_ext inference**", "**lstm_ext training forward**",
                  "**lstm_ext training backward**", "**nn.LSTM inference**", "**nn.LSTM training**",
                  "| RNN primitive |", "| weight gradients |"):
        assert title in out, title
    rows = [line for line in out.splitlines() if line.startswith("| B=3 T=5 I=8 H=16 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["inference", "training"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[3:-1]]
        total, products, *parts = cells[:7]
        assert float(total) > 0 and float(products.split()[1].strip("()")) >= 0
        assert all(float(p) >= -0.05 for p in parts[:3])  # cells, waiting, layout
        assert 0 < float(parts[4]) <= float(total)  # Python: outside the kernels
    refused = subprocess.run([sys.executable, script, "--config", "B=3,T=5,I=8,H=16,packed"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert refused.returncode != 0 and "one plain layer" in refused.stderr


def test_variants_benchmark_prints_each_option(tmp_path):
    """benchmarks/variants.py on a tiny layer: one row per option, each with its
    time over plain lstm_ext and today's way's over it."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "variants.py"), "--threads",
                           "1", "--min-run-time", "0.05", "--config", "B=2,T=3,I=4,H=5"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| B=2 T=3 I=4 H=5 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["weight_drop=0.5",
                                                          "recurrent_dropout=0.5", "zoneout=0.5",
                                                          "layer_norm"]
    for row in rows:
        plain, option, over_plain, today, over_option = row.split("|")[3:8]
        assert float(plain) > 0 and float(option) > 0 and float(today) > 0
        assert float(over_plain.strip(" x")) > 0 and float(over_option.strip(" x")) > 0


def test_private_benchmark_prints_a_row_per_config(tmp_path):
    """benchmarks/private.py on a tiny classifier, padded and packed: the three
    steps' times and DPLSTM's over lstm_ext's."""
    pytest.importorskip("opacus")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "private.py"), "--threads",
                           "1", "--min-run-time", "0.05", "--config", "B=3,T=4,I=2,H=5",
                           "--config", "B=3,T=4,I=2,H=5,packed"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| B=3 T=4 I=2 H=5")]
    assert len(rows) == 2
    for row in rows:
        cells = [float(c.strip(" x")) for c in row.split("|")[2:6]]
        assert all(c > 0 for c in cells)


def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    """Both ways a machine can lack a GPU: no nvidia-smi, or one that lists a GPU torch
    cannot see."""
    # A CPU-only torch says so before it is asked for GPUs.
    for path, message in ((str(tmp_path / "empty"), "no nvidia-smi"),
                          (str(fake_nvidia_smi(tmp_path)),
                           "sees no GPU" if torch.version.cuda else "not a CUDA build")):
        start = time.monotonic()
        done = subprocess.run([sys.executable, str(ROOT / ".ci" / "gpu_check.py")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env=dict(os.environ, PATH=path, CUDA_VISIBLE_DEVICES=""))
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert time.monotonic() - start < 60
    assert not (ROOT / "gpu-check").exists() or not any((ROOT / "gpu-check").iterdir())


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / ".ci" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_gpu(monkeypatch, tmp_path):
    """torch.cuda answering as for one H100, and an nvidia-smi that lists it."""
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    for name, value in dict(is_available=lambda: True, device_count=lambda: 1,
                            get_device_capability=lambda i=0: (9, 0),
                            get_device_name=lambda i=0: "NVIDIA H100 (dry run)").items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    # Loading cuDNN is a device library call too (and aborts under AddressSanitizer).
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)


TEST_OUTCOMES = {
    "passed": (0, "12 passed in 1.0s"),
    "failed": (1, "1 failed, 11 passed in 1.0s"),
    "missing package": (2, "E   ModuleNotFoundError: No module named 'hypothesis.strategies'"),
    "missing lstm_ext": (2, "E   ModuleNotFoundError: No module named 'lstm_ext'"),
}


@pytest.mark.parametrize("outcome", TEST_OUTCOMES)
def test_gpu_check_dry_run(outcome, tmp_path, monkeypatch):
    """Everything but the device calls and the commands: the steps, their order and
    arguments, the summary, the exit status; failed tests do not stop the
    benchmarks; a test file needing a package this Python lacks is skipped, one that
    cannot import lstm_ext fails."""
    fake_gpu(monkeypatch, tmp_path)
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    commands = []

    def command(self, args, log, env=None, timeout=600):
        commands.append((args[1:], env, timeout))
        self.elapsed = 1.0
        (self.out / log).write_text("dry run\n")
        if "pytest" in args:
            return TEST_OUTCOMES[outcome]
        if "benchmarks/bench.py" in args:
            return 0, "forward: median speedup 1.50x, lowest 1.10x over 14 configs"
        if "lstm_ext.check" in args:
            return 0, "bfloat16: upcast (why)\nCUDA 0: NVIDIA H100, sm_90\nevery path passed"
        return 0, ""

    monkeypatch.setattr(gpu_check.Run, "command", command)
    with pytest.raises(SystemExit) as exit:
        gpu_check.main()
    assert exit.value.code == (0 if outcome in ("passed", "missing package") else 1)
    steps = [args[0] if args[0] != "-m" else args[-1] for args, _, _ in commands]
    assert steps == ["setup.py", ".ci/ptxas_report.py", *gpu_check.TEST_FILES,
                     "lstm_ext.check", "benchmarks/bench.py", "benchmarks/bench.py"]
    build_env = commands[0][1]
    assert build_env["LSTM_EXT_CUDA"] == "1" and build_env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert "--force" in commands[0][0] and commands[1][0][-1] == "sm_90"
    benches = [args for args, _, _ in commands[-2:]]
    assert [a[a.index("--dtype") + 1] for a in benches] == gpu_check.BENCH_DTYPES
    assert all(a[a.index("--device") + 1] == "cuda" for a in benches)
    out = next((tmp_path / "gpu-check").iterdir())
    summary = (out / "summary.md").read_text()
    assert "NVIDIA H100 (dry run)" in (out / "environment.md").read_text()
    assert summary.index("built in place for sm_90") < summary.index("test_cuda:") \
        < summary.index("lstm_ext.check: every path passed") \
        < summary.index("benchmark float32") < summary.index("benchmark bfloat16")
    assert "bfloat16: upcast (why); CUDA 0: NVIDIA H100, sm_90" in summary
    expected = {"passed": "test_cuda: 12 passed", "failed": "test_cuda: FAILED",
                "missing package": "test_cuda: skipped, this Python has no hypothesis",
                "missing lstm_ext": "test_cuda: FAILED"}[outcome]
    assert expected in summary


def test_gpu_check_kills_a_step_at_the_end_of_the_budget(tmp_path):
    """A step still running when the check's budget runs out is killed with its
    children, whatever its own limit, and its log is kept."""
    gpu_check = load_gpu_check()
    run = gpu_check.Run(tmp_path)
    run.start -= gpu_check.BUDGET - 2  # 2 s of the budget left
    script = "import subprocess, sys; print('started', flush=True); " \
             "subprocess.run(['sleep', '60'])"
    start = time.monotonic()
    status, output = run.command([sys.executable, "-c", script], "step.log", timeout=600)
    assert status == -1 and time.monotonic() - start < 20
    assert "started" in output and "timed out" in (tmp_path / "step.log").read_text()


def test_cuda_benchmark_dry_run(monkeypatch):
    """bench.run's CUDA branch on CPU tensors, with torch.cuda's streams, graphs and
    memory counters faked: the CUDA graph is warmed up on a side stream and captured
    without grad, the column and the memory figures come out."""
    import bench
    import measure

    events = []
    state = {"stream": False, "capture": False}

    class Stream:
        def wait_stream(self, other):
            events.append("wait")

    @contextlib.contextmanager
    def flag(name):
        state[name] = True
        yield
        state[name] = False

    class Graph:
        def replay(self):
            events.append("replay")

    fakes = dict(Stream=Stream, current_stream=Stream, stream=lambda s: flag("stream"),
                 CUDAGraph=Graph, graph=lambda g: flag("capture"), synchronize=lambda: None,
                 memory_allocated=lambda: 100, max_memory_allocated=lambda: 100 + 2**20,
                 reset_peak_memory_stats=lambda: None)
    for name, value in fakes.items():
        monkeypatch.setattr(torch.cuda, name, value)
    for name in ("models", "inputs"):
        real = getattr(measure, name)
        monkeypatch.setattr(measure, name,
                            lambda c, dtype, device, real=real: real(c, dtype, "cpu"))
    real_mm = measure.mm_flops_per_second
    monkeypatch.setattr(measure, "mm_flops_per_second",
                        lambda c, rows, dtype, device, t: real_mm(c, rows, dtype, "cpu", t))
    real_graph = measure.cuda_graph_forward_fn

    def graph_fn(model, x):
        model.register_forward_hook(lambda *_: events.append(
            ("forward", state["stream"], state["capture"], torch.is_grad_enabled())))
        return real_graph(model, x)

    monkeypatch.setattr(measure, "cuda_graph_forward_fn", graph_fn)
    setting = bench.Setting(torch.float32, "cuda", 1, 0.01, pathlib.Path("."))
    rows = bench.run(configs.Config(2, 5, 4, 8, packed=True), setting, [])
    forwards = [e for e in events if isinstance(e, tuple)]
    assert forwards[:4] == [("forward", True, False, False)] * 3 + [("forward", False, True, False)]
    assert "replay" in events
    assert "lstm_ext CUDA graph" in rows[0]["ms"] and "lstm_ext CUDA graph" not in rows[1]["ms"]
    # The faked allocator's MB, and the layouts of W_ih (4 x 32), W_hh (8 x 32)
    # and the bias sum (32) kept in float32.
    assert rows[0]["peak_mb"]["lstm_ext"] == 1.0 + (4 + 8 + 1) * 32 * 4 / 2**20
