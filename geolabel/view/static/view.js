// geolabel view: rasters as tiles (or whole-layer images in an exported page), vector layers
// coloured by status or class, a layer switcher, opacity sliders, a legend and click popups.
// Reads its configuration from window.GEOLABEL_VIEW (written by geolabel/view/page.py).
(function () {
  "use strict";
  var config = window.GEOLABEL_VIEW;
  var map = L.map("map", { maxZoom: 24, zoomSnap: 0.25 });
  map.attributionControl.setPrefix("Leaflet");
  config.attribution.forEach(function (line) { map.attributionControl.addAttribution(escapeHtml(line)); });
  var overlays = {};
  var rasters = [];

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function rgb(color) { return "rgb(" + color.join(",") + ")"; }

  function popup(properties) {
    var rows = Object.keys(properties).filter(function (k) {
      return properties[k] !== null && properties[k] !== "";
    }).map(function (k) {
      var v = properties[k];
      if (typeof v === "number" && !Number.isInteger(v)) v = v.toFixed(k === "area_m2" ? 1 : 3);
      return "<tr><th>" + escapeHtml(k) + "</th><td>" + escapeHtml(v) + "</td></tr>";
    });
    return "<table class='geolabel-popup'>" + rows.join("") + "</table>";
  }

  function vectorLayer(spec, data) {
    return L.geoJSON(data, {
      style: function (feature) {
        var value = feature.properties[spec.color_by];
        var color = spec.colors[value] || spec.default_color;
        return { color: rgb(color), weight: 2, opacity: 1, fillColor: rgb(color), fillOpacity: 0.15 };
      },
      onEachFeature: function (feature, layer) { layer.bindPopup(popup(feature.properties)); },
    });
  }

  config.layers.forEach(function (spec) {
    var layer;
    if (spec.type === "raster") {
      layer = spec.tiles
        ? L.tileLayer(spec.tiles, { maxZoom: 24, maxNativeZoom: spec.maxzoom, minZoom: 0, bounds: spec.bounds,
                                     opacity: spec.opacity, tileSize: 256 })
        : L.imageOverlay(spec.image, spec.bounds, { opacity: spec.opacity });
      rasters.push({ name: spec.name, layer: layer, opacity: spec.opacity });
    } else if (spec.data) {
      layer = vectorLayer(spec, spec.data);
    } else {
      layer = L.layerGroup();
      fetch(spec.url).then(function (r) { return r.json(); }).then(function (data) {
        vectorLayer(spec, data).eachLayer(function (l) { layer.addLayer(l); });
      });
    }
    if (spec.visible) layer.addTo(map);
    overlays[escapeHtml(spec.name)] = layer;
  });
  L.control.layers(null, overlays, { collapsed: false, position: "topright" }).addTo(map);

  var opacity = L.control({ position: "topright" });
  opacity.onAdd = function () {
    var div = L.DomUtil.create("div", "leaflet-bar geolabel-panel");
    div.innerHTML = "<b>Opacity</b>";
    rasters.forEach(function (r) {
      var label = L.DomUtil.create("label", "geolabel-opacity", div);
      label.textContent = r.name;
      var slider = L.DomUtil.create("input", "", label);
      slider.type = "range"; slider.min = 0; slider.max = 1; slider.step = 0.05; slider.value = r.opacity;
      slider.addEventListener("input", function () { r.layer.setOpacity(parseFloat(slider.value)); });
    });
    L.DomEvent.disableClickPropagation(div);
    return div;
  };
  if (rasters.length) opacity.addTo(map);

  var legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    var div = L.DomUtil.create("div", "leaflet-bar geolabel-panel geolabel-legend");
    config.legend.forEach(function (group) {
      div.insertAdjacentHTML("beforeend", "<b>" + escapeHtml(group.title) + "</b>");
      group.entries.forEach(function (entry) {
        var swatch = entry.gradient
          ? "<i style='background:linear-gradient(to right," + entry.gradient.map(rgb).join(",") + ")'></i>"
          : "<i style='background:" + rgb(entry.color) + "'></i>";
        div.insertAdjacentHTML("beforeend", "<div class='geolabel-entry'>" + swatch + escapeHtml(entry.label) + "</div>");
      });
    });
    return div;
  };
  if (config.legend.length) legend.addTo(map);
  map.fitBounds(config.bounds);
})();
