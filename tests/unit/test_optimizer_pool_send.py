"""The pool's one-write send speaks multiprocessing's Connection protocol (the worker reads with
`Connection.recv`), for small and large messages."""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection

import numpy as np

from app.optimizer.pool import _send


def test_one_write_send_is_read_by_connection_recv() -> None:
    a, b = socket.socketpair()
    sender, receiver = Connection(a.detach()), Connection(b.detach())
    big = np.random.default_rng(1).normal(size=(2000, 300))  # 4.8 MB: more than the socket buffer
    messages = [(1, "ping", None), (2, "optimize", big), (3, "x" * 20_000, {"k": [1.5, None]})]
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(receiver.recv() for _ in messages))
    reader.start()
    for m in messages:
        _send(sender, m)
    reader.join(10)
    assert got[0] == messages[0] and got[2] == messages[2]
    assert got[1][:2] == (2, "optimize") and np.array_equal(got[1][2], big)
    sender.close()
    receiver.close()
