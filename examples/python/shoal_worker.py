"""A small Shoal worker library for Python, on grpcio and the modules grpcio-tools generates
from `proto/shoal/worker/v1/worker.proto` (see setup_venv.py).

A worker declares entity types and their handlers, then serves them on the Unix socket the
launcher gives it:

    counter = EntityType("py_counter")

    @counter.unary("get")
    def get(ctx, payload):
        value = ctx.kv.get_one(b"value")
        return value or b"0"

    Worker("counter-worker", [counter]).run()   # --unix PATH --idle-timeout SECS from argv

Handlers are plain functions `(CallContext, bytes) -> bytes` (unary) or generators yielding
bytes (streams), run on a thread pool. They fail with `Failure` (anything else they raise is
reported as a fatal failure). The protocol is described in docs/workers.md.
"""

import argparse
import os
import queue
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import grpc
from shoal.worker.v1 import worker_pb2 as pb
from shoal.worker.v1 import worker_pb2_grpc as pb_grpc

PROTOCOL_VERSION = 1


class Failure(Exception):
    """A handler failure, reported to the runner with a stable code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def application(cls, message: str) -> "Failure":
        """The handler refused or failed this request; the entity carries on."""
        return cls(pb.FAILURE_CODE_APPLICATION, message)

    @classmethod
    def fatal(cls, message: str) -> "Failure":
        """The entity's state can no longer be trusted: the runner re-activates it and replays."""
        return cls(pb.FAILURE_CODE_FATAL, message)

    @classmethod
    def malformed(cls, message: str) -> "Failure":
        """The payload could not be decoded."""
        return cls(pb.FAILURE_CODE_MALFORMED, message)

    @classmethod
    def unavailable(cls, message: str) -> "Failure":
        """The worker cannot take the call now (the request may be retried)."""
        return cls(pb.FAILURE_CODE_UNAVAILABLE, message)


class KvError(Exception):
    """A KV request the runner refused (`code` is a `KV_ERROR_CODE_*`), or a closed session."""

    def __init__(self, code: int, message: str):
        super().__init__(f"entity KV error {code}: {message}")
        self.code = code
        self.message = message

    def as_failure(self) -> Failure:
        if self.code in (pb.KV_ERROR_CODE_INVALID_ARGUMENT, pb.KV_ERROR_CODE_INTERNAL):
            return Failure.application(str(self))
        return Failure.unavailable(str(self))


class Kv:
    """The KV storage of the entity a call is for. Requests of one entity apply in order."""

    def __init__(self, session: "_Session", activation_id: int):
        self._session = session
        self._activation = activation_id

    def _request(self, **op) -> pb.KvResponse:
        response = self._session.kv_request(self._activation, **op)
        if response.WhichOneof("result") == "error":
            raise KvError(response.error.code, response.error.message)
        return response

    def get(self, keys: Iterable[bytes]) -> List[Optional[bytes]]:
        """The values of `keys`, in order (None for keys that are not set)."""
        response = self._request(get=pb.KvGet(keys=list(keys)))
        return [v.value if v.found else None for v in response.values.values]

    def get_one(self, key: bytes) -> Optional[bytes]:
        return self.get([key])[0]

    def put(self, entries: Dict[bytes, bytes]) -> None:
        """Sets every entry, all or nothing."""
        self._request(put=pb.KvPut(entries=[pb.KvEntry(key=k, value=v) for k, v in entries.items()]))

    def put_one(self, key: bytes, value: bytes) -> None:
        self.put({key: value})

    def delete(self, keys: Iterable[bytes]) -> None:
        self._request(delete=pb.KvDelete(keys=list(keys)))

    def delete_range(self, start: bytes, end: bytes) -> None:
        self._request(delete_range=pb.KvDeleteRange(start=start, end=end))

    def drop_all(self) -> None:
        self._request(drop=pb.KvDrop())

    def list(
        self,
        prefix: Optional[bytes] = None,
        start: Optional[bytes] = None,
        end: Optional[bytes] = None,
        reverse: bool = False,
        limit: Optional[int] = None,
    ) -> List[Tuple[bytes, bytes]]:
        """Entries in key order: every key, keys with `prefix`, or keys in [start, end)."""
        query = pb.KvList(reverse=reverse)
        if prefix is not None:
            query.prefix = prefix
        elif start is not None or end is not None:
            query.range.CopyFrom(pb.KvRange(start=start or b"", end=end or b""))
        else:
            query.all.CopyFrom(pb.KvAll())
        if limit is not None:
            query.limit = limit
        response = self._request(list=query)
        return [(e.key, e.value) for e in response.entries.entries]


