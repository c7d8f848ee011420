from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateTextRequest(_message.Message):
    __slots__ = ("job_id", "model", "prompt", "max_tokens", "temperature", "top_p", "seed", "block_size", "tau_add", "tau_act", "tau_conf", "skip_tokens")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAU_ADD_FIELD_NUMBER: _ClassVar[int]
    TAU_ACT_FIELD_NUMBER: _ClassVar[int]
    TAU_CONF_FIELD_NUMBER: _ClassVar[int]
    SKIP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    block_size: int
    tau_add: float
    tau_act: float
    tau_conf: float
    skip_tokens: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., block_size: _Optional[int] = ..., tau_add: _Optional[float] = ..., tau_act: _Optional[float] = ..., tau_conf: _Optional[float] = ..., skip_tokens: _Optional[int] = ...) -> None: ...

class GenerateTextResponse(_message.Message):
    __slots__ = ("text", "token_count", "forward_passes", "finished", "finish_reason", "prompt_tokens", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    forward_passes: int
    finished: bool
    finish_reason: str
    prompt_tokens: int
    model: str
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ..., forward_passes: _Optional[int] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class DescribeTextRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TextModelInfo(_message.Message):
    __slots__ = ("name", "method", "max_positions", "default_max_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: str
    max_positions: int
    default_max_tokens: int
    def __init__(self, name: _Optional[str] = ..., method: _Optional[str] = ..., max_positions: _Optional[int] = ..., default_max_tokens: _Optional[int] = ...) -> None: ...

class DescribeTextResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[TextModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[TextModelInfo, _Mapping]]] = ...) -> None: ...
