import pyro
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Small models: one intra-op thread is fastest and avoids oversubscribing CI's cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _clean_pyro():
    """Fresh param store, validation on, and a fixed seed for every test."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def small_split():
    from bjepa.data import noisy_tv

    return noisy_tv.make_split(sigma=4.0, seed=0, train_steps=600, test_steps=300)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