class CallContext:
    """The call a handler runs: entity, tag, headers, request id, the entity's KV."""

    def __init__(self, session: "_Session", call: pb.Call, entity: pb.Entity):
        self._session = session
        self.call_id: int = call.call_id
        self.activation_id: int = call.activation_id
        self.entity_type: str = entity.entity_type
        self.entity_id: str = entity.entity_id
        self.tag: str = call.tag
        self.headers: List[Tuple[str, str]] = [(h.name, h.value) for h in call.headers]
        # Stable across redeliveries of a persisted request: use it for idempotency.
        self.request_id: int = call.request_id
        self.kv = Kv(session, call.activation_id)
        self.cancelled = threading.Event()

    def keep_alive(self, enabled: bool) -> None:
        """Keeps the entity resident on the runner while idle, or lets it passivate."""
        self._session.send(
            keep_alive=pb.KeepAlive(activation_id=self.activation_id, enabled=enabled)
        )


Handler = Callable[[CallContext, bytes], object]


class EntityType:
    """An entity type: its name, concurrency and handlers by tag."""

    def __init__(self, name: str, concurrency: int = 0):
        self.name = name
        self.concurrency = concurrency
        self.tags: Dict[str, Tuple[int, bool, Handler]] = {}

    def unary(self, tag: str, persisted: bool = False):
        """Decorates `fn(ctx, payload) -> bytes` as the handler of `tag`. Persisted tags are
        redelivered until answered: make them idempotent (see CallContext.request_id)."""

        def register(fn: Handler) -> Handler:
            self.tags[tag] = (pb.TAG_KIND_UNARY, persisted, fn)
            return fn

        return register

    def stream(self, tag: str, persisted: bool = False):
        """Decorates a generator `fn(ctx, payload)` yielding bytes items as the handler of `tag`."""

        def register(fn: Handler) -> Handler:
            self.tags[tag] = (pb.TAG_KIND_STREAM, persisted, fn)
            return fn

        return register

    def spec(self) -> pb.EntityTypeSpec:
        return pb.EntityTypeSpec(
            name=self.name,
            concurrency=self.concurrency,
            tags=[
                pb.TagSpec(name=tag, kind=kind, persisted=persisted)
                for tag, (kind, persisted, _) in self.tags.items()
            ],
        )


