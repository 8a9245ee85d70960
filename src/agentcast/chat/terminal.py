"""What ``agentcast chat`` and ``agentcast llm …`` run (kept out of cli.py, which only
parses flags)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentcast.client import CommandFailedError, Event, connect
from agentcast.client.connection import ws_url_of

__all__ = ["http_base", "llm_bench", "llm_health", "llm_models", "run_chat"]


def http_base(url: str) -> str:
    """The HTTP base URL of a server given by its HTTP or WebSocket URL."""
    ws = ws_url_of(url)
    base = "http" + ws[2:] if ws.startswith("ws") else ws
    return base.removesuffix("/ws")


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of standard input, read by a daemon thread (an exit never waits for it)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="agentcast-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


async def run_chat(
    url: str,
    agent_id: str,
    conversation: str | None,
    messages: Sequence[str] | None,
    *,
    out: Console,
    err: Console,
    token: str | None = None,
) -> int:
    """Chat in the terminal; returns the exit status (0, or 1 when an answer failed).
    ``token`` is sent as ``Authorization: Bearer`` on the HTTP requests and the socket."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=http_base(url), timeout=10.0, headers=headers) as http:
        if conversation is None:
            r = await http.post(
                "/api/conversations", json={"agent_id": agent_id, "title": f"{agent_id} (terminal)"}
            )
        else:
            r = await http.get(f"/api/conversations/{conversation}")
        if r.status_code not in (200, 201):
            detail = (
                r.json().get("detail", {})
                if r.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            err.print(f"[red]error {r.status_code}:[/red] {escape(detail.get('message', r.text))}")
            return 1
        cid = r.json()["id"]
    interactive = messages is None and sys.stdin.isatty()
    err.print(f"[dim]conversation {cid} with {agent_id} (Ctrl-C stops an answer)[/dim]")
    loop = asyncio.get_running_loop()
    status = 0
    async with connect(url, token=token) as client:
        sub = client.subscribe(f"chat:{cid}")
        await sub.wait_subscribed()
        events = sub.__aiter__()
        streaming = False
        main = asyncio.current_task()
        pending: set[asyncio.Task[Any]] = set()

        def on_interrupt() -> None:
            if streaming:
                task = loop.create_task(
                    client.request({"type": "chat:cancel", "data": {"conversation_id": cid}})
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
            elif main is not None:
                main.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            source: AsyncIterator[str] = (
                _aiter(messages) if messages is not None else _stdin_lines()
            )
            if interactive:
                err.print("[bold]you>[/bold] ", end="")
            async for line in source:
                if not line.strip():
                    continue
                try:
                    await client.request(
                        {"type": "chat:send", "data": {"message": line, "conversation_id": cid}}
                    )
                except CommandFailedError as exc:
                    err.print(f"[red]error:[/red] {escape(str(exc))}")
                    status = 1
                    continue
                streaming = True
                try:
                    answer = await _print_answer(events, out, err)
                finally:
                    streaming = False
                if answer.get("status") != "complete":
                    status = 1 if answer.get("status") == "error" else status
                if interactive:
                    err.print("[bold]you>[/bold] ", end="")
        except asyncio.CancelledError:
            err.print()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
    return status


async def _aiter(items: Sequence[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def _print_answer(events: AsyncIterator[Event], out: Console, err: Console) -> dict[str, Any]:
    """Print one streamed answer; returns the stored answer's data."""
    while True:
        event = await events.__anext__()
        data = event.data
        if event.type == "chat:queued":
            err.print(f"[dim](waiting for the model: position {data.get('position')})[/dim]")
        elif event.type == "chat:streaming" and not data.get("done"):
            out.file.write(str(data.get("chunk", "")))
            out.file.flush()
        elif event.type == "chat:message" and data.get("role") == "assistant":
            out.file.write("\n")
            out.file.flush()
            if data.get("status") == "cancelled":
                err.print("[yellow](stopped: the partial answer is kept)[/yellow]")
            elif data.get("status") == "error":
                err.print(f"[red](error: {escape(str(data.get('error')))})[/red]")
            return data


def _upstream(llm_url: str, model: str, api_key: str | None) -> Any:
    from agentcast.chat.llm import OpenAIUpstream, UpstreamConfig

    return OpenAIUpstream(UpstreamConfig(base_url=llm_url, model=model, api_key=api_key))


async def llm_models(llm_url: str, api_key: str | None, *, out: Console, err: Console) -> int:
    async with _upstream(llm_url, "", api_key) as upstream:
        try:
            models = await upstream.list_models()
        except Exception as exc:
            err.print(f"[red]error:[/red] {exc}")
            return 1
    for name in models:
        out.print(name, highlight=False)
    return 0


async def llm_health(llm_url: str, api_key: str | None, *, out: Console, err: Console) -> int:
    async with _upstream(llm_url, "", api_key) as upstream:
        health = await upstream.health()
    if health.get("ok"):
        out.print(
            f"ok: {llm_url} answers in {health.get('latency_ms', 0):.1f} ms, "
            f"{len(health.get('models') or [])} model(s)",
            highlight=False,
        )
        return 0
    err.print(f"[red]down:[/red] {llm_url}: {health.get('error')}")
    return 1


async def llm_bench(
    llm_url: str,
    models: Sequence[str],
    runs: int,
    prompt: str,
    api_key: str | None,
    server_url: str | None,
    *,
    out: Console,
    err: Console,
) -> int:
    status = 0
    async with _upstream(llm_url, models[0] if models else "", api_key) as upstream:
        if not models:
            try:
                models = (await upstream.list_models())[:1]
            except Exception as exc:
                err.print(f"[red]error:[/red] no --model given and the model list failed: {exc}")
                return 1
        table = Table(title=f"agentcast llm bench: {llm_url}, {runs} run(s) per model")
        for column in ("model", "TTFT median (ms)", "tokens/s median", "tokens", "total s"):
            table.add_column(column, justify="right" if column != "model" else "left")
        for name in models:
            try:
                result = await upstream.benchmark(prompt=prompt, runs=runs, model=name)
            except Exception as exc:
                table.add_row(name, "error", str(exc)[:60], "", "")
                status = 1
                continue
            table.add_row(
                name,
                f"{result.ttft_ms_median:.1f}",
                f"{result.tokens_per_second_median:.1f}",
                f"{result.tokens_total}",
                f"{result.seconds_total:.2f}",
            )
        out.print(table)
    if server_url:
        async with httpx.AsyncClient(base_url=http_base(server_url), timeout=10.0) as http:
            stats = (await http.get("/api/llm/stats")).json()
        live = Table(title=f"live figures of {server_url}")
        for column in ("upstream", "model", "gens", "TTFT p50/p99 ms", "tok/s", "cancel", "error"):
            live.add_column(column)
        for s in stats["agents"]:
            live.add_row(
                s["key"],
                s["model"],
                str(s["generations"]),
                f"{s['ttft_ms']['p50']}/{s['ttft_ms']['p99']}",
                str(s["tokens_per_s"]["median"]),
                f"{100 * s['cancel_rate']:.1f}%",
                f"{100 * s['error_rate']:.1f}%",
            )
        out.print(live)
    return status
