from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("seq_no", "payload", "timestamp", "topic", "idempotency_key")
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    payload: bytes
    timestamp: int
    topic: str
    idempotency_key: str
    def __init__(self, seq_no: _Optional[int] = ..., payload: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., topic: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("offset", "timestamp", "duplicate")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    timestamp: int
    duplicate: bool
    def __init__(self, offset: _Optional[int] = ..., timestamp: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("replay_seq_no_start", "topic", "resume")
    REPLAY_SEQ_NO_START_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    replay_seq_no_start: int
    topic: str
    resume: Cursor
    def __init__(self, replay_seq_no_start: _Optional[int] = ..., topic: _Optional[str] = ..., resume: _Optional[_Union[Cursor, _Mapping]] = ...) -> None: ...

class Cursor(_message.Message):
    __slots__ = ("snapshot_offset", "seq_no", "timestamp", "offset", "epoch")
    SNAPSHOT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    snapshot_offset: int
    seq_no: int
    timestamp: int
    offset: int
    epoch: int
    def __init__(self, snapshot_offset: _Optional[int] = ..., seq_no: _Optional[int] = ..., timestamp: _Optional[int] = ..., offset: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("seq_no", "payload", "timestamp", "offset")
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    seq_no: int
    payload: bytes
    timestamp: int
    offset: int
    def __init__(self, seq_no: _Optional[int] = ..., payload: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class CreateTopicRequest(_message.Message):
    __slots__ = ("name", "retention_max_age_seconds", "retention_max_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MAX_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    retention_max_age_seconds: int
    retention_max_bytes: int
    def __init__(self, name: _Optional[str] = ..., retention_max_age_seconds: _Optional[int] = ..., retention_max_bytes: _Optional[int] = ...) -> None: ...

class DeleteTopicRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteTopicResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTopicsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTopicsResponse(_message.Message):
    __slots__ = ("topics",)
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[TopicInfo]
    def __init__(self, topics: _Optional[_Iterable[_Union[TopicInfo, _Mapping]]] = ...) -> None: ...

class TopicInfo(_message.Message):
    __slots__ = ("name", "epoch", "frames", "bytes", "first_offset", "next_offset", "min_seq_no", "max_seq_no", "subscribers", "segments", "subscriber_max_lag_frames")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_MAX_LAG_FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    epoch: int
    frames: int
    bytes: int
    first_offset: int
    next_offset: int
    min_seq_no: int
    max_seq_no: int
    subscribers: int
    segments: int
    subscriber_max_lag_frames: int
    def __init__(self, name: _Optional[str] = ..., epoch: _Optional[int] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., first_offset: _Optional[int] = ..., next_offset: _Optional[int] = ..., min_seq_no: _Optional[int] = ..., max_seq_no: _Optional[int] = ..., subscribers: _Optional[int] = ..., segments: _Optional[int] = ..., subscriber_max_lag_frames: _Optional[int] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("topic", "from_seq_no", "limit", "reverse", "after")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    topic: str
    from_seq_no: int
    limit: int
    reverse: bool
    after: str
    def __init__(self, topic: _Optional[str] = ..., from_seq_no: _Optional[int] = ..., limit: _Optional[int] = ..., reverse: _Optional[bool] = ..., after: _Optional[str] = ...) -> None: ...

class HistoryPage(_message.Message):
    __slots__ = ("frames", "next", "more", "snapshot_offset", "epoch")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    next: str
    more: bool
    snapshot_offset: int
    epoch: int
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., next: _Optional[str] = ..., more: _Optional[bool] = ..., snapshot_offset: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class BroadcastRequest(_message.Message):
    __slots__ = ("topics", "seq_no", "payload", "timestamp", "idempotency_key")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    SEQ_NO_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    seq_no: int
    payload: bytes
    timestamp: int
    idempotency_key: str
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., seq_no: _Optional[int] = ..., payload: _Optional[bytes] = ..., timestamp: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class BroadcastAck(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[TopicAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[TopicAck, _Mapping]]] = ...) -> None: ...

class TopicAck(_message.Message):
    __slots__ = ("topic", "ack")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    topic: str
    ack: PublishAck
    def __init__(self, topic: _Optional[str] = ..., ack: _Optional[_Union[PublishAck, _Mapping]] = ...) -> None: ...

class ClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("term", "leader", "nodes")
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    term: int
    leader: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, term: _Optional[int] = ..., leader: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("id", "address", "http_address", "leader", "in_sync", "online", "topics")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    http_address: str
    leader: bool
    in_sync: bool
    online: bool
    topics: _containers.RepeatedCompositeFieldContainer[TopicPosition]
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., http_address: _Optional[str] = ..., leader: _Optional[bool] = ..., in_sync: _Optional[bool] = ..., online: _Optional[bool] = ..., topics: _Optional[_Iterable[_Union[TopicPosition, _Mapping]]] = ...) -> None: ...

class TopicPosition(_message.Message):
    __slots__ = ("topic", "next_offset", "commit_offset")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMMIT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    topic: str
    next_offset: int
    commit_offset: int
    def __init__(self, topic: _Optional[str] = ..., next_offset: _Optional[int] = ..., commit_offset: _Optional[int] = ...) -> None: ...

class ClusterEvent(_message.Message):
    __slots__ = ("kind", "node_id", "cluster")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ClusterEvent.Kind]
        NODE_ONLINE: _ClassVar[ClusterEvent.Kind]
        NODE_OFFLINE: _ClassVar[ClusterEvent.Kind]
        LEADER_CHANGED: _ClassVar[ClusterEvent.Kind]
    KIND_UNSPECIFIED: ClusterEvent.Kind
    NODE_ONLINE: ClusterEvent.Kind
    NODE_OFFLINE: ClusterEvent.Kind
    LEADER_CHANGED: ClusterEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    kind: ClusterEvent.Kind
    node_id: str
    cluster: ClusterInfo
    def __init__(self, kind: _Optional[_Union[ClusterEvent.Kind, str]] = ..., node_id: _Optional[str] = ..., cluster: _Optional[_Union[ClusterInfo, _Mapping]] = ...) -> None: ...
