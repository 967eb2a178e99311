"""Black-box tests of the built image, run by `make image-test` only.

They need podman and an image named by AYON_TEST_IMAGE; without it the
folder is not collected, so `make test` never starts containers.
"""

import pytest

from tests.image.podman import IMAGE, Container

if not IMAGE:
    collect_ignore_glob = ["test_*.py", "podman.py"]


@pytest.fixture
def container_factory():
    """Start containers of the image; every one is removed at the end of the test."""
    made = []

    def make(env: dict[str, str], args: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> Container:
        container = Container(env, args, options)
        made.append(container)
        return container.start()

    yield make
    for container in made:
        container.remove()
