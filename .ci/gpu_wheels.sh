#!/usr/bin/env bash
# Wheels that the GPU machine's image (Python 3.12, torch, triton, xarray, no network) lacks, for
# .ci/gpu_check.sh: the data stack (zarr, netCDF4, dask, ...) and, for the official code's rows of
# benchmarks/gpu.py, hydra-core and omegaconf. Run here, where PyPI is reachable; .whl/ is ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 netCDF4==1.7.5.1.post1 cftime==1.6.6.1 \
    google-crc32c==1.9.0 dask==2026.8.0 partd==1.4.2 locket==1.0.0 hydra-core==1.3.2 omegaconf==2.3.0
# hydra-core pins antlr4-python3-runtime 4.9.*, published as a source archive only: build it here
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl
