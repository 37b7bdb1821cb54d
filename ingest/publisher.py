"""Publishing raw documents (and dead letters) to Kafka without losing any.

kafka-python 3.x: ``enable_idempotence=True`` (the broker de-duplicates the producer's own retries), ``acks='all'``
(every in-sync replica has the record), key = document id, UTF-8 JSON values, lz4 batches. :meth:`publish` sends a
batch, flushes, and checks every record's future: it returns only when the broker acknowledged all of them and
raises :class:`PublishError` naming the ids that were not, so a caller can answer 5xx or retry, never drop.
:meth:`send` is the same without the wait: it returns a :class:`KafkaDelivery` whose ``wait()`` does the checking, so
a caller (replay) can prepare the next batch while the broker acknowledges this one.

A record its topic would not take (key + value + framing over the producer's ``max_request_size`` or the topic's
``max.message.bytes``, read from the broker at start) is not sent: it comes back as :class:`TooLarge`, which the
pipeline turns into a ``too_large`` dead letter. Sending it could never succeed, so a caller that retried it would
retry for ever (a watched file read again on every scan, a push client answered 503), and a broker's refusal of
it makes kafka-python 3's idempotent producer fail every later send. Dead letters are cut to fit their topic.

The broker may refuse a record all the same: a topic's limit lowered after it was read, or never readable (without
the DescribeConfigs permission only the producer's own cap is known). Its refusal fails every record the producer
holds, so the batch is settled again within the same call: a new producer, the limits read again, and the failed
records sent again; a topic whose limit cannot be read takes them one at a time, so that the refusal names the
record, whose size (less one byte; half of it for the dead-letter topic, whose letters can be cut) becomes the
topic's limit while the publisher runs. The caller gets the record back as :class:`TooLarge`, as if its size had
been known.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from kafka import KafkaProducer
from kafka.codec import has_lz4, has_zstd
from kafka.errors import KafkaError

from ingest.settings import IngestSettings
from riskstream.kafka_client import client_options
from schemas.records import DeadLetter, RawDocument, fit_dead_letter
from schemas.topics import RECORD_OVERHEAD_BYTES, SIZE_REFUSALS, max_message_bytes

log = logging.getLogger(__name__)


# the smallest room a dead letter is cut to: its reason, ids and the start of the payload
DEAD_LETTER_MIN_ROOM = 1024


class PublishError(RuntimeError):
    """Some records were not acknowledged by the broker; ``failed`` maps their keys to the error."""

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = failed
        first = next(iter(failed.items()))
        super().__init__(f"{len(failed)} record(s) not acknowledged by Kafka (e.g. {first[0]}: {first[1]})")


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A record that was not sent because its topic would not take it: sending it again cannot help."""

    index: int  # its position in the batch handed to the sink
    key: str
    size: int  # key + value + framing, bytes
    limit: int
    topic: str
    learned: bool = False  # the limit was learned from the broker refusing this record on its own

    @property
    def error(self) -> str:
        if self.learned:
            return (
                f"the broker refused the record of about {self.size} bytes on its own; topic {self.topic}'s "
                f"max.message.bytes cannot be read (DescribeConfigs), so it is now held to {self.limit} bytes"
            )
        return f"the record would be about {self.size} bytes; topic {self.topic} takes at most {self.limit}"


class Sink(Protocol):
    """What the ingest pipeline needs from a publisher (the Kafka one, or a list in unit tests)."""

    def publish(self, docs: Sequence[RawDocument]) -> list[TooLarge]: ...

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class Delivery(Protocol):
    """Records handed to a producer; :meth:`wait` returns when all were acknowledged, else raises PublishError.
    It returns the records that were not sent because they are too large for their topic."""

    def wait(self) -> list[TooLarge]: ...


@runtime_checkable
class AsyncSink(Sink, Protocol):
    """A sink that can hand records over and let the caller wait later (overlap work with the broker's acks)."""

    def send(self, docs: Sequence[RawDocument]) -> Delivery: ...


