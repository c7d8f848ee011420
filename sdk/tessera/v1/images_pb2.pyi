from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageParams(_message.Message):
    __slots__ = ("width", "height", "steps", "guidance_scale", "image_guidance_scale", "seed", "preview")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    steps: int
    guidance_scale: float
    image_guidance_scale: float
    seed: int
    preview: bool
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., image_guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., preview: _Optional[bool] = ...) -> None: ...

class ImageRequest(_message.Message):
    __slots__ = ("model", "prompt", "params")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    params: ImageParams
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., params: _Optional[_Union[ImageParams, _Mapping]] = ...) -> None: ...

class ImageEditRequest(_message.Message):
    __slots__ = ("model", "image", "instruction", "params")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    instruction: str
    params: ImageParams
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., instruction: _Optional[str] = ..., params: _Optional[_Union[ImageParams, _Mapping]] = ...) -> None: ...

class ImageProgress(_message.Message):
    __slots__ = ("patches_done", "patches_total", "preview_png")
    PATCHES_DONE_FIELD_NUMBER: _ClassVar[int]
    PATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_PNG_FIELD_NUMBER: _ClassVar[int]
    patches_done: int
    patches_total: int
    preview_png: bytes
    def __init__(self, patches_done: _Optional[int] = ..., patches_total: _Optional[int] = ..., preview_png: _Optional[bytes] = ...) -> None: ...

class ImageUsage(_message.Message):
    __slots__ = ("patches", "steps", "batch_size", "generate_s", "total_s", "queue_s")
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    patches: int
    steps: int
    batch_size: int
    generate_s: float
    total_s: float
    queue_s: float
    def __init__(self, patches: _Optional[int] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., generate_s: _Optional[float] = ..., total_s: _Optional[float] = ..., queue_s: _Optional[float] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("png", "width", "height", "model", "usage", "seed")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    model: str
    usage: ImageUsage
    seed: int
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[ImageUsage, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateImageRequest(_message.Message):
    __slots__ = ("request", "idempotency_key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request: ImageRequest
    idempotency_key: str
    def __init__(self, request: _Optional[_Union[ImageRequest, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GenerateImageResponse(_message.Message):
    __slots__ = ("job_id", "event_id", "progress", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    event_id: str
    progress: ImageProgress
    result: ImageResult
    def __init__(self, job_id: _Optional[str] = ..., event_id: _Optional[str] = ..., progress: _Optional[_Union[ImageProgress, _Mapping]] = ..., result: _Optional[_Union[ImageResult, _Mapping]] = ...) -> None: ...

class EditImageRequest(_message.Message):
    __slots__ = ("request", "idempotency_key")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    request: ImageEditRequest
    idempotency_key: str
    def __init__(self, request: _Optional[_Union[ImageEditRequest, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class EditImageResponse(_message.Message):
    __slots__ = ("job_id", "event_id", "progress", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    event_id: str
    progress: ImageProgress
    result: ImageResult
    def __init__(self, job_id: _Optional[str] = ..., event_id: _Optional[str] = ..., progress: _Optional[_Union[ImageProgress, _Mapping]] = ..., result: _Optional[_Union[ImageResult, _Mapping]] = ...) -> None: ...
