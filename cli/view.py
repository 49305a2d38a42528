"""`geolabel view`: a local web map of predict / mapupdate / dataset folders, or a self-contained page."""

from __future__ import annotations

import click


@click.command("view")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to serve on (loopback: only this machine).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one.")
@click.option("--open", "open_browser", is_flag=True, help="Also open the map in the default browser.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML page (works offline, no server) instead of serving.")
def view(paths: tuple[str, ...], host: str, port: int, open_browser: bool, export_path: str | None) -> None:
    """Show PATHS (predict, mapupdate or dataset folders, rasters, vector files) on a web map:
    imagery, classes and probabilities as tiles, polygons and changes coloured by status."""
    from geolabel.view import ViewServer, collect_layers, export_html

    collection = collect_layers(paths)
    if export_path:
        click.echo(export_html(collection, export_path))
        return
    try:
        server = ViewServer(collection, host, port)
    except OSError as err:
        from geolabel.errors import InputError

        raise InputError("--port", f"cannot serve on {host}:{port} ({err.strerror or err})") from None
    click.echo(f"{server.url}/", nl=True)
    click.echo("Serving the map; Ctrl-C stops.", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(f"{server.url}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
