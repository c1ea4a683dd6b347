"""Cross-agent KV reuse on the local engine: position-neutral segments, anchors, `prefill_with_reuse`.

    rope.py      offset arithmetic (rotate keys back to 0, place at any offset)
    segments.py  SegmentStore: position-neutral KV by (namespace, key)
    anchors.py   AnchorPool/AnchorBank: online deviation estimates, bounded, with fallback
    prefill.py   prefill_with_reuse: the entry point an engine calls

See docs/cross-agent-reuse.md for the method, its measured quality and its limits.
"""

from agentflow.runtime.engines.local.reuse.anchors import (
    Anchor,
    AnchorBank,
    AnchorConfig,
    AnchorPool,
    Estimate,
    Verdict,
)
from agentflow.runtime.engines.local.reuse.prefill import (
    Placement,
    ReuseConfig,
    ReusePrefill,
    SegmentOutcome,
    prefill_with_reuse,
)
from agentflow.runtime.engines.local.reuse.rope import inv_freq_of, rotate_keys
from agentflow.runtime.engines.local.reuse.segments import (
    SegmentKV,
    SegmentRef,
    SegmentStore,
    base_kv,
    cache_of_kv,
    forward,
    kv_of_cache,
    neutral_slice,
)

__all__ = ["Anchor", "AnchorBank", "AnchorConfig", "AnchorPool", "Estimate", "Placement", "ReuseConfig",
           "ReusePrefill", "SegmentKV", "SegmentOutcome", "SegmentRef", "SegmentStore", "Verdict", "base_kv",
           "cache_of_kv", "forward", "inv_freq_of", "kv_of_cache", "neutral_slice", "prefill_with_reuse",
           "rotate_keys"]