class _Session:
    """One session with a runner: a reader thread dispatching the runner's messages, handler
    calls on the shared pool, and an outgoing queue the response generator drains."""

    _CLOSED = object()

    def __init__(self, worker: "Worker"):
        self._worker = worker
        self._out: "queue.Queue[object]" = queue.Queue()
        self._lock = threading.Lock()
        self._calls: Dict[int, CallContext] = {}
        self._kv_waiters: Dict[int, "queue.Queue[Optional[pb.KvResponse]]"] = {}
        self._next_kv = 1
        self._activations: Dict[int, pb.Entity] = {}
        self._closed = False

    def send(self, **kind) -> None:
        self._out.put(pb.WorkerMessage(**kind))

    def kv_request(self, activation_id: int, **op) -> pb.KvResponse:
        waiter: "queue.Queue[Optional[pb.KvResponse]]" = queue.Queue(maxsize=1)
        with self._lock:
            if self._closed:
                raise KvError(0, "the session with the runner closed")
            request_id = self._next_kv
            self._next_kv += 1
            self._kv_waiters[request_id] = waiter
        self.send(kv=pb.KvRequest(request_id=request_id, activation_id=activation_id, **op))
        response = waiter.get()
        if response is None:
            raise KvError(0, "the session with the runner closed")
        return response

    def read(self, requests: Iterator[pb.RunnerMessage]) -> None:
        try:
            for message in requests:
                self._dispatch(message)
        except grpc.RpcError:
            pass  # The runner went away.
        finally:
            self.close()

    def _dispatch(self, message: pb.RunnerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            if not message.heartbeat.ack:
                self.send(heartbeat=pb.Heartbeat(nonce=message.heartbeat.nonce, ack=True))
        elif kind == "activate":
            self._activations[message.activate.activation_id] = message.activate.entity
        elif kind == "deactivate":
            self._activations.pop(message.deactivate.activation_id, None)
        elif kind == "call":
            self._start_call(message.call)
        elif kind == "cancel":
            with self._lock:
                ctx = self._calls.pop(message.cancel.call_id, None)
            if ctx is not None:
                ctx.cancelled.set()
        elif kind == "kv":
            with self._lock:
                waiter = self._kv_waiters.pop(message.kv.request_id, None)
            if waiter is not None:
                waiter.put(message.kv)
        # `start` needs no answer; unknown kinds from newer runners are ignored.

    def _start_call(self, call: pb.Call) -> None:
        entity = call.entity if call.HasField("entity") else self._activations.get(call.activation_id)
        entity = entity or pb.Entity()
        handler = self._worker.handler(entity.entity_type, call.tag)
        if handler is None:
            self._reply_failure(
                call.call_id,
                Failure(
                    pb.FAILURE_CODE_UNKNOWN_TAG,
                    f"this worker has no handler for tag {call.tag!r} of entity type "
                    f"{entity.entity_type!r}",
                ),
            )
            return
        ctx = CallContext(self, call, entity)
        with self._lock:
            self._calls[call.call_id] = ctx
        self._worker.pool.submit(self._run_call, ctx, handler, call.payload)

    def _run_call(self, ctx: CallContext, handler: Tuple[int, Handler], payload: bytes) -> None:
        kind, fn = handler
        try:
            if kind == pb.TAG_KIND_STREAM:
                for item in fn(ctx, payload):
                    if ctx.cancelled.is_set():
                        return
                    self.send(reply=pb.Reply(call_id=ctx.call_id, chunk=bytes(item)))
                outcome = {"end": pb.StreamEnd()}
            else:
                outcome = {"value": bytes(fn(ctx, payload) or b"")}
        except Failure as failure:
            outcome = {"failure": pb.Failure(code=failure.code, message=failure.message)}
        except KvError as error:
            failure = error.as_failure()
            outcome = {"failure": pb.Failure(code=failure.code, message=failure.message)}
        except Exception as error:  # A bug in the handler: the entity's state is suspect.
            outcome = {
                "failure": pb.Failure(
                    code=pb.FAILURE_CODE_FATAL, message=f"handler raised {error!r}"
                )
            }
        with self._lock:
            still_awaited = self._calls.pop(ctx.call_id, None) is not None
        if still_awaited:
            self.send(reply=pb.Reply(call_id=ctx.call_id, **outcome))

    def _reply_failure(self, call_id: int, failure: Failure) -> None:
        self.send(
            reply=pb.Reply(
                call_id=call_id, failure=pb.Failure(code=failure.code, message=failure.message)
            )
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            calls, self._calls = self._calls, {}
            waiters, self._kv_waiters = self._kv_waiters, {}
        for ctx in calls.values():
            ctx.cancelled.set()
        for waiter in waiters.values():
            waiter.put(None)
        self._out.put(self._CLOSED)

    def outgoing(self) -> Iterator[pb.WorkerMessage]:
        while True:
            message = self._out.get()
            if message is self._CLOSED:
                return
            yield message


class _Service(pb_grpc.WorkerServiceServicer):
    def __init__(self, worker: "Worker"):
        self._worker = worker

    def Describe(self, request, context):
        return self._worker.describe()

    def Session(self, request_iterator, context):
        session = _Session(self._worker)
        self._worker.session_started()
        context.add_callback(session.close)
        reader = threading.Thread(target=session.read, args=(request_iterator,), daemon=True)
        reader.start()
        try:
            yield from session.outgoing()
        finally:
            session.close()
            self._worker.session_ended()


class Worker:
    """Entity types served on a Unix socket, as the launcher starts workers: with
    `--unix PATH --idle-timeout SECS` appended to the command line."""

    def __init__(self, name: str, entity_types: List[EntityType], threads: int = 32):
        self.name = name
        self.entity_types = entity_types
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handler")
        self._handlers = {
            (ty.name, tag): (kind, fn)
            for ty in entity_types
            for tag, (kind, _, fn) in ty.tags.items()
        }
        self._sessions = 0
        self._idle_since = time.monotonic()
        self._lock = threading.Lock()

    def handler(self, entity_type: str, tag: str) -> Optional[Tuple[int, Handler]]:
        return self._handlers.get((entity_type, tag))

    def describe(self) -> pb.DescribeResponse:
        return pb.DescribeResponse(
            protocol_version=PROTOCOL_VERSION,
            entity_types=[ty.spec() for ty in self.entity_types],
            worker_name=self.name,
            pid=os.getpid(),
        )

    def session_started(self) -> None:
        with self._lock:
            self._sessions += 1

    def session_ended(self) -> None:
        with self._lock:
            self._sessions -= 1
            self._idle_since = time.monotonic()

    def _idle_for(self) -> float:
        with self._lock:
            return 0.0 if self._sessions else time.monotonic() - self._idle_since

    def run(self, argv: Optional[List[str]] = None) -> None:
        """Parses `--unix` and `--idle-timeout`, serves until idle, SIGTERM or SIGINT."""
        parser = argparse.ArgumentParser(description=f"Shoal worker {self.name}")
        parser.add_argument("--unix", required=True, help="the socket to listen on")
        parser.add_argument(
            "--idle-timeout", type=float, default=300.0,
            help="exit after this many seconds without a session (0: never)",
        )
        args, _ = parser.parse_known_args(argv)
        self.serve(os.path.abspath(args.unix), args.idle_timeout)

    def serve(self, path: str, idle_timeout: float, startup_grace: float = 5.0) -> None:
        """Serves on `path` (the launcher's worker contract, docs/launcher.md): refuses a path
        held by something else, makes the socket mode 0600, announces `UNIX:<path>`, and stops
        after `idle_timeout` seconds without a session (counted once `startup_grace` passed),
        or on SIGTERM/SIGINT, removing the socket if it is still ours."""
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                sys.exit(f"refusing to replace {path}: it exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                sys.exit(f"another worker is listening on {path}")
            except OSError:
                os.unlink(path)  # Stale: nobody listens.
            finally:
                probe.close()
        server = grpc.server(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        pb_grpc.add_WorkerServiceServicer_to_server(_Service(self), server)
        old_umask = os.umask(0o177)  # The socket is created with mode 0600.
        try:
            server.add_insecure_port(f"unix:{path}")
            server.start()
        finally:
            os.umask(old_umask)
        bound = os.stat(path)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        # The launcher waits for this line and then closes the pipe: nothing more to stdout.
        print(f"UNIX:{path}", flush=True)
        sys.stdout = sys.stderr
        started = time.monotonic()
        while not stop.wait(0.25):
            past_grace = time.monotonic() - started >= startup_grace
            if idle_timeout > 0 and past_grace and self._idle_for() >= idle_timeout:
                break
        server.stop(grace=2).wait()
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass


__all__ = [
    "CallContext",
    "EntityType",
    "Failure",
    "Kv",
    "KvError",
    "Worker",
]
