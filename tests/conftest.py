"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit decorator runs, and the hub
must be off before transformers is imported: both happen here, before `offload` is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M-Instruct behind offload (fp32 on CPU), converted once and cached."""
    import offload

    return offload.load_model()


@pytest.fixture(scope="session")
def hf_model(model):
    """A plain transformers model (stock sdpa attention) on the same converted weights: the reference."""
    from offload.loading import load_reference

    return load_reference(model)


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma-3-270M (base; 5 sliding-window layers per global one) behind offload, fp32."""
    import offload

    return offload.load_model("gemma3-270m")


@pytest.fixture(scope="session")
def gemma_hf(gemma):
    from offload.loading import load_reference

    return load_reference(gemma)
