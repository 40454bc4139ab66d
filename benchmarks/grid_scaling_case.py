"""One case of benchmarks/grid_scaling.py, run in a fresh process: the training-step time and peak
memory, or the rollout speed and peak memory, of one model at one grid size, precision and
allocator setting. `measure(...)` returns a JSON-able dict; the parent prints nothing of it.

Kept free of rich/matplotlib so that the child process imports only what the case needs.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

# the paper's widths at ~175k parameters, 4 layers (benchmarks/train_step.py)
PAPER_WIDTHS = {
    "convgru": 28,
    "convlstm": 25,
    "minconvgru": 49,
    "minconvlstm": 40,
    "minconvexplstm": 40,
}
# the training step of the issue: B = 4, T = 25 (20 tf + 5 cl); grid_scaling.py --batch sets B
BATCH = int(os.environ.get("GRID_SCALING_BATCH", "4"))
CONTEXT, HORIZON = 20, 5
ROLLOUT_LEADS = 10


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """VmHWM: this process's peak RSS (ru_maxrss of a child can carry the parent's peak)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def build(name: str, grid: tuple[int, int], precision: str, allocator: bool, chunk: int = 0):
    """The model as `minconv train` builds it (norm auto, the paper width, 4 layers; `chunk`:
    its time_chunk, 0 = auto), its allocator setting applied or withheld (create_model applies
    it by itself otherwise)."""
    import torch

    from minconv_cli.core import allocator as alloc

    if not allocator:  # what a process that never calls keep_freed_memory() gets
        alloc.keep_freed_memory = lambda: False
    applied = alloc.keep_freed_memory()
    from minconv_cli.models import count_parameters, create_model

    torch.manual_seed(0)
    model = create_model(
        name,
        1,
        width=PAPER_WIDTHS[name],
        layers=4,
        grid=grid,
        padding="circular",
        norm="auto",
        time_chunk=chunk,
    )
    model.precision = precision
    return model, {"params": count_parameters(model), "allocator_applied": applied}


def train_case(model, grid: tuple[int, int], steps: int) -> dict:
    """Median wall time of `steps` training steps after one warm-up, as the trainer takes them
    (training_loss, backward, clipping, AdamW); peak RSS increase over the RSS before the first."""
    import torch

    from minconv_cli.training.config import TrainConfig
    from minconv_cli.training.steps import training_loss

    cfg = TrainConfig(context=CONTEXT, horizon=HORIZON)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    frames = CONTEXT + HORIZON + 1
    batch = {
        "x": torch.randn(BATCH, frames, 1, *grid),
        "mask": torch.ones(BATCH, frames, 1, *grid, dtype=torch.bool),
        "static": torch.zeros(BATCH, 0, *grid),
    }
    device = torch.device("cpu")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = training_loss(model, batch, CONTEXT, HORIZON, cfg, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()

    before = rss_bytes()
    step()
    times, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "step_ms": statistics.median(times) * 1000,
        "times_ms": [round(t * 1000, 1) for t in times],
        "cpu_ms": statistics.median(cpu) * 1000,  # all threads' CPU time: less load-sensitive
        "peak_mb": (peak_rss_bytes() - before) / 2**20,
    }


def rollout_case(model, grid: tuple[int, int], steps: int) -> dict:
    """As rollout's forecast loop runs a model (inference mode): the context ingested in parallel
    mode, then ROLLOUT_LEADS closed-loop steps; frames/s of the closed loop (batch frames per
    second), median over `steps` rollouts after one warm-up; peak RSS increase."""
    import torch

    x = torch.randn(BATCH, CONTEXT, 1, *grid)

    def rollout() -> tuple[float, float]:
        with torch.inference_mode():
            start = time.perf_counter()
            y, state = model(x, context=CONTEXT, return_state=True)
            mid = time.perf_counter()
            pred = y[:, -1]
            for _ in range(ROLLOUT_LEADS):
                pred, state = model.step(pred, state)
            return mid - start, time.perf_counter() - mid

    before = rss_bytes()
    rollout()
    runs = [rollout() for _ in range(steps)]
    leads_s = statistics.median(r[1] for r in runs)
    return {
        "context_ms": statistics.median(r[0] for r in runs) * 1000,
        "frames_per_s": BATCH * ROLLOUT_LEADS / leads_s,
        "peak_mb": (peak_rss_bytes() - before) / 2**20,
    }


def measure(
    mode: str,
    name: str,
    grid: tuple[int, int],
    precision: str,
    allocator: bool,
    steps: int,
    chunk: int = 0,
) -> dict:
    """One case: build, then `train_case` or `rollout_case`, with the threads it ran on."""
    import torch

    model, info = build(name, grid, precision, allocator, chunk)
    run = train_case if mode == "train" else rollout_case
    return {**info, **run(model, grid, steps), "threads": torch.get_num_threads()}
