"""Import-only stand-in for `torchvision`.

What it fakes: the package and all its attributes and submodules (`torchvision.transforms`,
`torchvision.transforms.v2`, `torchvision.io`, ...). Every function raises `StandinCalled` if called.

Why: SGLang 0.5.23 imports torchvision at module level on paths the server always loads
(`configs/...internvl_utils.py`, `configs/deepseek_ocr.py`, multimodal processors), though a text
model like SmolLM2 never uses it. PyPI has no CPU-only torchvision wheel paired with torch 2.13.0+cpu
that would not replace it, and the CUDA one pulls several GB of CUDA packages. The conformance tests
use the same stand-in in-process (tests/engines/_sglang_shims.py); this one is a package so that
every process SGLang spawns (scheduler, detokenizer) imports it too.
"""

from _standin import make_package

make_package(__name__, "0.0.0+agentflow.standin")
