import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def natural_clip():
    """A short natural clip (a slow pan over a real photo), uint8 (12, 120, 160, 3)."""
    from vdiffdeblur.data.synthetic import load_photo

    img = load_photo("builtin:astronaut")
    return np.stack([img[100 + 2 * i:220 + 2 * i, 150 + 3 * i:310 + 3 * i] for i in range(12)])


@pytest.fixture(scope="session")
def shake_clip():
    from vdiffdeblur.data.synthetic import ShakeConfig, synthesize_shake

    return synthesize_shake("builtin:coffee", ShakeConfig(num_frames=24, width=160, height=120), seed=3)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models on a loaded 2-core machine run far faster single-threaded."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
