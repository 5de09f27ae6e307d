from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_UNSPECIFIED: _ClassVar[Endpoint]
    CHAT: _ClassVar[Endpoint]
    COMPLETIONS: _ClassVar[Endpoint]
    TOKENIZE: _ClassVar[Endpoint]
    DETOKENIZE: _ClassVar[Endpoint]
    EMBEDDINGS: _ClassVar[Endpoint]

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SSE: _ClassVar[Format]
    PROTO: _ClassVar[Format]
ENDPOINT_UNSPECIFIED: Endpoint
CHAT: Endpoint
COMPLETIONS: Endpoint
TOKENIZE: Endpoint
DETOKENIZE: Endpoint
EMBEDDINGS: Endpoint
SSE: Format
PROTO: Format

class Resume(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class OpenAIRequest(_message.Message):
    __slots__ = ("request_id", "endpoint", "body", "format", "resume")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    endpoint: Endpoint
    body: bytes
    format: Format
    resume: Resume
    def __init__(self, request_id: _Optional[str] = ..., endpoint: _Optional[_Union[Endpoint, str]] = ..., body: _Optional[bytes] = ..., format: _Optional[_Union[Format, str]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ...) -> None: ...

class OpenAIChunk(_message.Message):
    __slots__ = ("data", "status", "token_ids", "text", "resumable", "tool_call", "finish_reason", "prompt_tokens", "completion_tokens", "cached_prompt_tokens")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    status: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    resumable: bool
    tool_call: bool
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    def __init__(self, data: _Optional[bytes] = ..., status: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., resumable: _Optional[bool] = ..., tool_call: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class LoadStreamRequest(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("replica_id", "running", "waiting", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "timestamp", "draining", "recent_ttft_s", "kv_capacity_tokens", "prefix_stored", "prefix_removed", "prefix_reset", "prefix_block_bytes", "active_adapters", "loaded_adapters", "adapter_swaps")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RECENT_TTFT_S_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_STORED_FIELD_NUMBER: _ClassVar[int]
    PREFIX_REMOVED_FIELD_NUMBER: _ClassVar[int]
    PREFIX_RESET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    LOADED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SWAPS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    timestamp: float
    draining: bool
    recent_ttft_s: float
    kv_capacity_tokens: int
    prefix_stored: _containers.RepeatedScalarFieldContainer[int]
    prefix_removed: _containers.RepeatedScalarFieldContainer[int]
    prefix_reset: bool
    prefix_block_bytes: int
    active_adapters: _containers.RepeatedScalarFieldContainer[str]
    loaded_adapters: _containers.RepeatedScalarFieldContainer[str]
    adapter_swaps: int
    def __init__(self, replica_id: _Optional[str] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ..., timestamp: _Optional[float] = ..., draining: _Optional[bool] = ..., recent_ttft_s: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ..., prefix_stored: _Optional[_Iterable[int]] = ..., prefix_removed: _Optional[_Iterable[int]] = ..., prefix_reset: _Optional[bool] = ..., prefix_block_bytes: _Optional[int] = ..., active_adapters: _Optional[_Iterable[str]] = ..., loaded_adapters: _Optional[_Iterable[str]] = ..., adapter_swaps: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("ready", "replica_id", "model", "max_model_len", "root", "parent", "relay_port")
    READY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RELAY_PORT_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    replica_id: str
    model: str
    max_model_len: int
    root: str
    parent: str
    relay_port: int
    def __init__(self, ready: _Optional[bool] = ..., replica_id: _Optional[str] = ..., model: _Optional[str] = ..., max_model_len: _Optional[int] = ..., root: _Optional[str] = ..., parent: _Optional[str] = ..., relay_port: _Optional[int] = ...) -> None: ...
