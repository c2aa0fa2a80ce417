import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    from dnnpiracy.data import load_dataset
    return load_dataset("digits-tiny")


@pytest.fixture(scope="session")
def tiny_target(tiny, tmp_path_factory):
    """A small CNN watermarked on digits-tiny (trains in a few seconds)."""
    from dnnpiracy.config import TrainConfig, TriggerConfig
    from dnnpiracy.data import make_splits
    from dnnpiracy.watermark import embed_watermark
    splits = make_splits(tiny.test_y, 0.5, seed=0)   # 100 surrogate inputs, 10 per class
    out = tmp_path_factory.mktemp("tiny_target")
    cfg = TrainConfig(arch="small-cnn", epochs=4, lr=1e-3, batch_size=64, seed=0, trigger_oversample=10)
    target = embed_watermark(tiny, splits, cfg, TriggerConfig(num_triggers=15, trigger_label=0, seed=0), out,
                             progress=False, log=lambda _m: None)
    return tiny, splits, target
