#!/usr/bin/env bash
# Build `peft --features cuda` on a machine without a CUDA installation (a GPU is not needed
# to build): CUDA 13.0's compiler, headers and libraries from PyPI's wheels, and a stub of the
# driver's libcuda to link against (the real one comes with the GPU machine's driver).
#
#   scripts/build_cuda.sh [TOOLKIT_DIR]      (default .cuda; the binary: target/cuda/release/peft)
#
# With a CUDA toolkit installed, `cargo build --release --features cuda` is all it takes.
# On the GPU machine the binary needs driver 580 or newer (it loads CUDA 13.0 PTX) and
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13 and libcudart.so.13 on
# LD_LIBRARY_PATH (PyTorch's cu13 wheels carry them). CUDA_COMPUTE_CAP (default 90, Hopper)
# is the GPU generation candle's kernels are compiled for.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.cuda}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LIB=$DIR/site/nvidia/cu13/lib
if [ ! -x "$DIR/site/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --no-deps --target "$DIR/site" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi
# The wheels ship only versioned names; the linker looks for libX.so.
for l in cudart cublas cublasLt curand nvrtc; do
  ln -sf "$(cd "$LIB" && ls | grep -E "^lib$l\.so\.[0-9]+$" | head -1)" "$LIB/lib$l.so"
done
# libcuda: a stub that defines every driver function cudarc binds, with the real soname.
if [ ! -e "$LIB/libcuda.so" ]; then
  cargo fetch -q
  SYS=$(cargo metadata -q --format-version 1 --features cuda |
    python3 -c 'import json, os, sys; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')/src/driver/sys/mod.rs
  grep -oE "fn cu[A-Za-z0-9_]+\(" "$SYS" | sort -u | sed 's/fn \(.*\)(/void \1(void) {}/' >"$DIR/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIB/libcuda.so" "$DIR/cuda_stub.c"
fi
export PATH=$DIR/site/nvidia/cu13/bin:$PATH CUDA_HOME=$DIR/site/nvidia/cu13 LIBRARY_PATH=$LIB
export CUDA_PATH=$CUDA_HOME CUDA_ROOT=$CUDA_HOME CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda
echo "built target/cuda/release/peft"
