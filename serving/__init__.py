"""Export, serving and client (installed as `geolabel.serving`).

- `export`: trained runs -> TF Serving SavedModels (`BASE/VERSION/`) with warm-up requests.
- `server`: the embedded TF-Serving-compatible REST + gRPC server (`geolabel serve`).
- `json_tensor`: TF Serving's JSON <-> tensor rules and error messages.
- `client`: a REST client usable as `predict_fn` of `geolabel.predict.predict_raster`.
Deployment files beside them: `models.config`, `docker-compose.yml`, `k8s/`.
"""
