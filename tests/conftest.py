import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; more only fight env workers (and other jobs
    on a shared CPU) for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_gin_config():
    """Gin's configuration is global: a test that parses one must not leak it into the next
    (PromptDTConfig() would silently take another model size)."""
    import gin

    yield
    gin.clear_config()
