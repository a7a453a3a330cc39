"""Plain value types returned by the client (no gRPC type is needed to use it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Ack",
    "Frame",
    "HistoryPage",
    "TopicInfo",
    "Cursor",
    "ClusterInfo",
    "NodeInfo",
    "TopicPosition",
]


@dataclass(frozen=True, slots=True)
class Ack:
    """The acknowledgement of a published frame.

    Attributes:
        offset: The frame's offset in its topic (0, 1, 2, ... in commit order).
        timestamp: The stored timestamp, nanoseconds since the Unix epoch.
        duplicate: True when the server had already stored this frame (the idempotency key
            was seen before: a retry of a publish whose first ack was lost). The offset and
            timestamp are then those of the first ack.
    """

    offset: int
    timestamp: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """A delivered frame.

    Attributes:
        seq_no: The client-chosen sequence number (the primary replay sort key).
        payload: The frame's bytes.
        timestamp: The stored timestamp, nanoseconds since the Unix epoch.
        offset: The frame's offset in its topic.
        live: False for history (offset below the subscription's snapshot point ``S``),
            True for frames committed after the subscription started (``offset >= S``).
    """

    seq_no: int
    payload: bytes
    timestamp: int
    offset: int
    live: bool

    @property
    def order_key(self) -> tuple[int, int, int]:
        """``(seq_no, timestamp, offset)``: the order replayed history is sorted by."""
        return (self.seq_no, self.timestamp, self.offset)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a topic's history (``Client.history``). The pages of one walk never
    overlap and never skip.

    Attributes:
        frames: The page's frames, in order-key order (descending when read ``reverse``);
            ``live`` is False for all of them.
        next: The token for the following page (``after=``); always set by the server, it
            leads somewhere only while ``more``.
        more: Whether more frames follow this page.
        snapshot_offset: The snapshot point ``S`` the walk reads below, fixed by its first
            page: frames published during the walk are not in it.
        epoch: The topic's epoch.
    """

    frames: tuple[Frame, ...]
    next: str
    more: bool
    snapshot_offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as the server describes it.

    Attributes:
        name: The topic name.
        epoch: Random non-zero number chosen at creation; a re-created topic has a new one.
        frames: Frames stored.
        bytes: Size of the stored records (headers included).
        first_offset: Oldest retained offset.
        next_offset: The offset the next frame will get.
        min_seq_no: Smallest stored ``seq_no`` (0 when empty).
        max_seq_no: Largest stored ``seq_no`` (0 when empty).
        subscribers: Open subscriber streams.
        segments: Segment files.
    """

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


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a subscription stands: what a resume sends to continue it exactly.

    Attributes:
        snapshot_offset: The snapshot point ``S`` the subscription was given.
        epoch: The topic epoch the subscription was given.
        seq_no: ``seq_no`` of the last frame received (0 if none yet).
        timestamp: Timestamp of the last frame received (0 if none yet: the server then
            restarts the same snapshot from its beginning).
        offset: Offset of the last frame received (0 if none yet).
    """

    snapshot_offset: int
    epoch: int
    seq_no: int = 0
    timestamp: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class TopicPosition:
    """How far one node holds one topic.

    Attributes:
        topic: The topic name.
        next_offset: The offset the node's next frame of the topic will get (frames it
            stores: ``0 .. next_offset``).
        commit_offset: The commit point: the node delivers frames below it (those durable
            on every in-sync member, which no failover can take back).
    """

    topic: str
    next_offset: int
    commit_offset: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of a cluster, as the node that answered :meth:`framecast.Client.cluster`
    sees it.

    Attributes:
        id: The node's id (``--node-id``; ``"standalone"`` for a server without a cluster).
        address: The gRPC address (``HOST:PORT``) clients reach it at (``--advertise``).
        http_address: Its HTTP door (``http://HOST:PORT``), or ``""`` when it has none.
        leader: It is the leader: the one node that accepts writes.
        in_sync: It is in the in-sync set (a publish is acknowledged once durable on every
            member).
        online: It is registered in the cluster (alive, as far as etcd knows).
        topics: Its position in each topic the caller may see.
    """

    id: str
    address: str
    http_address: str
    leader: bool
    in_sync: bool
    online: bool
    topics: tuple[TopicPosition, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A cluster as one of its nodes sees it (the ``Cluster`` call). A server without a
    cluster answers as a cluster of one: term 0, itself the leader.

    Attributes:
        term: The leader key's revision in etcd (0 for a single node); it grows with every
            new leader.
        leader: The leader's gRPC address (``HOST:PORT``), ``""`` while there is none.
        nodes: Every node the answering node knows of, itself included.
    """

    term: int
    leader: str
    nodes: tuple[NodeInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """One change of a cluster, as :meth:`framecast.Client.watch_cluster` yields it.

    Attributes:
        kind: ``"NODE_ONLINE"``, ``"NODE_OFFLINE"`` or ``"LEADER_CHANGED"``.
        node_id: The node the change is about (``""`` for a leader change with no leader).
        cluster: The whole cluster after the change.
    """

    kind: str
    node_id: str
    cluster: ClusterInfo
