def test_tfx_pieces_import_in_the_venv():
    # TFX components before anything that imports TFDV (see README: TFX install notes).
    from tfx.components import Pusher, Trainer
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    assert Trainer and Pusher and LocalDagRunner
