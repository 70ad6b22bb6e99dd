"""Time and peak memory of three hidden-state losses, forward + backward, side by side in one run.

    feature  linear_cka: the feature-space form, O(n·d²), no n × n matrix (the training loss)
    gram     gram_cka(kernel="linear", dtype=float32): the Gram form, O(n²·d), n × n matrices
    mse      projected_mse_loss with a HiddenProjection (TinyBERT), gradient into student and projection

For each token count n and teacher width d_t (student width d_t // 2) the three cases run one after
another, each in a fresh subprocess with one torch thread (see --threads). Time is the median wall time
of up to --repeats timed runs after one warm-up run; a case whose warm-up alone exceeds --budget_s
reports that single run ('1w'). Peak memory is the growth of the process's maximum resident set size
(ru_maxrss) over the warm-up run, from a baseline taken after the inputs exist and a tiny warm-up has
loaded the kernels: it counts every allocation the loss makes (centred copies, Gram matrices,
gradients), as the OS sees it.

    .venv/bin/python benchmarks/bench_cka.py            # full grid
    .venv/bin/python benchmarks/bench_cka.py --quick    # n in {1k, 4k}, 1 timed run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from ckadistill.losses import HiddenProjection, gram_cka, linear_cka, projected_mse_loss
from machine import cpu_model

METHODS = ("feature", "gram", "mse")


# ----------------------------------------------------------------------------- one case (worker process)


def make_step(method: str, n: int, d_t: int):
    """Inputs for one case and a closure running forward + backward once."""
    g = torch.Generator().manual_seed(0)
    d_s = d_t // 2
    x = torch.randn(n, d_s, generator=g).requires_grad_(True)  # student rows
    y = torch.randn(n, d_t, generator=g)  # teacher rows, no gradient (computed under no_grad in training)
    projection = HiddenProjection(d_s, d_t)

    def step() -> None:
        x.grad = None
        projection.zero_grad(set_to_none=True)
        if method == "feature":
            loss = 1.0 - linear_cka(x, y)
        elif method == "gram":
            loss = 1.0 - gram_cka(x, y, dtype=torch.float32)
        else:
            loss = projected_mse_loss(x, y, projection)
        loss.backward()

    return step


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(method: str, n: int, d_t: int, repeats: int, budget_s: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    make_step(method, 64, d_t)()  # load kernels and libraries before the baseline
    step = make_step(method, n, d_t)
    baseline = max_rss_bytes()
    start = time.perf_counter()
    step()  # warm-up run; it also sets the memory high-water mark
    warm_s = time.perf_counter() - start
    peak_delta = max_rss_bytes() - baseline
    if warm_s >= budget_s:  # one run already fills the budget: report it rather than repeat it
        return {"time_s": warm_s, "runs": "1w", "peak_bytes": peak_delta}
    runs = max(1, min(repeats, int(budget_s // max(warm_s, 1e-9))))  # cap repeats for slow cases
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "runs": runs, "peak_bytes": peak_delta}


# ----------------------------------------------------------------------------- driver


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_in_subprocess(method: str, n: int, d_t: int, args: argparse.Namespace) -> dict:
    """One case in a fresh interpreter, so its ru_maxrss starts clean; a failure becomes a marked row."""
    gram_bytes = 4 * n * n  # one n × n fp32 matrix
    if method == "gram" and n > args.max_gram_n:
        return {"mark": f"not run: n > --max_gram_n {args.max_gram_n}"}
    if method == "gram" and 6 * gram_bytes > 0.8 * mem_available_bytes():
        return {"mark": f"not run: ~{6 * gram_bytes / 2**30:.0f} GiB needed"}
    worker_args = [method, n, d_t, args.repeats, args.budget_s, args.threads]
    cmd = [sys.executable, __file__, "--worker", *map(str, worker_args)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"mark": f"timed out after {args.case_timeout_s:.0f} s"}
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or [""])[-1][:80]
        return {"mark": f"failed (exit {done.returncode}: {last_line})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt_time(case: dict) -> str:
    return case["mark"] if "mark" in case else f"{1e3 * case['time_s']:.1f}"


def fmt_mem(case: dict) -> str:
    return "—" if "mark" in case else f"{case['peak_bytes'] / 2**20:.0f}"


def ratio(case: dict, base: dict, key: str) -> str:
    if "mark" in case or "mark" in base or base[key] <= 0:
        return "—"
    return f"{case[key] / base[key]:.1f}×"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1024,4096,16384", help="Token counts n, comma-separated.")
    parser.add_argument(
        "--widths", default="384,768,1024", help="Teacher widths d_t; the student has d_t // 2."
    )
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per case after the warm-up.")
    parser.add_argument(
        "--budget_s", type=float, default=10.0, help="Cap timed runs at budget / warm-up time."
    )
    parser.add_argument("--max_gram_n", type=int, default=16384, help="Largest n for the Gram form.")
    parser.add_argument(
        "--case_timeout_s", type=float, default=300.0, help="Kill and mark a case after this."
    )
    parser.add_argument("--quick", action="store_true", help="n in {1k, 4k}, 1 timed run, Gram up to 4k.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per case; 1 by default because on a shared machine a busy core stalls "
        "every multi-threaded kernel (30x slowdowns seen on 2 shared cores)",
    )
    parser.add_argument("--worker", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        method, n, d_t, repeats, budget_s, threads = args.worker
        print(json.dumps(run_case(method, int(n), int(d_t), int(repeats), float(budget_s), int(threads))))
        return 0
    if args.quick:
        args.sizes, args.repeats, args.max_gram_n = "1024,4096", 1, 4096
    sizes = [int(s) for s in args.sizes.split(",")]
    widths = [int(w) for w in args.widths.split(",")]

    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})")
    print(
        f"- torch {torch.__version__}, {args.threads} thread(s) per case, Python {platform.python_version()}"
    )
    print(
        f"- forward + backward, fp32; median of up to {args.repeats} timed runs after 1 warm-up "
        f"(fewer when slow, see 'runs'; '1w': the warm-up alone exceeded --budget_s {args.budget_s:g} s "
        "and is the time reported); "
        "memory = growth of max RSS during the warm-up run, each case in a fresh process"
    )
    print()
    print(
        "| n | d_s → d_t | feature ms | Gram ms | MSE ms | Gram/feature time | MSE/feature time "
        "| feature MiB | Gram MiB | MSE MiB | Gram/feature mem | MSE/feature mem | runs (f/G/M) |"
    )
    print("|" + "---|" * 13)
    started = time.perf_counter()
    for n in sizes:
        for d_t in widths:
            cases = {m: run_in_subprocess(m, n, d_t, args) for m in METHODS}
            f, g, m = cases["feature"], cases["gram"], cases["mse"]
            runs = "/".join(str(c.get("runs", "—")) for c in (f, g, m))
            print(
                f"| {n} | {d_t // 2} → {d_t} | {fmt_time(f)} | {fmt_time(g)} | {fmt_time(m)} "
                f"| {ratio(g, f, 'time_s')} | {ratio(m, f, 'time_s')} "
                f"| {fmt_mem(f)} | {fmt_mem(g)} | {fmt_mem(m)} "
                f"| {ratio(g, f, 'peak_bytes')} | {ratio(m, f, 'peak_bytes')} | {runs} |",
                flush=True,
            )
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
