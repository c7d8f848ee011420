from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CountTokensRequest(_message.Message):
    __slots__ = ("model", "prompt", "raw_prompt")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    raw_prompt: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., raw_prompt: _Optional[bool] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("prompt_tokens",)
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ...) -> None: ...

class GenerateTextRequest(_message.Message):
    __slots__ = ("job_id", "model", "prompt", "max_tokens", "temperature", "top_p", "seed", "block_size", "tau_add", "tau_act", "tau_conf", "skip_tokens", "raw_prompt")
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
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
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
    raw_prompt: bool
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., block_size: _Optional[int] = ..., tau_add: _Optional[float] = ..., tau_act: _Optional[float] = ..., tau_conf: _Optional[float] = ..., skip_tokens: _Optional[int] = ..., raw_prompt: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("name", "method", "max_positions", "default_max_tokens", "max_tokens_limit", "prompt_overhead_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_OVERHEAD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: str
    max_positions: int
    default_max_tokens: int
    max_tokens_limit: int
    prompt_overhead_tokens: int
    def __init__(self, name: _Optional[str] = ..., method: _Optional[str] = ..., max_positions: _Optional[int] = ..., default_max_tokens: _Optional[int] = ..., max_tokens_limit: _Optional[int] = ..., prompt_overhead_tokens: _Optional[int] = ...) -> None: ...

class DescribeTextResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[TextModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[TextModelInfo, _Mapping]]] = ...) -> None: ...

class ImageSampling(_message.Message):
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

class ImageStep(_message.Message):
    __slots__ = ("patches_done", "patches_total", "preview_png")
    PATCHES_DONE_FIELD_NUMBER: _ClassVar[int]
    PATCHES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_PNG_FIELD_NUMBER: _ClassVar[int]
    patches_done: int
    patches_total: int
    preview_png: bytes
    def __init__(self, patches_done: _Optional[int] = ..., patches_total: _Optional[int] = ..., preview_png: _Optional[bytes] = ...) -> None: ...

class ImageOutput(_message.Message):
    __slots__ = ("png", "width", "height", "model", "batch_size", "generate_s", "steps", "seed")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATE_S_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    model: str
    batch_size: int
    generate_s: float
    steps: int
    seed: int
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model: _Optional[str] = ..., batch_size: _Optional[int] = ..., generate_s: _Optional[float] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateImageRequest(_message.Message):
    __slots__ = ("job_id", "model", "prompt", "sampling")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    prompt: str
    sampling: ImageSampling
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[ImageSampling, _Mapping]] = ...) -> None: ...

class GenerateImageResponse(_message.Message):
    __slots__ = ("step", "output")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    step: ImageStep
    output: ImageOutput
    def __init__(self, step: _Optional[_Union[ImageStep, _Mapping]] = ..., output: _Optional[_Union[ImageOutput, _Mapping]] = ...) -> None: ...

class EditImageRequest(_message.Message):
    __slots__ = ("job_id", "model", "image", "instruction", "sampling")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    image: bytes
    instruction: str
    sampling: ImageSampling
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[bytes] = ..., instruction: _Optional[str] = ..., sampling: _Optional[_Union[ImageSampling, _Mapping]] = ...) -> None: ...

class EditImageResponse(_message.Message):
    __slots__ = ("step", "output")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    step: ImageStep
    output: ImageOutput
    def __init__(self, step: _Optional[_Union[ImageStep, _Mapping]] = ..., output: _Optional[_Union[ImageOutput, _Mapping]] = ...) -> None: ...

class UnderstandRequest(_message.Message):
    __slots__ = ("job_id", "model", "image", "question", "max_tokens", "skip_tokens")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SKIP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    image: bytes
    question: str
    max_tokens: int
    skip_tokens: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[bytes] = ..., question: _Optional[str] = ..., max_tokens: _Optional[int] = ..., skip_tokens: _Optional[int] = ...) -> None: ...

class UnderstandResponse(_message.Message):
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

class CancelCallRequest(_message.Message):
    __slots__ = ("call_id", "job_id")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    job_id: str
    def __init__(self, call_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CancelCallResponse(_message.Message):
    __slots__ = ("cancelled_here",)
    CANCELLED_HERE_FIELD_NUMBER: _ClassVar[int]
    cancelled_here: bool
    def __init__(self, cancelled_here: _Optional[bool] = ...) -> None: ...
