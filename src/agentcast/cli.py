"""The ``agentcast`` command: serve, publish, tail.

Client commands take ``--url`` with the server's base address (``http://127.0.0.1:8000``
by default); ``tail`` derives the WebSocket address from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from agentcast.__about__ import __version__
from agentcast.errors import AgentcastError, ConfigError

app = typer.Typer(
    name="agentcast",
    help="Real-time WebSocket gateway for AI-agent and workflow platforms.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: `--port INTEGER  …  [default: 8000]`
)
err = Console(stderr=True)
out = Console()

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOption = Annotated[
    str, typer.Option("--url", metavar="URL", help="Server base URL.", envvar="AGENTCAST_URL")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        envvar="AGENTCAST_TOKEN",
        help="Bearer token for a server with authentication (see `agentcast token`).",
    ),
]


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _version(value: bool) -> None:
    if value:
        print(f"agentcast {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """agentcast: live events for agent runs, workflows and chats."""


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help="Address to bind.  [default: 127.0.0.1]"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(metavar="INTEGER", help="Port to bind.  [default: 8000]")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="YAML settings file (flags and AGENTCAST_* / WEBSOCKET_* variables override "
            "it; seed 002's websocket: section is accepted).",
        ),
    ] = None,
    insecure: Annotated[
        bool | None,
        typer.Option("--insecure", help="Allow open dev mode on a non-loopback address."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help="critical, error, warning, info, debug or trace.  [default: info]",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            metavar="FORMAT",
            help="text, or json: one JSON object per line.  [default: text]",
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option("--access-log", help="Log every HTTP request (on at debug level)."),
    ] = None,
    bench_endpoint: Annotated[
        bool | None, typer.Option("--bench-endpoint", hidden=True, help="Serve /_bench/publish.")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Keep demo runs going (workflow:demo, execution:demo).")
    ] = False,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent", metavar="MODULE:FACTORY", help="Default chat agent: package.module:factory."
        ),
    ] = None,
    llm_url: Annotated[
        str | None,
        typer.Option(
            "--llm-url",
            metavar="URL",
            help="OpenAI-compatible upstream, e.g. http://localhost:1234/v1.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", metavar="TEXT", help="Model at --llm-url.")
    ] = None,
    origin: Annotated[
        list[str] | None,
        typer.Option(
            "--origin",
            metavar="URL",
            help="Browser origin allowed besides the server's own, e.g. "
            "http://localhost:3000 (repeatable; exact matches).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", metavar="PATH", help="TLS certificate chain (PEM): https/wss."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", metavar="PATH", help="TLS private key (PEM).")
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            metavar="MODULE:FACTORY",
            help="The application's authenticator/authorizer: package.module:factory "
            "(called with the settings).",
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            metavar="URL",
            help="memory:// (one process) or redis://host:6379/0?prefix=agentcast (several "
            "processes and hosts).  [default: memory://]",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="Server processes on this port (N > 1 needs --broker redis://…).  [default: 1]",
        ),
    ] = None,
) -> None:
    """Serve the WebSocket endpoint /ws, the HTTP API and /healthz on one port.

    Settings come from the flags, then AGENTCAST_* environment variables, then seed 002's
    WEBSOCKET_* ones, then --config; the defaults shown apply when none of them sets a
    value.
    """
    from agentcast.app import create_gateway
    from agentcast.brokers import check_broker
    from agentcast.errors import BrokerError
    from agentcast.logs import configure_logging
    from agentcast.security.secrets import redact_url
    from agentcast.security.tls import check_tls
    from agentcast.settings import load_settings
    from agentcast.storage.base import StoreError
    from agentcast.transports import workers as multi
    from agentcast.transports.server import build_server

    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            insecure=insecure,
            log_level=log_level,
            log_format=log_format,
            access_log=access_log,
            bench_endpoint=bench_endpoint,
            agent=agent,
            llm_url=llm_url,
            llm_model=model,
            origins=origin or None,
            tls_certfile=str(tls_cert) if tls_cert is not None else None,
            tls_keyfile=str(tls_key) if tls_key is not None else None,
            auth=auth,
            broker_url=broker,
            workers=workers,
        )
        worker_socket = multi.inherited_socket()
        multi.check_workers(settings)
        tls = check_tls(settings)
        gateway = create_gateway(settings)
        if gateway.open_mode and settings.auth_required:
            raise ConfigError(
                "authentication is required (auth_required, seed 002's "
                "security.authentication.enabled) but none is configured"
            )
        if gateway.open_mode and not settings.loopback and not settings.insecure:
            raise ConfigError(
                f"refusing to serve open dev mode (no authentication) on {settings.host}: "
                "configure authentication, bind 127.0.0.1, or pass --insecure"
            )
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    try:
        asyncio.run(check_broker(settings.broker_url, gateway.history_limits))
        if settings.workers > 1 and worker_socket is None and settings.store_url:
            asyncio.run(_migrate(settings.store_url))  # once, before the workers start
    except (BrokerError, StoreError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    configure_logging(settings)
    json_logs = settings.log_format == "json"
    cli_logger = logging.getLogger("agentcast.cli")

    def say(markup: str, plain: str, level: int = logging.INFO) -> None:
        """A start-up line: rich markup on a terminal, a log record with JSON logs."""
        if json_logs:
            cli_logger.log(level, plain)
        else:
            err.print(markup, highlight=False)

    if gateway.open_mode:
        text = (
            "agentcast runs in OPEN DEV MODE: no authentication, every client may "
            "subscribe and publish to every topic."
        )
        say(f"[yellow]{text}[/yellow]", text, logging.WARNING)
    if not settings.loopback and not tls:
        text = (
            f"warning: serving {settings.host} without TLS: tokens and events cross "
            "the network in clear text (--tls-cert/--tls-key, or a TLS proxy in front)"
        )
        say(f"[yellow]{escape(text)}[/yellow]", text, logging.WARNING)
    http, ws = ("https", "wss") if tls else ("http", "ws")
    where = (
        f"{http}://{settings.host}:{settings.port} "
        f"(WebSocket {ws}://{settings.host}:{settings.port}/ws, "
        f"broker {redact_url(settings.broker_url)}"
        + (
            f", cluster state {redact_url(settings.cluster_url)}"
            if settings.cluster_url and settings.cluster_url != settings.broker_url
            else ""
        )
        + ")"
    )
    if settings.workers > 1 and worker_socket is None:
        try:
            sock = multi.bind_socket(settings.host, settings.port)
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None
        text = f"agentcast {__version__}: {settings.workers} workers on {where}"
        say(escape(text), text)
        argv = [sys.executable, "-m", "agentcast.cli", *sys.argv[1:]]
        status = multi.supervise(
            settings.workers,
            sock,
            argv,
            lambda line: say(f"[yellow]{escape(line)}[/yellow]", line, logging.WARNING),
            settings.shutdown_timeout,
        )
        raise typer.Exit(status)
    if worker_socket is not None:
        text = f"agentcast worker {os.environ.get(multi.WORKER, '?')} on {where}"
    else:
        text = f"agentcast {__version__} on {where}"
    say(escape(text), text)
    if demo:
        from agentcast.demo import run_demo, run_execution_demo

        gateway.add_background(lambda: run_demo(gateway))
        gateway.add_background(lambda: run_execution_demo(gateway))
        say(
            "demo runs publish on [cyan]workflow:demo[/cyan] and [cyan]execution:demo[/cyan]: "
            "`agentcast tail workflow:demo`",
            "demo runs publish on workflow:demo and execution:demo: `agentcast tail workflow:demo`",
        )
    server = build_server(gateway)
    if worker_socket is not None:  # uvicorn picks the loop (uvloop when installed)
        server.run(sockets=[worker_socket])
    else:
        server.run()


async def _migrate(store_url: str) -> None:
    """Open the store once (its migrations run) and close it."""
    from agentcast.storage import create_store

    store = create_store(store_url)
    if store is not None:
        await store.start()
        await store.stop()


@app.command()
def token(
    sub: Annotated[str, typer.Option("--sub", metavar="SUBJECT", help="The user (`sub`).")],
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="Lifetime: 90s, 15m, 1h, 7d (default: the token_expiry setting, 1h).",
        ),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", metavar="SCOPE", help="publish, control or admin (repeatable)."),
    ] = None,
    topics: Annotated[
        list[str] | None,
        typer.Option(
            "--topics",
            metavar="PATTERN",
            help="Topic pattern granted beyond the user's own, e.g. 'workflow:team-42:*' "
            "(repeatable).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", metavar="PATH", help="YAML settings file."),
    ] = None,
) -> None:
    """Mint a development token (HS256) with the configured jwt_secret
    (AGENTCAST_JWT_SECRET, or `jwt_secret` in --config) and print it."""
    from agentcast.security.jwt import mint_token, parse_duration
    from agentcast.settings import load_settings

    try:
        seconds = parse_duration(ttl) if ttl is not None else None
    except ValueError:
        err.print(f"[red]error:[/red] --ttl {escape(str(ttl))!r}: use e.g. 90s, 15m, 1h or 7d")
        raise typer.Exit(2) from None
    try:
        settings = load_settings(config)
        lifetime = seconds if seconds is not None else settings.token_expiry
        print(mint_token(settings, sub, lifetime, scopes=scope or (), topics=topics or ()))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def publish(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic, e.g. workflow:123.")],
    type: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, e.g. node_status.")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="Event data: a JSON object.")] = "{}",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    producer_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            help="Publish idempotently as this producer (with --producer-seq).",
        ),
    ] = None,
    producer_seq: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="This producer's number for the event: running the command again with "
            "the same number publishes nothing twice and prints the original seq.",
        ),
    ] = None,
) -> None:
    """Publish one event over HTTP and print its assigned seq."""
    if (producer_id is None) != (producer_seq is None):
        err.print("[red]error:[/red] --producer-id and --producer-seq go together")
        raise typer.Exit(2)
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/red] DATA is not valid JSON: {exc}")
        raise typer.Exit(2) from None
    headers = _auth_headers(token)
    if producer_id is not None:
        headers = {**headers, "Producer-Id": producer_id, "Producer-Seq": str(producer_seq)}
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/api/topics/{topic}/events",
            json={"type": type, "data": payload},
            headers=headers,
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        err.print(f"[red]error {response.status_code}:[/red] {_detail(response)}")
        raise typer.Exit(1)
    result = response.json()
    if result.get("duplicates"):
        err.print(f"already published (producer {producer_id} #{producer_seq}): not again")
    print(result["seqs"][0])


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text
    if isinstance(detail, dict):
        field = f" ({detail['field']})" if detail.get("field") else ""
        return f"{detail.get('code')}: {detail.get('message')}{field}"
    return str(detail)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic to follow.")],
    since: Annotated[
        int | None,
        typer.Option(
            metavar="INTEGER",
            help="Start after this seq (0: all retained history).  [default: live events only]",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One wire-format event per line.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    count: Annotated[
        int | None,
        typer.Option(metavar="INTEGER", help="Exit after this many events.  [default: never]"),
    ] = None,
    token: TokenOption = None,
) -> None:
    """Print a topic's events as they come; resumes after restarts and dropped connections.

    While the server cannot be reached, each retry is reported on stderr.
    """
    from agentcast.client import HistoryLost, Retry, connect

    retrying = False

    def on_retry(retry: Retry) -> None:
        nonlocal retrying
        retrying = True
        if retry.close_code is None:
            what = f"cannot reach {url}: {retry.reason}"
        else:
            what = f"lost the connection to {url}: {retry.reason}"
        err.print(
            f"[yellow]{escape(what)}; retrying in {retry.delay:.1f} s[/yellow]",
            highlight=False,
            soft_wrap=True,
        )

    def on_connect() -> None:
        nonlocal retrying
        if retrying:
            retrying = False
            err.print(f"[green]connected to {escape(url)}[/green]", highlight=False)

    async def run() -> None:
        seen = 0
        async with connect(
            url, token=token or None, on_retry=on_retry, on_connect=on_connect
        ) as client:
            async for event in client.subscribe(topic, since=since, on_history_lost="reset"):
                if isinstance(event, HistoryLost):
                    err.print(
                        f"[dim]history of {event.topic} no longer reaches seq {event.since + 1} "
                        f"(reset or evicted); continuing from seq {event.first_seq}[/dim]"
                    )
                    continue
                if as_json:
                    sys.stdout.write(json.dumps(event.to_wire(), separators=(",", ":")) + "\n")
                    sys.stdout.flush()
                else:
                    _print_event(event.topic, event.seq, event.type, event.timestamp, event.data)
                seen += 1
                if count is not None and seen >= count:
                    return

    try:
        asyncio.run(run())
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass
    except ValueError as exc:  # an unusable --url
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except AgentcastError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command()
def replay(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Run topic, e.g. workflow:123.")],
    speed: Annotated[
        float,
        typer.Option(metavar="FLOAT", help="N× the original pace; 0 sends all at once."),
    ] = 1.0,
    since: Annotated[
        int, typer.Option(metavar="INTEGER", help="Replay the events after this seq.")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One wire-format event per line.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Replay a run's recorded events at their original pace (or N× faster).

    Exits with status 1 when the topic has nothing recorded (after --since).
    """
    import websockets

    from agentcast.client.connection import ws_url_of
    from agentcast.client.retry import describe_failure

    ws_url = ws_url_of(url)

    async def run() -> int:
        async with websockets.connect(ws_url, additional_headers=_auth_headers(token)) as ws:
            command = {"type": "replay", "topic": topic, "speed": speed, "since": since, "id": 1}
            await ws.send(json.dumps(command))
            while True:
                msg = json.loads(await ws.recv())
                kind = msg.get("type")
                if kind == "error":
                    err.print(f"[red]error:[/red] {msg['data']['code']}: {msg['data']['message']}")
                    return 1
                if kind == "replay_started":
                    if msg["data"]["events"] == 0:
                        after = f" after seq {since}" if since else ""
                        err.print(
                            f"[red]error:[/red] nothing to replay: {escape(topic)} has no "
                            f"recorded events{after} (publish or run something on it first)",
                            highlight=False,
                        )
                        return 1
                    err.print(f"[dim]replaying {msg['data']['events']} events of {topic}[/dim]")
                elif kind == "replay_complete":
                    return 0
                elif "seq" in msg:
                    if as_json:
                        sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")
                        sys.stdout.flush()
                    else:
                        _print_event(msg["topic"], msg["seq"], kind, msg["timestamp"], msg["data"])

    try:
        code = asyncio.run(run())
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {describe_failure(exc)}")
        raise typer.Exit(1) from None
    except websockets.exceptions.WebSocketException as exc:  # refused handshake, lost link
        err.print(f"[red]error:[/red] {url}: {describe_failure(exc)}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def chat(
    agent_id: Annotated[
        str,
        typer.Argument(metavar="AGENT_ID", help="Agent to talk to (unknown ids: the default)."),
    ],
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", "-c", metavar="ID", help="Continue this conversation."),
    ] = None,
    message: Annotated[
        list[str] | None,
        typer.Option(
            "--message",
            "-m",
            metavar="TEXT",
            help="Send this (repeatable) and exit.  [default: read stdin]",
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Chat with an agent in the terminal: answers stream as they are generated; Ctrl-C
    stops a generation (the partial answer is kept), Ctrl-C at the prompt or Ctrl-D exits."""
    from agentcast.chat.terminal import run_chat

    try:
        code = asyncio.run(
            run_chat(url, agent_id, conversation, message, out=out, err=err, token=token)
        )
    except ValueError as exc:  # an unusable --url
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except (OSError, httpx.HTTPError) as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(1) from None
    except AgentcastError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


llm_app = typer.Typer(
    help="OpenAI-compatible upstreams: models, health, benchmark.", rich_markup_mode=None
)
app.add_typer(llm_app, name="llm")

LlmUrl = Annotated[
    str,
    typer.Option(
        "--llm-url", metavar="URL", envvar="AGENTCAST_LLM_URL", help="Upstream base URL (…/v1)."
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", metavar="TEXT", envvar="AGENTCAST_LLM_API_KEY", help="API key."),
]


@llm_app.command("models")
def llm_models(llm_url: LlmUrl = "http://localhost:1234/v1", api_key: ApiKey = None) -> None:
    """List the upstream's models (seed 001's listModels)."""
    from agentcast.chat.terminal import llm_models as run

    raise typer.Exit(asyncio.run(run(llm_url, api_key, out=out, err=err)))


@llm_app.command("health")
def llm_health(llm_url: LlmUrl = "http://localhost:1234/v1", api_key: ApiKey = None) -> None:
    """Is the upstream up? Exit status 0 when it answers."""
    from agentcast.chat.terminal import llm_health as run

    raise typer.Exit(asyncio.run(run(llm_url, api_key, out=out, err=err)))


@llm_app.command("bench")
def llm_bench(
    llm_url: LlmUrl = "http://localhost:1234/v1",
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            metavar="TEXT",
            help="Model to measure (repeatable); default: AGENTCAST_LLM_MODEL and "
            "AGENTCAST_LLM_FALLBACK_MODELS, else the server's first model.",
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, metavar="INTEGER", help="Generations per model.")] = 3,
    prompt: Annotated[
        str, typer.Option(metavar="TEXT", help="Prompt of every run.")
    ] = "Explain in three sentences what a WebSocket is.",
    api_key: ApiKey = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", metavar="URL", help="Also print a running agentcast server's live figures."
        ),
    ] = None,
) -> None:
    """Time to first token and tokens/s of each configured model (seed 001's
    benchmarkModel); with --url, the server's live figures per model too (TTFT p50/p99,
    tokens/s, cancel and error rates, queue wait)."""
    from agentcast.chat.terminal import llm_bench as run
    from agentcast.settings import load_settings

    if not model:  # the configured models: llm_model, then llm_fallback_models
        settings = load_settings()
        model = [m for m in (settings.llm_model, *settings.llm_fallback_models) if m]
    raise typer.Exit(
        asyncio.run(run(llm_url, model or [], runs, prompt, api_key, url, out=out, err=err))
    )


def _print_event(topic: str, seq: int, type: str, timestamp: str, data: Any) -> None:
    out.print(
        f"[dim]{timestamp}[/dim] [cyan]{topic}[/cyan] [bold]#{seq}[/bold] "
        f"[green]{type}[/green] {json.dumps(data, ensure_ascii=False)}",
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
