"""The server's transport wrapper: a response's small writes within one event-loop iteration leave as one send,
in order; a large write goes at once after what is pending; close sends what is pending; a connection already
closing takes nothing."""

from __future__ import annotations

import asyncio

from edgedl.runtime.server.connections import COALESCE_BELOW_BYTES, CoalescingTransport


class Recorder:
    """What a socket transport was asked to send (only the calls the wrapper makes)."""

    def __init__(self):
        self.sent, self.closed, self.aborted = [], False, False

    def write(self, data):
        self.sent.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def get_extra_info(self, name):
        return ("127.0.0.1", 1) if name == "peername" else None


def test_writes_of_one_iteration_leave_together_and_in_order():
    async def main():
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(b"{}")
        assert raw.sent == []  # nothing until the handler yields
        await asyncio.sleep(0)
        assert raw.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        big = b"x" * COALESCE_BELOW_BYTES
        t.write(b"head")
        t.write(big)  # at once, after the pending head; never copied into a join
        assert raw.sent[1:] == [b"head", big]
        t.write(b"tail")
        t.close()  # what is pending goes before the close
        assert raw.sent[-1] == b"tail" and raw.closed
        t.write(b"late")
        await asyncio.sleep(0)
        assert raw.sent[-1] == b"tail"  # a closing connection takes nothing more
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own
        t.write(b"dropped")
        t.abort()
        await asyncio.sleep(0)
        assert raw.aborted and raw.sent[-1] == b"tail"

    asyncio.run(main())
