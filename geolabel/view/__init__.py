"""`geolabel view`: a local web map of predictions, polygons and map updates over the imagery."""

from geolabel.view.layers import Collection, Layer, collect_layers
from geolabel.view.page import export_html, page_html
from geolabel.view.server import ViewServer

__all__ = ["Collection", "Layer", "ViewServer", "collect_layers", "export_html", "page_html"]
