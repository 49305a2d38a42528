"""`geolabel serve`: the embedded TF-Serving-compatible REST + gRPC model server."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--model_base_path", type=click.Path(file_okay=False), help="Folder of integer version folders.")
@click.option("--model_name", default="default", show_default=True, help="Model name in the URLs.")
@click.option("--model_config_file", type=click.Path(dir_okay=False), help="Text ModelServerConfig (several models).")
@click.option("--model_config_file_poll_wait_seconds", type=float, default=0.0, show_default=True,
              help="Re-read the config file this often (0: never).")
@click.option("--rest_api_port", type=click.IntRange(0, 65535), default=8501, show_default=True,
              help="REST port (0: any free port).")
@click.option("--port", type=click.IntRange(-1, 65535), default=8500, show_default=True,
              help="gRPC port (0: any free port, -1: no gRPC).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--file_system_poll_wait_seconds", type=float, default=1.0, show_default=True,
              help="Poll the base paths for new versions this often (0: never).")
@click.option("--enable_batching/--disable_batching", default=True, show_default=True,
              help="Merge concurrent small requests into one batch.")
@click.option("--max_batch_size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch_timeout_micros", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--max_body_bytes", type=click.IntRange(min=1024), default=64 << 20, show_default=True,
              help="Largest accepted request (REST body, gRPC message).")
@click.option("--max_concurrent_requests", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--rest_header_timeout_s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="A request line and headers must arrive within this (else the connection is closed).")
@click.option("--rest_body_timeout_s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="A REST body must arrive within this after its header (else 408).")
@click.option("--rest_idle_timeout_s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Close a keep-alive connection idle this long.")
@click.option("--rest_api_timeout_in_ms", type=click.IntRange(min=0), default=30000, show_default=True,
              help="A REST prediction not answered within this is answered 504 (TF Serving's flag; 0: no limit).")
@click.option("--max_connections", type=click.IntRange(min=1), default=512, show_default=True,
              help="REST connections open at once (more are answered 503).")
@click.option("--memory_budget_bytes", type=click.IntRange(min=1 << 20), default=2 << 30, show_default=True,
              help="Bound on the memory of requests in flight (bodies, parsed JSON, tensors, responses).")
@click.option("--memory_wait_ms", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long a request waits for memory budget before it is refused (429).")
def serve(
    model_base_path: str | None,
    model_name: str,
    model_config_file: str | None,
    model_config_file_poll_wait_seconds: float,
    rest_api_port: int,
    port: int,
    host: str,
    file_system_poll_wait_seconds: float,
    enable_batching: bool,
    max_batch_size: int,
    batch_timeout_micros: int,
    max_body_bytes: int,
    max_concurrent_requests: int,
    rest_header_timeout_s: float,
    rest_body_timeout_s: float,
    rest_idle_timeout_s: float,
    rest_api_timeout_in_ms: int,
    max_connections: int,
    memory_budget_bytes: int,
    memory_wait_ms: int,
) -> None:
    """Serve SavedModels like tensorflow_model_server (same routes, formats and errors)."""
    from geolabel.serving.server import ModelServer

    server = ModelServer(
        model_name=model_name,
        model_base_path=model_base_path,
        model_config_file=model_config_file,
        rest_api_port=rest_api_port,
        port=None if port < 0 else port,
        host=host,
        poll_seconds=file_system_poll_wait_seconds,
        config_poll_seconds=model_config_file_poll_wait_seconds,
        enable_batching=enable_batching,
        max_batch_size=max_batch_size,
        batch_timeout_s=batch_timeout_micros / 1e6,
        max_body_bytes=max_body_bytes,
        max_concurrent_requests=max_concurrent_requests,
        header_timeout_s=rest_header_timeout_s,
        body_timeout_s=rest_body_timeout_s,
        idle_timeout_s=rest_idle_timeout_s,
        predict_timeout_s=rest_api_timeout_in_ms / 1000 or None,
        max_connections=max_connections,
        memory_budget_bytes=memory_budget_bytes,
        memory_wait_s=memory_wait_ms / 1000,
    ).start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    for name in sorted(server.core.models):
        click.echo(f"REST http://{shown}:{server.rest_port}/v1/models/{name}", nl=True)
    if server.grpc_port:
        click.echo(f"gRPC {shown}:{server.grpc_port}")
    click.echo("serving (Ctrl-C to stop)", nl=True)
    server.serve_forever()
