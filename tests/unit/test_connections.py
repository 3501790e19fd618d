"""HeadWithBody: a response's head and the first part of its body go out in one send."""

from __future__ import annotations

import asyncio
from typing import Any

from exporter.connections import HeadWithBody


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def _turn() -> None:
    await asyncio.sleep(0)


def test_the_head_and_the_body_go_out_in_one_write() -> None:
    async def main() -> list[bytes]:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        view.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
        view.write(b"{}")
        view.write(b"")  # h11's end of message, with a Content-Length
        await _turn()
        return t.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]


def test_a_head_whose_body_does_not_follow_in_the_same_turn_goes_out_alone_then_the_rest_as_it_comes() -> (
    None
):
    async def main() -> list[list[bytes]]:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        view.write(b"HEAD")
        seen = [list(t.writes)]
        await _turn()
        seen.append(list(t.writes))
        view.write(b"part 1")
        view.write(b"part 2")
        seen.append(list(t.writes))
        return seen

    assert asyncio.run(main()) == [[], [b"HEAD"], [b"HEAD", b"part 1", b"part 2"]]


def test_closing_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    async def main() -> Recording:
        t = Recording()
        view = HeadWithBody(t, asyncio.get_running_loop())  # type: ignore[arg-type]
        assert view.get_extra_info("peername") == ("127.0.0.1", 1)
        view.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        view.close()
        await _turn()
        return t

    t = asyncio.run(main())
    assert t.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and t.closed
