"""The ONNX exports in ONNX Runtime: compressed against dense, file sizes, latency and memory.

    python benchmarks/bench_onnx.py [--threads 2] [--repeats 50]

For the demo model (recipes/demo.yaml) and AlexNet-10 at 224x224 (recipes/alexnet-10.yaml:
FC6 ttn, FC7 mera, three convs ttn), a compressed file is written with adntn's own save
(``plan.compress_`` + ``io.save_compressed``; the weights are random: size, speed and memory do
not depend on their values), then exported by the CLI, ``adntn export --onnx`` and
``--onnx-weights dense``. Each ONNX file then runs in a fresh process for each of two ONNX
Runtime settings:

- ``default``: ORT's full graph optimisation, constant folding included;
- ``no-folding``: the same with the ConstantFolding optimiser disabled.

Per run: the session's load time, the largest initializer of the graph ORT optimised (saved with
``optimized_model_filepath``: whether it folded the generation subgraph into a weight), the peak
resident memory of the process over one without a session, and p50 / p90 latency at batch 1 and
8 after warm-up, with ``intra_op_num_threads`` stated. Writes benchmarks/results/onnx.json and
.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
MODELS = {"demo": ("demo_vgg", "demo.yaml", 32), "alexnet-10": ("alexnet", "alexnet-10.yaml", 224)}
MODES = ("default", "no-folding")
BATCHES = (1, 8)
WARMUP = 5


def _rss_mb() -> float:
    """The peak resident set of this process so far, in MiB (VmHWM: unlike ru_maxrss it does not
    carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: Path, mode: str, threads: int, repeats: int) -> dict:
    """One session in this process: load, optimised graph, memory, latency."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    base = _rss_mb()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        disabled = ["ConstantFolding"] if mode == "no-folding" else []
        t0 = time.perf_counter()
        session = ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
        load_s = time.perf_counter() - t0
        graph = onnx.load(opts.optimized_model_filepath).graph
        largest = max((int(np.prod(t.dims)) for t in graph.initializer), default=0)
    size = session.get_inputs()[0].shape[-1]
    out = {"load_s": load_s, "optimised_largest_initializer": largest, "latency_ms": {}}
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), np.float32)
        for _ in range(WARMUP):
            session.run(None, {"images": x})
        times = []
        for _ in range(repeats if batch == 1 else max(5, repeats // 4)):
            t0 = time.perf_counter()
            session.run(None, {"images": x})
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        out["latency_ms"][batch] = {
            "p50": times[len(times) // 2],
            "p90": times[min(len(times) - 1, int(0.9 * len(times)))],
            "runs": len(times),
        }
    out["peak_rss_mb"] = _rss_mb()
    out["rss_before_session_mb"] = base
    return out


def _compressed_file(name: str, folder: Path) -> tuple[Path, dict]:
    import torch

    from adntn_cli.io import save_compressed
    from adntn_cli.layers import GeneratedLinear
    from adntn_cli.models import build_model
    from adntn_cli.plan import compress_
    from adntn_cli.recipe import load_recipe
    from adntn_cli.resolved import resolved_recipe

    arch, recipe_file, size = MODELS[name]
    recipe, _ = load_recipe(ROOT / "recipes" / recipe_file)
    torch.manual_seed(0)
    model = build_model(arch, 10)
    p = compress_(model, recipe)
    path = folder / f"{name}.safetensors"
    resolved = resolved_recipe(recipe, p)
    save_compressed(model, path, arch=arch, num_classes=10, recipe=resolved)
    layers = {}
    for lp in p.layers:
        m = model.get_submodule(lp.layer)
        schedule = "materialise"
        if isinstance(m, GeneratedLinear):  # what the export fixes (onnxfile.for_export)
            schedule = m.generator.choose_schedule(8, "cpu", weight_cached=False)
        layers[lp.layer] = f"{lp.spec.structure}, {schedule}"
    return path, {"arch": arch, "recipe": f"recipes/{recipe_file}", "input": size,
                  "layers": layers, "compressed_bytes": path.stat().st_size}  # fmt: skip


def _export(src: Path, out: Path, weights: str) -> None:
    cmd = [sys.executable, "-m", "adntn_cli", "export", str(src), "--onnx", str(out),
           "--onnx-weights", weights]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _check_copy(src: Path, out: Path) -> dict[str, float]:
    """max |logit difference| / max |logit|, ONNX Runtime on a copy in another folder against
    torch on the compressed file, at batch 1 and 8."""
    import shutil

    import numpy as np
    import onnxruntime as ort
    import torch

    from adntn_cli.io import load_compressed

    model = load_compressed(src)
    with tempfile.TemporaryDirectory() as elsewhere:
        copy = Path(elsewhere) / "copy.onnx"
        shutil.copy(out, copy)
        session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
        errors = {}
        for batch in BATCHES:
            size = session.get_inputs()[0].shape[-1]
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                want = model(x).numpy()
            (got,) = session.run(None, {"images": x.numpy()})
            errors[str(batch)] = float(np.abs(got - want).max() / np.abs(want).max())
    return errors


def _run_child(path: Path, mode: str, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--mode", mode,
           "--threads", str(threads), "--repeats", str(repeats)]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(result: dict) -> str:
    lines = [
        "# ONNX exports in ONNX Runtime: compressed against dense",
        "",
        f"Command: `{result['command']}` ({result['machine']}; onnxruntime {result['ort']}, "
        f"intra-op threads {result['threads']}, inter-op 1). Latency: median (p50) and 90th "
        f"percentile over {result['repeats']} runs at batch 1 (a quarter of that at batch 8) "
        f"after {WARMUP} warm-up runs, each file in a fresh process. Memory: the process's peak "
        "resident set with the session, less the peak before it was made.",
        "",
        "| model | export | ORT | file | largest initializer after ORT's optimisation | load s "
        "| memory MB | batch 1 p50 / p90 ms | batch 8 p50 / p90 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        for weights in ("compressed", "dense"):
            e = m["exports"][weights]
            for mode in MODES:
                r = e["runs"][mode]
                lat = r["latency_ms"]
                cells = [
                    name, weights, mode, f"{e['bytes'] / 2**20:.2f} MiB",
                    f"{r['optimised_largest_initializer']:,}", f"{r['load_s']:.2f}",
                    f"{r['peak_rss_mb'] - r['rss_before_session_mb']:.0f}",
                    f"{lat['1']['p50']:.2f} / {lat['1']['p90']:.2f}",
                    f"{lat['8']['p50']:.2f} / {lat['8']['p90']:.2f}",
                ]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Compressed against dense, per model (the same run):", ""]
    for name, m in result["models"].items():
        c, d = m["exports"]["compressed"], m["exports"]["dense"]
        lines.append(
            f"- {name} ({m['recipe']}): the compressed .onnx is {c['bytes'] / d['bytes']:.1%} of "
            f"the dense one ({c['bytes']:,} against {d['bytes']:,} bytes; the compressed "
            f".safetensors {m['compressed_bytes']:,}); max |logit error| / max |logit| of the "
            "compressed export, run from a copy in another folder, against torch: "
            + ", ".join(f"batch {b}: {v:.1e}" for b, v in c["relative_error"].items())
            + ". Layers: "
            + "; ".join(f"{k} {v}" for k, v in m["layers"].items())
            + "."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.threads, args.repeats)))
        return
    import onnxruntime
    import torch

    result = {
        "command": "python benchmarks/bench_onnx.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "ort": onnxruntime.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in MODELS:
            src, info = _compressed_file(name, folder)
            info["exports"] = {}
            for weights in ("compressed", "dense"):
                out = folder / f"{name}-{weights}.onnx"
                t0 = time.perf_counter()
                _export(src, out, weights)
                e = {"bytes": out.stat().st_size, "export_s": time.perf_counter() - t0}
                e["relative_error"] = _check_copy(src, out)
                e["runs"] = {m: _run_child(out, m, args.threads, args.repeats) for m in MODES}
                info["exports"][weights] = e
                print(name, weights, json.dumps(e["runs"]["default"]["latency_ms"]), flush=True)
            result["models"][name] = info
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "onnx.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
