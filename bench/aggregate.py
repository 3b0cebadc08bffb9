"""Aggregation speed and memory: our strategies beside Flower's, from stored safetensors files to new tensors.

For each case (N sites, P float32 parameters) the script writes N updates and a global model to a temp
directory (so they sit in the page cache), then runs every method in a fresh subprocess: the median time
of a few repeats, and peak memory as the growth of the process's peak RSS (VmHWM) over its post-import baseline.
The bound is the time to read N x P x 4 bytes once: summing a preallocated tensor of that size with torch.

    .venv/bin/python bench/aggregate.py            # the full table (about 10-15 minutes)
    .venv/bin/python bench/aggregate.py --quick    # a small subset, under a minute
    .venv/bin/python bench/aggregate.py --case 20x10M

Flower's input conversion is included: files are read with safetensors' numpy loader into the NDArrays
Flower takes (and, for its FedAvg strategy, serialised into FitRes Parameters as a Flower server holds them).
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1 << 20
FULL = [(5, 1_000_000), (20, 1_000_000), (100, 1_000_000), (5, 10_000_000), (20, 10_000_000),
        (100, 10_000_000), (5, 50_000_000)]
QUICK = [(5, 1_000_000), (20, 1_000_000)]
# dp_fedavg: clipping plus Gaussian noise drawn from the OS (os.urandom + Box-Muller), the price of unpredictable noise.
OURS = ["fedavg", "dp_fedavg", "fedadam", "median", "trimmed_mean", "krum"]
FLOWER = {"fedavg": "FedAvg.aggregate_fit", "fedavg_fn": "aggregate", "median": "aggregate_median",
          "trimmed_mean": "aggregate_trimmed_avg", "krum": "aggregate_krum"}
MEMORY_LIMIT = 18 * (1 << 30)  # leave room on the 24 GiB machine
# Flower's Krum computes N^2 full-length differences; above this many element operations it takes minutes.
FLOWER_KRUM_LIMIT = 2e10


def shapes(params: int) -> dict[str, tuple[int, ...]]:
    """A model-like split of `params`: two big matrices, a bias, a small head."""
    big = params * 7 // 10 // 1000 * 1000
    rest = params - big - 1000 - 1000
    return {"l1.weight": (big // 1000, 1000), "l2.weight": (rest,), "l2.bias": (1000,), "head.weight": (1, 1000)}


def write_case(directory: Path, sites: int, params: int) -> None:
    import torch

    from consortium.federated import codec

    generator = torch.Generator().manual_seed(sites * 7 + params)
    for index in range(sites + 1):
        tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes(params).items()}
        name = "global" if index == sites else f"site{index:03d}"
        (directory / f"{name}.safetensors").write_bytes(codec.encode(tensors))
        del tensors


# --- worker side ----------------------------------------------------------------------------------


def ours(method: str, directory: Path, sites: int):
    from aggregation import privacy, strategies
    from consortium.federated import codec

    files = sorted(directory.glob("site*.safetensors"))
    weights = [100.0 + 10 * i for i in range(sites)]

    def run():
        updates = [(codec.LazyTensors(path), weight) for path, weight in zip(files, weights, strict=True)]
        if method == "fedavg":
            return strategies.fedavg(updates)
        if method in ("fedadam", "dp_fedavg"):
            current = codec.LazyTensors(directory / "global.safetensors")
            if method == "dp_fedavg":
                return privacy.dp_fedavg(current, updates, clip_norm=1.0, noise_multiplier=1.0)
            return strategies.fedadam(current, updates, {})[0]
        if method == "median":
            return strategies.median(updates)
        if method == "trimmed_mean":
            return strategies.trimmed_mean(updates, fraction=0.2)
        return strategies.krum(updates, num_byzantine=max(0, (sites - 3) // 2))
    return run


def flower(method: str, directory: Path, sites: int):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
    from flwr.server.strategy import aggregate as flower_aggregate
    from safetensors.numpy import load_file

    files = sorted(directory.glob("site*.safetensors"))
    weights = [100 + 10 * i for i in range(sites)]

    def load() -> list:
        return [(list(load_file(str(path)).values()), weight) for path, weight in zip(files, weights, strict=True)]

    def run():
        if method == "fedavg":
            status = Status(code=Code.OK, message="")
            results = [(None, FitRes(status=status, parameters=ndarrays_to_parameters(arrays), num_examples=weight,
                                     metrics={})) for arrays, weight in load()]
            parameters, _ = FedAvg().aggregate_fit(1, results, [])
            return parameters_to_ndarrays(parameters)
        if method == "fedavg_fn":
            return flower_aggregate.aggregate(load())
        if method == "median":
            return flower_aggregate.aggregate_median(load())
        if method == "trimmed_mean":
            return flower_aggregate.aggregate_trimmed_avg(load(), 0.2)
        return flower_aggregate.aggregate_krum(load(), max(0, (sites - 3) // 2), 0)
    return run


def bound(sites: int, params: int):
    import torch

    data = torch.ones(sites * params, dtype=torch.float32)
    return lambda: float(data.sum())


def high_water_mark() -> int:
    """Peak resident set of this process in bytes. VmHWM, not ru_maxrss: ru_maxrss survives exec, so a
    fresh subprocess would start from the driver's peak; VmHWM belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(spec: dict) -> dict:
    """Runs in a fresh process: time the method, report the growth of max RSS over the import baseline."""
    import torch  # noqa: F401  (imported before the baseline so the library is not counted)

    if spec["side"] == "flower":
        import flwr.server.strategy  # noqa: F401
        import safetensors.numpy  # noqa: F401
    else:
        import aggregation.strategies  # noqa: F401
    baseline = high_water_mark()
    directory, sites, params = Path(spec["dir"]), spec["sites"], spec["params"]
    if spec["side"] == "bound":
        run = bound(sites, params)
    else:
        run = (ours if spec["side"] == "ours" else flower)(spec["method"], directory, sites)
    times, started = [], time.perf_counter()
    while len(times) < spec["repeats"] and (not times or time.perf_counter() - started < spec["budget"]):
        begin = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - begin)
        del result
    peak = high_water_mark() - baseline
    return {"seconds": statistics.median(times), "peak": peak, "runs": len(times)}


