#!/bin/bash
# The C models' own checkpoints loaded into the PyTorch modules (tests/reference/models.py):
# runs test_models_reference (which writes models_c_*.safetensors into the build folder), then
# tests/reference/check_c_checkpoint.py on them. Skipped (77) without /usr/bin/python3 + torch.
# $1: the diffusion binary (unused), $2: the source folder; runs in the build folder.
set -u
src=$2
if ! /usr/bin/python3 -c "import torch" >/dev/null 2>&1; then
    echo "skipped: /usr/bin/python3 cannot import torch"
    exit 77
fi
if [ ! -x ./test_models_reference ]; then
    echo "skipped: ./test_models_reference is not built"
    exit 77
fi
./test_models_reference >/dev/null || { echo "test_models_reference failed"; exit 1; }
/usr/bin/python3 -W ignore "$src/tests/reference/check_c_checkpoint.py" --build .
