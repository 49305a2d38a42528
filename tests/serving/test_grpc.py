"""gRPC contract: PredictionService and ModelService through the tensorflow-serving-api stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(name: str, signature: str = "", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_predict_float_and_uint8(predict_stub, real_tiles):
    x = real_tiles[:2]
    response = predict_stub.Predict(predict_request("seg", images=x), timeout=60)
    probs = tf.make_ndarray(response.outputs["probabilities"])
    assert probs.shape == (2, 32, 32, 2)
    assert response.model_spec.name == "seg" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    response8 = predict_stub.Predict(predict_request("seg", "serving_uint8", images=x.astype(np.uint8)), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response8.outputs["probabilities"]), probs, atol=1e-5)


def test_predict_output_filter_and_errors(predict_stub, real_tiles):
    request = predict_request("seg", images=real_tiles[:1])
    request.output_filter.append("classes")
    response = predict_stub.Predict(request, timeout=60)
    assert list(response.outputs) == ["classes"]

    cases = [
        (predict_request("nope", images=real_tiles[:1]), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (predict_request("seg", "nope", images=real_tiles[:1]), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        (predict_request("seg", images=real_tiles[:1].astype(np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but uint8 is provided"),
        (
            predict_request("seg", x=real_tiles[:1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: x. Inputs expected to be in the set {images}.",
        ),
        (
            predict_request("seg", "map_update", image=real_tiles[:1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 1!=2 len({image}) != len({image,map}). Sent extra: {}. "
            "Missing but required: {map}.",
        ),
    ]
    versioned = predict_request("seg", images=real_tiles[:1])
    versioned.model_spec.version.value = 7
    cases.append((versioned, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(seg, 7)"))
    labelled = predict_request("seg", images=real_tiles[:1])
    labelled.model_spec.version_label = "canary"
    cases.append((labelled, grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary"))
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            predict_stub.Predict(request, timeout=60)
        assert info.value.code() == code
        assert info.value.details() == message


def test_metadata_status_and_classify(predict_stub, model_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "seg"
    request.metadata_field.append("signature_def")
    response = predict_stub.GetModelMetadata(request, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert {"serving_default", "serving_bytes", "polygons", "map_update"} <= set(sig_map.signature_def)
    assert response.model_spec.version.value == 1

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "seg"
    status = model_stub.GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]
    status_request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        model_stub.GetModelStatus(status_request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Could not find any versions of model nope"

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "seg"
    with pytest.raises(grpc.RpcError) as info:
        predict_stub.Classify(classify, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name" in info.value.details()
