from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prefix(_message.Message):
    __slots__ = ("key", "parent", "num_tokens", "namespace")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    key: str
    parent: str
    num_tokens: int
    namespace: str
    def __init__(self, key: _Optional[str] = ..., parent: _Optional[str] = ..., num_tokens: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class InputSpan(_message.Message):
    __slots__ = ("source_step", "target_offset", "num_tokens", "source_offset")
    SOURCE_STEP_FIELD_NUMBER: _ClassVar[int]
    TARGET_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    source_step: str
    target_offset: int
    num_tokens: int
    source_offset: int
    def __init__(self, source_step: _Optional[str] = ..., target_offset: _Optional[int] = ..., num_tokens: _Optional[int] = ..., source_offset: _Optional[int] = ...) -> None: ...

class ReuseHint(_message.Message):
    __slots__ = ("key", "namespace", "kind", "source_call_id", "source_step", "target_offset", "num_tokens", "source_offset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_STEP_FIELD_NUMBER: _ClassVar[int]
    TARGET_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    key: str
    namespace: str
    kind: str
    source_call_id: str
    source_step: str
    target_offset: int
    num_tokens: int
    source_offset: int
    def __init__(self, key: _Optional[str] = ..., namespace: _Optional[str] = ..., kind: _Optional[str] = ..., source_call_id: _Optional[str] = ..., source_step: _Optional[str] = ..., target_offset: _Optional[int] = ..., num_tokens: _Optional[int] = ..., source_offset: _Optional[int] = ...) -> None: ...

class WorkerLoad(_message.Message):
    __slots__ = ("kv_used_tokens", "queue_depth", "running", "pinned_tokens")
    KV_USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PINNED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    kv_used_tokens: int
    queue_depth: int
    running: int
    pinned_tokens: int
    def __init__(self, kv_used_tokens: _Optional[int] = ..., queue_depth: _Optional[int] = ..., running: _Optional[int] = ..., pinned_tokens: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "address", "engine", "kv_capacity_tokens", "host_capacity_tokens", "h2d_tokens_per_s", "prefill_tokens_per_s", "time_scale")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HOST_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    H2D_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    engine: str
    kv_capacity_tokens: int
    host_capacity_tokens: int
    h2d_tokens_per_s: float
    prefill_tokens_per_s: float
    time_scale: float
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., engine: _Optional[str] = ..., kv_capacity_tokens: _Optional[int] = ..., host_capacity_tokens: _Optional[int] = ..., h2d_tokens_per_s: _Optional[float] = ..., prefill_tokens_per_s: _Optional[float] = ..., time_scale: _Optional[float] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("info", "load")
    INFO_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    info: WorkerInfo
    load: WorkerLoad
    def __init__(self, info: _Optional[_Union[WorkerInfo, _Mapping]] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s", "scheduler_epoch")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    scheduler_epoch: str
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., scheduler_epoch: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "load")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    load: WorkerLoad
    def __init__(self, worker_id: _Optional[str] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known", "scheduler_epoch")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    known: bool
    scheduler_epoch: str
    def __init__(self, known: _Optional[bool] = ..., scheduler_epoch: _Optional[str] = ...) -> None: ...

class OpenProgramRequest(_message.Message):
    __slots__ = ("program_id", "tenant", "workflow_spec", "workflow_hash", "share_kv_across_programs")
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_SPEC_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_HASH_FIELD_NUMBER: _ClassVar[int]
    SHARE_KV_ACROSS_PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    program_id: str
    tenant: str
    workflow_spec: str
    workflow_hash: str
    share_kv_across_programs: bool
    def __init__(self, program_id: _Optional[str] = ..., tenant: _Optional[str] = ..., workflow_spec: _Optional[str] = ..., workflow_hash: _Optional[str] = ..., share_kv_across_programs: _Optional[bool] = ...) -> None: ...

class OpenProgramResponse(_message.Message):
    __slots__ = ("workflow_hash", "created")
    WORKFLOW_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    workflow_hash: str
    created: bool
    def __init__(self, workflow_hash: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class SubmitCallRequest(_message.Message):
    __slots__ = ("program_id", "call_id", "step", "prefixes", "prompt_tokens", "expected_output_tokens", "event_seq", "failed_worker", "input_spans")
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    FAILED_WORKER_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPANS_FIELD_NUMBER: _ClassVar[int]
    program_id: str
    call_id: str
    step: str
    prefixes: _containers.RepeatedCompositeFieldContainer[Prefix]
    prompt_tokens: int
    expected_output_tokens: int
    event_seq: int
    failed_worker: str
    input_spans: _containers.RepeatedCompositeFieldContainer[InputSpan]
    def __init__(self, program_id: _Optional[str] = ..., call_id: _Optional[str] = ..., step: _Optional[str] = ..., prefixes: _Optional[_Iterable[_Union[Prefix, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., expected_output_tokens: _Optional[int] = ..., event_seq: _Optional[int] = ..., failed_worker: _Optional[str] = ..., input_spans: _Optional[_Iterable[_Union[InputSpan, _Mapping]]] = ...) -> None: ...

class CallHints(_message.Message):
    __slots__ = ("priority", "session_id", "steps_to_execution", "reuse_prefixes", "reuse")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_TO_EXECUTION_FIELD_NUMBER: _ClassVar[int]
    REUSE_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    REUSE_FIELD_NUMBER: _ClassVar[int]
    priority: int
    session_id: str
    steps_to_execution: float
    reuse_prefixes: _containers.RepeatedScalarFieldContainer[str]
    reuse: _containers.RepeatedCompositeFieldContainer[ReuseHint]
    def __init__(self, priority: _Optional[int] = ..., session_id: _Optional[str] = ..., steps_to_execution: _Optional[float] = ..., reuse_prefixes: _Optional[_Iterable[str]] = ..., reuse: _Optional[_Iterable[_Union[ReuseHint, _Mapping]]] = ...) -> None: ...

class SubmitCallResponse(_message.Message):
    __slots__ = ("call_id", "worker_id", "worker_address", "route_reason", "predicted_ttft_s", "hints", "error", "error_code")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REASON_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TTFT_S_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    worker_id: str
    worker_address: str
    route_reason: str
    predicted_ttft_s: float
    hints: CallHints
    error: str
    error_code: int
    def __init__(self, call_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., worker_address: _Optional[str] = ..., route_reason: _Optional[str] = ..., predicted_ttft_s: _Optional[float] = ..., hints: _Optional[_Union[CallHints, _Mapping]] = ..., error: _Optional[str] = ..., error_code: _Optional[int] = ...) -> None: ...

class SubmitCallBatch(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[SubmitCallRequest]
    def __init__(self, calls: _Optional[_Iterable[_Union[SubmitCallRequest, _Mapping]]] = ...) -> None: ...

class SubmitCallBatchResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[SubmitCallResponse]
    def __init__(self, answers: _Optional[_Iterable[_Union[SubmitCallResponse, _Mapping]]] = ...) -> None: ...

class ReportCallRequest(_message.Message):
    __slots__ = ("call_id", "worker_id", "kind", "output_tokens", "cached", "prompt_tokens", "cached_tokens", "ttft_s", "duration_s", "error")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ReportCallRequest.Kind]
        STARTED: _ClassVar[ReportCallRequest.Kind]
        FINISHED: _ClassVar[ReportCallRequest.Kind]
        FAILED: _ClassVar[ReportCallRequest.Kind]
    KIND_UNSPECIFIED: ReportCallRequest.Kind
    STARTED: ReportCallRequest.Kind
    FINISHED: ReportCallRequest.Kind
    FAILED: ReportCallRequest.Kind
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    worker_id: str
    kind: ReportCallRequest.Kind
    output_tokens: int
    cached: _containers.RepeatedCompositeFieldContainer[Prefix]
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    duration_s: float
    error: str
    def __init__(self, call_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., kind: _Optional[_Union[ReportCallRequest.Kind, str]] = ..., output_tokens: _Optional[int] = ..., cached: _Optional[_Iterable[_Union[Prefix, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., ttft_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ReportCallResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportToolRequest(_message.Message):
    __slots__ = ("program_id", "step", "tool", "finished", "duration_s", "event_seq")
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    program_id: str
    step: str
    tool: str
    finished: bool
    duration_s: float
    event_seq: int
    def __init__(self, program_id: _Optional[str] = ..., step: _Optional[str] = ..., tool: _Optional[str] = ..., finished: _Optional[bool] = ..., duration_s: _Optional[float] = ..., event_seq: _Optional[int] = ...) -> None: ...

class ReportToolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseProgramRequest(_message.Message):
    __slots__ = ("program_id", "cancelled", "event_seq")
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    program_id: str
    cancelled: bool
    event_seq: int
    def __init__(self, program_id: _Optional[str] = ..., cancelled: _Optional[bool] = ..., event_seq: _Optional[int] = ...) -> None: ...

class CloseProgramResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDecisionsRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class Priority(_message.Message):
    __slots__ = ("prefix", "priority", "steps_to_execution")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STEPS_TO_EXECUTION_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    priority: int
    steps_to_execution: float
    def __init__(self, prefix: _Optional[str] = ..., priority: _Optional[int] = ..., steps_to_execution: _Optional[float] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("prefix", "program_id", "ttl_s", "num_tokens")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    program_id: str
    ttl_s: float
    num_tokens: int
    def __init__(self, prefix: _Optional[str] = ..., program_id: _Optional[str] = ..., ttl_s: _Optional[float] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class Unpin(_message.Message):
    __slots__ = ("prefix", "program_id", "reason")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    program_id: str
    reason: str
    def __init__(self, prefix: _Optional[str] = ..., program_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PrefetchHint(_message.Message):
    __slots__ = ("prefix", "deadline_in_s", "num_tokens")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_IN_S_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    deadline_in_s: float
    num_tokens: int
    def __init__(self, prefix: _Optional[str] = ..., deadline_in_s: _Optional[float] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class WorkerDecision(_message.Message):
    __slots__ = ("step", "priorities", "pins", "unpins", "prefetches", "admit")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    UNPINS_FIELD_NUMBER: _ClassVar[int]
    PREFETCHES_FIELD_NUMBER: _ClassVar[int]
    ADMIT_FIELD_NUMBER: _ClassVar[int]
    step: int
    priorities: _containers.RepeatedCompositeFieldContainer[Priority]
    pins: _containers.RepeatedCompositeFieldContainer[Pin]
    unpins: _containers.RepeatedCompositeFieldContainer[Unpin]
    prefetches: _containers.RepeatedCompositeFieldContainer[PrefetchHint]
    admit: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., priorities: _Optional[_Iterable[_Union[Priority, _Mapping]]] = ..., pins: _Optional[_Iterable[_Union[Pin, _Mapping]]] = ..., unpins: _Optional[_Iterable[_Union[Unpin, _Mapping]]] = ..., prefetches: _Optional[_Iterable[_Union[PrefetchHint, _Mapping]]] = ..., admit: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "scheduler_epoch", "open_programs", "waiting_calls", "workers", "policy", "decisions_per_s")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[HealthResponse.Status]
        SERVING: _ClassVar[HealthResponse.Status]
        DRAINING: _ClassVar[HealthResponse.Status]
    STATUS_UNSPECIFIED: HealthResponse.Status
    SERVING: HealthResponse.Status
    DRAINING: HealthResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    OPEN_PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    WAITING_CALLS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_PER_S_FIELD_NUMBER: _ClassVar[int]
    status: HealthResponse.Status
    scheduler_epoch: str
    open_programs: int
    waiting_calls: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    policy: str
    decisions_per_s: float
    def __init__(self, status: _Optional[_Union[HealthResponse.Status, str]] = ..., scheduler_epoch: _Optional[str] = ..., open_programs: _Optional[int] = ..., waiting_calls: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., policy: _Optional[str] = ..., decisions_per_s: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("call_id", "program_id", "prompt_ids", "max_new_tokens", "temperature", "top_p", "seed", "ignore_eos", "forced_output_ids", "prefixes", "namespace", "hints", "reuse_namespace")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    FORCED_OUTPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HINTS_FIELD_NUMBER: _ClassVar[int]
    REUSE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    program_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    ignore_eos: bool
    forced_output_ids: _containers.RepeatedScalarFieldContainer[int]
    prefixes: _containers.RepeatedCompositeFieldContainer[Prefix]
    namespace: str
    hints: CallHints
    reuse_namespace: str
    def __init__(self, call_id: _Optional[str] = ..., program_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., forced_output_ids: _Optional[_Iterable[int]] = ..., prefixes: _Optional[_Iterable[_Union[Prefix, _Mapping]]] = ..., namespace: _Optional[str] = ..., hints: _Optional[_Union[CallHints, _Mapping]] = ..., reuse_namespace: _Optional[str] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("output_ids", "text", "prompt_tokens", "cached_tokens", "host_tokens", "queued_s", "ttft_s", "duration_s", "finish_reason", "cached", "reused_tokens")
    OUTPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HOST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    output_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    prompt_tokens: int
    cached_tokens: int
    host_tokens: int
    queued_s: float
    ttft_s: float
    duration_s: float
    finish_reason: str
    cached: _containers.RepeatedCompositeFieldContainer[Prefix]
    reused_tokens: int
    def __init__(self, output_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., host_tokens: _Optional[int] = ..., queued_s: _Optional[float] = ..., ttft_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., finish_reason: _Optional[str] = ..., cached: _Optional[_Iterable[_Union[Prefix, _Mapping]]] = ..., reused_tokens: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("chunk", "result")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    chunk: TokenChunk
    result: GenerateResult
    def __init__(self, chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., result: _Optional[_Union[GenerateResult, _Mapping]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class ApplyHintsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStateResponse(_message.Message):
    __slots__ = ("info", "load", "cached_prefixes")
    INFO_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CACHED_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    info: WorkerInfo
    load: WorkerLoad
    cached_prefixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, info: _Optional[_Union[WorkerInfo, _Mapping]] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ..., cached_prefixes: _Optional[_Iterable[str]] = ...) -> None: ...
