"""The benchmark's outputs: a markdown table, a JSON file, a speedup plot."""

from __future__ import annotations

import json
import pathlib
import statistics


def markdown(rows: list[dict]) -> str:
    """One line per row; beside nn.LSTM and lstm_ext, a column for each other
    implementation some row timed (the cell loop, onnxruntime, a CUDA graph)."""
    others = list(dict.fromkeys(
        n for r in rows for n in r["ms"] if n not in ("nn.LSTM", "lstm_ext")))
    lines = [
        "| config | mode | nn.LSTM ms | lstm_ext ms | speedup | "
        + "".join(f"{name} ms | " for name in others)
        + "lstm_ext GF/s | % of mm | peak MB nn.LSTM / lstm_ext |",
        "|---|---|---:|---:|---:|" + "---:|" * len(others) + "---:|---:|---:|",
    ]
    for r in rows:
        extra = "".join(f"{r['ms'][n]:.2f} | " if n in r["ms"] else "— | " for n in others)
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['ms']['nn.LSTM']:.2f} | {r['ms']['lstm_ext']:.2f} "
            f"| **{r['speedup']:.2f}x** | {extra}{r['gflops']:.0f} | {100 * r['of_mm']:.0f}% "
            f"| {r['peak_mb']['nn.LSTM']:.0f} / {r['peak_mb']['lstm_ext']:.0f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per mode, the median and the lowest speedup over the rows; for decode
    rows also against the cell loop (the lowest: the target), and our time over
    torch.mm's reading the weights once (the highest)."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        of_mode = [r for r in rows if r["mode"] == mode]
        speed = [r["speedup"] for r in of_mode]
        line = (f"{mode}: median speedup {statistics.median(speed):.2f}x, "
                f"lowest {min(speed):.2f}x over {len(speed)} configs")
        loop = [r["ms"]["LSTMCell loop"] / r["ms"]["lstm_ext"] for r in of_mode
                if "LSTMCell loop" in r["ms"]]
        if mode == "decode" and loop:
            line += (f"; over the LSTMCell loop median {statistics.median(loop):.2f}x, "
                     f"lowest {min(loop):.2f}x")
        floor = [r["ms"]["lstm_ext"] / r["ms"]["torch.mm, weights once"] for r in of_mode
                 if "torch.mm, weights once" in r["ms"]]
        if floor:
            line += (f"; time over torch.mm reading the weights once: median "
                     f"{statistics.median(floor):.2f}x, highest {max(floor):.2f}x")
        lines.append(line)
    return "\n".join(lines)


def write_json(rows: list[dict], meta: dict, path: pathlib.Path):
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def plot(rows: list[dict], path: pathlib.Path, title: str) -> bool:
    """The speedups as bars; False where matplotlib is missing or too old for it
    (a GPU machine borrowed offline may have either)."""
    try:
        _plot(rows, path, title)
    except Exception:  # noqa: BLE001  (the tables are written already)
        return False
    return True


def _plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["forward", "forward+backward"]
    configs = list(dict.fromkeys(r["config"] for r in rows if r["mode"] in modes))
    if not configs:
        raise ValueError("no forward or forward+backward rows to plot")
    width = 0.4
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(configs) + 1.5))
    for k, mode in enumerate(modes):
        speed = {r["config"]: r["speedup"] for r in rows if r["mode"] == mode}
        ys = [i + (k - 0.5) * width for i in range(len(configs))]
        bars = ax.barh(ys, [speed.get(c, 0) for c in configs], height=width, label=mode)
        ax.bar_label(bars, fmt="%.2fx", padding=2, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over torch.nn.LSTM (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
