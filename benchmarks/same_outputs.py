"""Do two commits write the same files? Train, roll out (deterministic and ensemble) and score.

Each tree (this one and `--ref`, extracted with `git archive`) runs the real CLI in a fresh
process on the bundled samples: a short training run, a deterministic rollout and an ensemble
rollout with `--step-noise` and `--recentre` from the same checkpoint (the reference's, so the
rollouts see identical weights), then `evaluate` of both stores. Every array of every Zarr store
is compared bit for bit (NaN where NaN), attributes except the ones that name paths or times,
checkpoint tensors bit for bit, and score JSON exactly. Prints a table and writes JSON.

    python benchmarks/same_outputs.py --ref 9c5b518
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from compare_commits import extract

REPO = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).parent / "results" / "same_outputs.json"
SAMPLE = REPO / "sample_data" / "navier_stokes_16x16.nc"
VOLATILE = ("checkpoint", "created", "path", "sha256", "version", "elapsed", "seconds", "host")


def cli(tree: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minconv_cli", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed in {tree}:\n{done.stderr[-3000:]}")


def run_tree(tree: Path, work: Path, checkpoint: Path | None) -> dict[str, Path]:
    """Train, roll out and evaluate with `tree`'s package in `work`.

    With `checkpoint`, the trained weights are set aside and the rollouts use a copy of
    `checkpoint` in their place, so both trees roll out the same weights from the same path."""
    run = work / "run"
    cli(
        tree,
        "train",
        str(SAMPLE),
        "--out",
        str(run),
        "--model",
        "minconvgru",
        "--width",
        "8",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--quiet",
    )
    ckpt = run / "model.pt"
    if checkpoint is not None:
        shutil.copy(ckpt, work / "trained.pt")
        shutil.copy(checkpoint, ckpt)
    det, ens = work / "det.zarr", work / "ens.zarr"
    common = [str(ckpt), str(SAMPLE), "--steps", "6", "--subset", "split=test", "--quiet"]
    cli(tree, "rollout", *common, "--out", str(det))
    cli(tree, "rollout", *common, "--out", str(work / "bf16.zarr"), "--precision", "bf16")
    cli(
        tree,
        "rollout",
        *common,
        "--out",
        str(ens),
        "--members",
        "4",
        "--step-noise",
        "0.05",
        "--recentre",
        "--perturbation",
        "0.01",
        "--seed",
        "7",
    )
    cli(tree, "evaluate", str(det), str(SAMPLE), "--out", str(work / "det_scores"), "--quiet")
    cli(tree, "evaluate", str(ens), str(SAMPLE), "--out", str(work / "ens_scores"), "--quiet")
    return {
        "model": work / "trained.pt" if checkpoint is not None else ckpt,
        "det": det,
        "ens": ens,
        "bf16": work / "bf16.zarr",
        "det_scores": work / "det_scores",
        "ens_scores": work / "ens_scores",
    }


def _attrs(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if not any(word in k for word in VOLATILE)}


def same_store(a: Path, b: Path) -> list[str]:
    x, y = xr.open_zarr(a, decode_times=False), xr.open_zarr(b, decode_times=False)
    problems = []
    if set(x.variables) != set(y.variables):
        problems.append(f"variables differ: {sorted(set(x.variables) ^ set(y.variables))}")
    for name in set(x.variables) & set(y.variables):
        u, v = x[name].values, y[name].values
        if u.dtype != v.dtype or u.shape != v.shape:
            problems.append(f"{name}: {u.dtype}{u.shape} vs {v.dtype}{v.shape}")
        elif not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
            problems.append(f"{name}: values differ")
        if _attrs(x[name].attrs) != _attrs(y[name].attrs):
            problems.append(f"{name}: attributes differ")
    ax, ay = _attrs(x.attrs), _attrs(y.attrs)
    for key in set(ax) | set(ay):
        if key.startswith("minconv_rollout"):
            sx, sy = (json.loads(json.dumps(d.get(key), default=str)) for d in (ax, ay))
            if isinstance(sx, dict) and isinstance(sy, dict):
                sx, sy = _attrs(sx), _attrs(sy)
            if sx != sy:
                problems.append(f"attribute {key} differs")
        elif ax.get(key) != ay.get(key):
            problems.append(f"attribute {key} differs")
    return problems


def _steady(d: object) -> object:
    """`d` without the keys that name paths or times (at any depth)."""
    if isinstance(d, dict):
        return {k: _steady(v) for k, v in d.items() if not any(w in k for w in VOLATILE)}
    return d


def same_checkpoint(a: Path, b: Path) -> list[str]:
    u, v = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    x, y = u["state_dict"], v["state_dict"]
    bad = [k for k in x if k not in y or not torch.equal(x[k], y[k])]
    problems = [f"model tensors differ: {bad[:5]}"] if bad or set(x) != set(y) else []
    if _steady(json.loads(u["meta_json"])) != _steady(json.loads(v["meta_json"])):
        problems.append("meta differs")
    return problems


def same_scores(a: Path, b: Path) -> list[str]:
    problems = []
    for file in sorted(p.name for p in a.glob("*.json")):
        u, v = json.loads((a / file).read_text()), json.loads((b / file).read_text())
        for d in (u, v):
            for key in [k for k in d if any(word in k for word in VOLATILE)]:
                d.pop(key)
        if u != v:
            problems.append(f"{file} differs")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="the earlier commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work = tmp / "work"  # both trees run here in turn, so paths in the outputs agree
        outputs = run_tree(extract(args.ref, tmp / "ref_tree"), work, None)
        work.rename(tmp / "ref")
        ref = {k: tmp / "ref" / v.relative_to(work) for k, v in outputs.items()}
        new = run_tree(REPO, work, ref["model"])
        checks = {
            "trained checkpoint": same_checkpoint(ref["model"], new["model"]),
            "deterministic store": same_store(ref["det"], new["det"]),
            "ensemble store (--step-noise, --recentre)": same_store(ref["ens"], new["ens"]),
            "bf16 store (--precision bf16)": same_store(ref["bf16"], new["bf16"]),
            "deterministic scores": same_scores(ref["det_scores"], new["det_scores"]),
            "ensemble scores": same_scores(ref["ens_scores"], new["ens_scores"]),
        }
    for name, problems in checks.items():
        print(f"{name:45s} {'identical' if not problems else '; '.join(problems)}")
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({"ref": args.ref, "checks": checks}, indent=2) + "\n")
    if any(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
