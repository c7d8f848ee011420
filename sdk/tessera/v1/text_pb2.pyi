from tessera.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "block_size", "tau_add", "tau_act", "tau_conf", "raw_prompt")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAU_ADD_FIELD_NUMBER: _ClassVar[int]
    TAU_ACT_FIELD_NUMBER: _ClassVar[int]
    TAU_CONF_FIELD_NUMBER: _ClassVar[int]
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    block_size: int
    tau_add: float
    tau_act: float
    tau_conf: float
    raw_prompt: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., block_size: _Optional[int] = ..., tau_add: _Optional[float] = ..., tau_act: _Optional[float] = ..., tau_conf: _Optional[float] = ..., raw_prompt: _Optional[bool] = ...) -> None: ...

class TextRequest(_message.Message):
    __slots__ = ("model", "prompt", "params")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    params: TextParams
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., params: _Optional[_Union[TextParams, _Mapping]] = ...) -> None: ...

class TextUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "forward_passes", "tokens_per_forward", "time_to_first_chunk_s", "total_s", "queue_s")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_FORWARD_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_CHUNK_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    forward_passes: int
    tokens_per_forward: float
    time_to_first_chunk_s: float
    total_s: float
    queue_s: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., forward_passes: _Optional[int] = ..., tokens_per_forward: _Optional[float] = ..., time_to_first_chunk_s: _Optional[float] = ..., total_s: _Optional[float] = ..., queue_s: _Optional[float] = ...) -> None: ...

class TextResult(_message.Message):
    __slots__ = ("text", "finish_reason", "usage", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: _common_pb2.FinishReason
    usage: TextUsage
    model: str
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[TextUsage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request", "idempotency_key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request: TextRequest
    idempotency_key: str
    def __init__(self, request: _Optional[_Union[TextRequest, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("job_id", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    result: TextResult
    def __init__(self, job_id: _Optional[str] = ..., result: _Optional[_Union[TextResult, _Mapping]] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("request", "idempotency_key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request: TextRequest
    idempotency_key: str
    def __init__(self, request: _Optional[_Union[TextRequest, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class TextChunk(_message.Message):
    __slots__ = ("text", "token_count", "total_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    total_tokens: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("job_id", "event_id", "chunk", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    event_id: str
    chunk: TextChunk
    result: TextResult
    def __init__(self, job_id: _Optional[str] = ..., event_id: _Optional[str] = ..., chunk: _Optional[_Union[TextChunk, _Mapping]] = ..., result: _Optional[_Union[TextResult, _Mapping]] = ...) -> None: ...
