#!/usr/bin/env python3
"""A Shoal worker in Python: the entity type `py_counter` (or the name given with
`--entity-type`), a counter kept in entity KV, so its value survives the worker being
restarted, the entity being passivated or its shard moving to another runner.

Messages are JSON, as the HTTP gateway passes them:

| tag                     | payload           | reply         |
|-------------------------|-------------------|---------------|
| `increment` (persisted) | `{"by": n}` or `{}` (n = 1) | the new value |
| `get`                   | anything          | the value (0 when never set) |
| `reset`                 | anything          | `0`           |
| `ticks` (stream)        | `{"n": n}`        | `1`, `2`, ... `n` |

Run it from a runner's configuration:

    [[entity]]
    type = "py_counter"
    worker = [".venv/bin/python", "examples/python/counter_worker.py"]

after `python3 examples/python/setup_venv.py .venv`.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shoal_worker import CallContext, EntityType, Failure, Worker  # noqa: E402

VALUE = b"value"
# The last increment applied: `<request id> <value>`, written together with the value. A
# persisted request is redelivered when its reply was not stored (the worker or the runner died
# in between); finding its id here means it was applied already, so it is answered, not applied
# twice. One key is enough: an entity's persisted requests run one at a time, in order.
LAST = b"last_increment"


def decode(payload: bytes) -> dict:
    if not payload.strip():
        return {}
    try:
        message = json.loads(payload)
    except ValueError as error:
        raise Failure.malformed(f"the payload is not JSON: {error}")
    if not isinstance(message, dict):
        raise Failure.malformed("expected a JSON object")
    return message


def current(ctx: CallContext) -> int:
    stored = ctx.kv.get_one(VALUE)
    if stored is None:
        return 0
    try:
        return int(stored)
    except ValueError:
        raise Failure.fatal(f"the stored value {stored!r} is not a number")


def build(name: str) -> EntityType:
    counter = EntityType(name)

    @counter.unary("increment", persisted=True)
    def increment(ctx: CallContext, payload: bytes) -> bytes:
        by = decode(payload).get("by", 1)
        if not isinstance(by, int) or isinstance(by, bool):
            raise Failure.malformed('"by" must be an integer')
        last = ctx.kv.get_one(LAST)
        if last is not None:
            request_id, value = last.split(b" ", 1)
            if int(request_id) == ctx.request_id:
                return value
        value = current(ctx) + by
        if abs(value) >= 2**63:
            raise Failure.application("the counter would overflow")
        text = str(value).encode()
        ctx.kv.put({VALUE: text, LAST: str(ctx.request_id).encode() + b" " + text})
        return text

    @counter.unary("get")
    def get(ctx: CallContext, payload: bytes) -> bytes:
        return str(current(ctx)).encode()

    @counter.unary("reset")
    def reset(ctx: CallContext, payload: bytes) -> bytes:
        ctx.kv.delete([VALUE, LAST])
        return b"0"

    @counter.stream("ticks")
    def ticks(ctx: CallContext, payload: bytes):
        n = decode(payload).get("n", 3)
        if not isinstance(n, int) or n < 0:
            raise Failure.malformed('"n" must be a non-negative integer')
        for i in range(1, n + 1):
            yield str(i).encode()
            time.sleep(0.02)

    return counter


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--entity-type", default="py_counter")
    args, rest = parser.parse_known_args()
    Worker("py-counter-worker", [build(args.entity_type)]).run(rest)


if __name__ == "__main__":
    main()
