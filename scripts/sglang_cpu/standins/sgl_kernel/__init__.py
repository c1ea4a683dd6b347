"""Import-only stand-in for `sgl_kernel` (SGLang's CUDA kernel package, PyPI `sglang-kernel`).

What it fakes: the module and all its attributes and submodules, so that SGLang 0.5.23's server
imports on a CPU machine. Every function raises `StandinCalled` if called.

Why: with `SGLANG_USE_CPU_ENGINE=1` the KV memory pool imports
`sgl_kernel.copy_all_layer_kv_cache_cpu` at module level (`kernels/ops/kvcache/cache_move.py`), and
other modules import kernels the same way. SGLang's wheel pins `sglang-kernel==0.4.10`, a CUDA
build; its CPU build must be compiled from source for Intel AMX, which this machine (AMD EPYC) does
not have. With the flags scripts/sglang_cpu_server.sh passes (`--device cpu --attention-backend
torch_native --sampling-backend pytorch`, no CUDA graphs) none of these functions is called: the
attention, sampling and KV writes run in plain torch. A call would raise here, so the server tests
would fail instead of computing something wrong.
"""

from _standin import make_package

make_package(__name__, "0.0.0+agentflow.standin")
