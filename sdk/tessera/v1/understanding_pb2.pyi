from tessera.v1 import common_pb2 as _common_pb2
from tessera.v1 import text_pb2 as _text_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UnderstandingRequest(_message.Message):
    __slots__ = ("model", "image", "question", "max_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    question: str
    max_tokens: int
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., question: _Optional[str] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class UnderstandingResult(_message.Message):
    __slots__ = ("text", "finish_reason", "usage", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: _common_pb2.FinishReason
    usage: _text_pb2.TextUsage
    model: str
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_text_pb2.TextUsage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class UnderstandRequest(_message.Message):
    __slots__ = ("request", "idempotency_key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request: UnderstandingRequest
    idempotency_key: str
    def __init__(self, request: _Optional[_Union[UnderstandingRequest, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class UnderstandResponse(_message.Message):
    __slots__ = ("job_id", "event_id", "chunk", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    event_id: str
    chunk: _text_pb2.TextChunk
    result: UnderstandingResult
    def __init__(self, job_id: _Optional[str] = ..., event_id: _Optional[str] = ..., chunk: _Optional[_Union[_text_pb2.TextChunk, _Mapping]] = ..., result: _Optional[_Union[UnderstandingResult, _Mapping]] = ...) -> None: ...