class Done:
    """A delivery that already happened (sinks without a background sender)."""

    def __init__(self, too_large: Sequence[TooLarge] = ()) -> None:
        self._too_large = list(too_large)

    def wait(self) -> list[TooLarge]:
        return list(self._too_large)


class KafkaDelivery:
    """The futures of one batch of records; :meth:`wait` checks every one of them (nothing is assumed sent)."""

    def __init__(
        self,
        futures: list[tuple[int, str, bytes, Any]],
        failed: dict[str, str],
        timeout_s: float,
        too_large: list[TooLarge] | None = None,
        resend: Callable[[list[tuple[int, str, bytes]]], KafkaDelivery] | None = None,
    ) -> None:
        self._futures = futures  # (index in the batch, key, value, future)
        self._failed = failed
        self._too_large = too_large or []
        self._resend = resend
        # the producer fails a record itself after its delivery timeout (shorter than this): a bound, not a policy
        self._deadline = time.monotonic() + timeout_s

    def wait(self) -> list[TooLarge]:
        """Block until the broker answered for every record (at most the publish timeout after sending); return
        the records that were not sent for their size. A refusal for size is settled here: the failed records are
        sent again by a new producer (once), and those found too large are returned with the others."""
        pending, self._futures = self._futures, []
        refused = False
        again: list[tuple[int, str, bytes]] = []
        for index, key, value, future in pending:
            try:
                future.get(timeout=max(0.0, self._deadline - time.monotonic()))
            except SIZE_REFUSALS as exc:
                refused = True  # the broker's refusal for size: the idempotent producer is failed for good
                self._failed[key] = repr(exc)
                again.append((index, key, value))
            except KafkaError as exc:  # includes KafkaTimeoutError: not acknowledged within the timeout
                self._failed[key] = repr(exc)
                again.append((index, key, value))  # after a refusal for size, every pending record fails too
        if refused and self._resend is not None:
            retry, self._resend = self._resend(again), None
            for _, key, _ in again:
                self._failed.pop(key, None)
            try:
                self._too_large.extend(retry.wait())
            except PublishError as exc:
                self._failed.update(exc.failed)
        if self._failed:
            raise PublishError(dict(self._failed))
        return list(self._too_large)


def _compression(name: str) -> str | None:
    name = name.lower()
    if name in ("", "none"):
        return None
    if name == "lz4" and not has_lz4():
        log.warning("lz4 is not installed; falling back to gzip compression")
        return "gzip"
    if name == "zstd" and not has_zstd():
        log.warning("zstandard is not installed; falling back to gzip compression")
        return "gzip"
    return name


_MURMUR_M = np.uint32(0x5BD1E995)
_MURMUR_SEED = np.uint32(0x9747B28C)