# --- driver side ----------------------------------------------------------------------------------


def measure(side: str, method: str, directory: Path, sites: int, params: int, repeats: int) -> dict:
    spec = {"side": side, "method": method, "dir": str(directory), "sites": sites, "params": params,
            "repeats": repeats, "budget": 20.0}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def flower_skip(method: str, sites: int, params: int) -> str | None:
    """Why Flower's method is not run for this case, if it would exceed memory or take many minutes."""
    model = params * 4
    # Flower holds the N loaded updates, stacks them (np.asarray), and partitions a copy: ~3 N models.
    if 3 * sites * model > MEMORY_LIMIT:
        return "skipped: would need more than 18 GiB"
    if method == "krum" and sites * sites * params > FLOWER_KRUM_LIMIT:
        return f"skipped: N^2 = {sites * sites} full-length differences would take minutes"
    return None


def fmt_row(label: str, result: dict | None, bound_seconds: float, model: int) -> str:
    if result is None or "error" in result:
        return f"{label:<34}{(result or {}).get('error', '')}"
    seconds, peak = result["seconds"], result["peak"]
    return (f"{label:<34}{seconds * 1000:>10.1f} ms {seconds / bound_seconds:>8.1f}x"
            f"{peak / MB:>10.0f} MB {peak / model:>6.2f}x model")


def run_case(sites: int, params: int, repeats: int, root: Path) -> list[str]:
    directory = root / f"{sites}x{params}"
    directory.mkdir()
    write_case(directory, sites, params)
    model = params * 4
    lines = [f"\nN={sites} sites, P={params / 1e6:g}M parameters (one model = {model / MB:.0f} MB, "
             f"N models = {sites * model / MB:,.0f} MB)"]
    bound_result = measure("bound", "", directory, sites, params, max(repeats, 5))
    bound_seconds = bound_result["seconds"]
    lines.append(f"{'bound: read N x P x 4 bytes once':<34}{bound_seconds * 1000:>10.1f} ms")
    for method in OURS:
        mine = measure("ours", method, directory, sites, params, repeats)
        lines.append(fmt_row(f"ours   {method}", mine, bound_seconds, model))
        for flower_method in [m for m in FLOWER if m == method or (method == "fedavg" and m == "fedavg_fn")]:
            skip = flower_skip(flower_method, sites, params)
            label = f"flower {FLOWER[flower_method]}"
            if skip:
                lines.append(f"{label:<34}{skip}")
                continue
            theirs = measure("flower", flower_method, directory, sites, params, repeats)
            row = fmt_row(label, theirs, bound_seconds, model)
            if "seconds" in mine and "seconds" in theirs:
                row += f"   ours is {theirs['seconds'] / mine['seconds']:.1f}x faster"
            lines.append(row)
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    return lines


def parse_case(text: str) -> tuple[int, int]:
    sites, params = text.lower().split("x")
    return int(sites), int(float(params.rstrip("m")) * 1_000_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in {5, 20} at P=1M only")
    parser.add_argument("--case", action="append", type=parse_case, help="e.g. 20x10M (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    cases = args.case or (QUICK if args.quick else FULL)
    started = time.perf_counter()
    print("Aggregation from stored safetensors files (hot page cache) to new model tensors.")
    print("Time: median of up to --repeats runs; memory: peak RSS (VmHWM) growth over the post-import baseline.")
    with tempfile.TemporaryDirectory(prefix="consortium-bench-aggregate-") as root:
        for sites, params in cases:
            for line in run_case(sites, params, args.repeats, Path(root)):
                print(line, flush=True)
    print(f"\nTotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