def murmur2_many(keys: Sequence[bytes]) -> npt.NDArray[np.uint32]:
    """Kafka's murmur2 (``kafka.partitioner.default.murmur2``, the Java client's ``Utils.murmur2``) of many keys at
    once, vectorised over the keys with numpy (uint32 arithmetic wraps like the Java ints).

    The pure-Python original costs ~14 us for a 36-byte key, ~24 us for a 64-character article id, once per record;
    this is ~1 us per key in batches of hundreds. A test pins it to the original on random keys of every length.
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=n)
    width = (int(lengths.max()) // 4 + 1) * 4  # at least one zero byte of padding after every key
    joined = np.frombuffer(b"".join(keys), dtype=np.uint8)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    cols = np.arange(width, dtype=np.int64)
    inside = cols[None, :] < lengths[:, None]
    index = np.where(inside, starts[:, None] + cols[None, :], 0)
    buf = np.where(inside, joined[index] if len(joined) else 0, 0).astype(np.uint8)
    blocks = np.ascontiguousarray(buf).view("<u4").astype(np.uint32)  # (n, width / 4), little-endian words
    nblocks = lengths // 4
    h = _MURMUR_SEED ^ lengths.astype(np.uint32)
    with np.errstate(over="ignore"):
        for j in range(int(nblocks.max())):
            k = blocks[:, j] * _MURMUR_M
            k ^= k >> np.uint32(24)
            k *= _MURMUR_M
            h = np.where(nblocks > j, (h * _MURMUR_M) ^ k, h)
        rows = np.arange(n)
        tail = nblocks * 4
        extra = lengths % 4
        b0 = buf[rows, tail].astype(np.uint32)
        b1 = buf[rows, np.minimum(tail + 1, width - 1)].astype(np.uint32)
        b2 = buf[rows, np.minimum(tail + 2, width - 1)].astype(np.uint32)
        h = np.where(extra >= 3, h ^ (b2 << np.uint32(16)), h)
        h = np.where(extra >= 2, h ^ (b1 << np.uint32(8)), h)
        h = np.where(extra >= 1, (h ^ b0) * _MURMUR_M, h)
        h ^= h >> np.uint32(13)
        h *= _MURMUR_M
        h ^= h >> np.uint32(15)
    return h.astype(np.uint32)


def partitions_for_keys(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition kafka-python's (and the Java client's) default partitioner picks for each key."""
    ordered = sorted(partitions)
    positions = (murmur2_many(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(len(ordered))
    return [ordered[i] for i in positions.tolist()]


def encode(doc: RawDocument | DeadLetter) -> bytes:
    return doc.model_dump_json(exclude_none=True).encode("utf-8")


class KafkaPublisher:
    def __init__(self, settings: IngestSettings, *, client_id: str = "riskstream-ingest") -> None:
        self.topic = settings.topic_raw
        self.dlq_topic = settings.topic_dlq
        self.timeout_s = settings.publish_timeout_s + 5.0  # waits outlive the producer's own delivery timeout
        delivery_ms = max(2_000 + settings.linger_ms, int(settings.publish_timeout_s * 1000))
        self._config: dict[str, Any] = dict(
            **client_options(settings),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=settings.producer_retries,
            linger_ms=settings.linger_ms,
            batch_size=settings.batch_bytes,
            compression_type=_compression(settings.compression),
            max_in_flight_requests_per_connection=5,
            # a record is acknowledged or failed within the publish timeout (the producer retries inside it)
            delivery_timeout_ms=delivery_ms,
            request_timeout_ms=max(1000, min(30_000, delivery_ms // 2 - settings.linger_ms)),
            max_request_size=settings.max_record_bytes,
        )
        self._settings = settings
        self._producer = KafkaProducer(**self._config)
        self.limits: dict[str, int] = {}
        self._configured: set[str] = set()  # topics whose max.message.bytes was read from the broker
        self._learned: dict[str, int] = {}  # limits learned from refusals, for topics whose limit cannot be read
        self._probing: set[str] = set()  # topics that refused a record and whose limit is unknown: one at a time
        self._lock = threading.RLock()  # restarts and one-at-a-time sends (the push endpoint publishes from threads)
        self.read_limits()

    def read_limits(self) -> None:
        """Each topic's largest record: the producer's ``max_request_size``, or the topic's ``max.message.bytes``
        where that is smaller (read from the broker; without the DescribeConfigs permission only the former)."""
        cap = self._settings.max_record_bytes
        limits = {t: min(cap, self._learned.get(t, cap)) for t in (self.topic, self.dlq_topic)}
        try:
            found = max_message_bytes(self._settings, list(limits))
        except Exception as exc:  # e.g. no DescribeConfigs permission: the producer's own limit still holds
            log.warning("cannot read the topics' max.message.bytes (%s); records are held to %d bytes", exc, cap)
            found = {}
        limits.update({t: min(cap, v) for t, v in found.items()})
        self._configured = set(found)
        self.limits = limits

    def _restart(self, failed: KafkaProducer, topic: str, *, reread: bool = True) -> None:
        """The broker refused a record for its size: kafka-python's idempotent producer fails every later send then,
        so start a new one and read the limits again (once per failed producer: several batches in flight may report
        the same one). A topic whose limit cannot be read is sent to one record at a time from now on."""
        with self._lock:
            if failed is self._producer:
                log.warning("the broker refused a record for its size; starting a new producer")
                old, self._producer = self._producer, KafkaProducer(**self._config)
                try:
                    old.close(timeout=1)
                except Exception as exc:  # a failed producer may not close cleanly; it is dropped either way
                    log.debug("closing the failed producer: %s", exc)
                if reread:
                    self.read_limits()
            if topic not in self._configured:
                self._probing.add(topic)

    def _resend(self, failed: KafkaProducer, topic: str, records: list[tuple[int, str, bytes]]) -> KafkaDelivery:
        """Records failed by the broker's refusal for size, sent again (once) by a new producer under the limits
        read again: the too-large ones come back as TooLarge, the others are delivered."""
        self._restart(failed, topic)
        delivery = self._send(topic, [(k, v) for _, k, v in records], [i for i, _, _ in records], resend=False)
        with contextlib.suppress(KafkaError):
            self._producer.flush(timeout=self.timeout_s)
        return delivery

    def _send(
        self,
        topic: str,
        records: Sequence[tuple[str, bytes]],
        indices: Sequence[int] | None = None,
        *,
        resend: bool = True,
    ) -> KafkaDelivery:
        """Hand ``records`` (key, value) to the producer. ``indices`` are their positions in the caller's batch
        (default: their order here), which TooLarge reports."""
        failed: dict[str, str] = {}
        limit = self.limits.get(topic, self._settings.max_record_bytes)
        too_large: list[TooLarge] = []
        fitting: list[tuple[int, str, bytes, bytes, int]] = []  # (index, key, value, key bytes, size)
        for position, (key, value) in enumerate(records):
            index = indices[position] if indices is not None else position
            key_bytes = key.encode("utf-8")
            size = len(value) + len(key_bytes) + RECORD_OVERHEAD_BYTES
            if size > limit:
                too_large.append(TooLarge(index, key, size, limit, topic, learned=self._learned.get(topic) == limit))
            else:
                fitting.append((index, key, value, key_bytes, size))
        if topic in self._probing:
            return self._send_alone(topic, fitting, too_large)
        producer = self._producer  # a refusal reported later restarts this one, if it is still the current one
        send = producer.send
        # the default partitioner's choice, computed for the whole batch at once (its per-record murmur2 is pure
        # Python); without metadata for the topic yet, the producer picks (and waits for the metadata) itself
        chosen: list[int | None] = [None] * len(fitting)
        try:
            known = producer.partitions_for(topic) if len(fitting) > 1 else None
        except KafkaError:
            known = None
        if known:
            chosen = list(partitions_for_keys([f[3] for f in fitting], sorted(known)))
        futures: list[tuple[int, str, bytes, Any]] = []
        for (index, key, value, key_bytes, _), partition in zip(fitting, chosen, strict=True):
            try:
                futures.append((index, key, value, send(topic, key=key_bytes, value=value, partition=partition)))
            except KafkaError as exc:  # buffer full or producer closed: report, do not drop silently
                failed[key] = repr(exc)
        return KafkaDelivery(
            futures,
            failed,
            self.timeout_s,
            too_large,
            (lambda again: self._resend(producer, topic, again)) if resend else None,
        )

    def _send_alone(
        self, topic: str, fitting: list[tuple[int, str, bytes, bytes, int]], too_large: list[TooLarge]
    ) -> KafkaDelivery:
        """One record at a time, each answered before the next is sent (a topic that refused a record and whose
        limit cannot be read). A record refused on its own is too large: its size less one byte (half of it on the
        dead-letter topic) becomes the topic's limit, the failed producer is replaced, and later records are held
        to that limit. A batch answered without a refusal ends this: the next goes as one batch again."""
        failed: dict[str, str] = {}
        refused = False
        with self._lock:
            for index, key, value, key_bytes, size in fitting:
                limit = self.limits.get(topic, self._settings.max_record_bytes)
                if size > limit:  # over a limit learned from an earlier record of this batch
                    learned = self._learned.get(topic) == limit
                    too_large.append(TooLarge(index, key, size, limit, topic, learned=learned))
                    continue
                future = self._producer.send(topic, key=key_bytes, value=value)
                with contextlib.suppress(KafkaError):
                    self._producer.flush(timeout=self.timeout_s)
                try:
                    future.get(timeout=self.timeout_s)
                except SIZE_REFUSALS:
                    refused = True
                    held = size // 2 if topic == self.dlq_topic else size - 1
                    self._learned[topic] = min(self._learned.get(topic, held), held)
                    self.limits[topic] = min(limit, held)
                    log.warning(
                        "topic %s refused a record of about %d bytes on its own and its max.message.bytes cannot be "
                        "read: holding it to %d bytes while this process runs",
                        topic, size, self.limits[topic],
                    )  # fmt: skip
                    too_large.append(TooLarge(index, key, size, self.limits[topic], topic, learned=True))
                    self._restart(self._producer, topic, reread=False)
                except KafkaError as exc:
                    failed[key] = repr(exc)
            if not refused and not failed:
                self._probing.discard(topic)
        return KafkaDelivery([], failed, self.timeout_s, too_large)

    def _send_all(self, topic: str, records: Sequence[tuple[str, bytes]]) -> list[TooLarge]:
        delivery = self._send(topic, records)
        # send now (skip the linger); a flush timeout is not an answer: the futures name what was not acknowledged
        with contextlib.suppress(KafkaError):
            self._producer.flush(timeout=self.timeout_s)
        return delivery.wait()

    def publish(self, docs: Sequence[RawDocument]) -> list[TooLarge]:
        """Send and wait for the acknowledgement of every document (raises :class:`PublishError`); return the
        ones not sent because they are larger than the topic takes."""
        return self._send_all(self.topic, [(d.id, encode(d)) for d in docs]) if docs else []

    def send(self, docs: Sequence[RawDocument]) -> KafkaDelivery:
        """Hand the documents to the producer's sender thread; ``.wait()`` on the result checks their acks."""
        return self._send(self.topic, [(d.id, encode(d)) for d in docs])

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Send and wait for dead letters, each cut to fit the dead-letter topic (payload_truncated). A letter the
        topic refuses (its limit learned from the refusal, where it cannot be read) is cut again to the new limit;
        raises :class:`PublishError` if a letter cannot be cut small enough or is not acknowledged."""
        pending = list(letters)
        while pending:
            limit = self.limits.get(self.dlq_topic, self._settings.max_record_bytes)
            records = []
            for letter in pending:
                key = letter.key or "dead-letter"
                room = max(DEAD_LETTER_MIN_ROOM, limit - RECORD_OVERHEAD_BYTES - len(key.encode("utf-8")))
                records.append((key, fit_dead_letter(letter, room, exclude_none=True)))
            refused = self._send_all(self.dlq_topic, records)
            if refused and self.limits.get(self.dlq_topic, limit) >= limit:  # no smaller limit to cut them to
                raise PublishError({t.key: f"dead letter not sent: {t.error}" for t in refused})
            pending = [pending[t.index] for t in refused]

    def close(self) -> None:
        """Flush what is buffered and close (graceful shutdown)."""
        try:
            self._producer.flush(timeout=self.timeout_s)
        finally:
            self._producer.close(timeout=self.timeout_s)


class ListSink:
    """A sink that keeps what it is given (the test harness; no broker involved)."""

    def __init__(self) -> None:
        self.docs: list[RawDocument] = []
        self.dead: list[DeadLetter] = []
        self.fail_next: int = 0
        self.max_record_bytes: int | None = None  # set to refuse larger documents, as the Kafka topic would

    def publish(self, docs: Sequence[RawDocument]) -> list[TooLarge]:
        if self.fail_next:
            self.fail_next -= 1
            raise PublishError({d.id: "simulated broker failure" for d in docs})
        too_large: list[TooLarge] = []
        for index, doc in enumerate(docs):
            size = len(encode(doc)) + len(doc.id.encode("utf-8")) + RECORD_OVERHEAD_BYTES
            if self.max_record_bytes is not None and size > self.max_record_bytes:
                too_large.append(TooLarge(index, doc.id, size, self.max_record_bytes, "list"))
            else:
                self.docs.append(doc)
        return too_large

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        self.dead.extend(letters)

    def close(self) -> None:
        return None
