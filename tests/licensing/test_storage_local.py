"""licensing/storage.py with local files: a package handed over as any readable stream (not
package_spool's file) is copied into place whole, atomically, and leaves no partial file."""

import io
import os
from pathlib import Path

from licensing.envelope import WRITE_SIZE
from licensing.storage import package_open, package_store, partial_files
from tests.licensing.test_packaging import package_path


def test_a_package_from_any_stream_is_copied_into_place_whole() -> None:
    data = os.urandom(3 * WRITE_SIZE + 17)  # several copy pieces and a short last one
    name = "deliveries/order-1/delivery-1.mkpkg"

    package_store(name, io.BytesIO(data), metadata={"format": "mkpkg-v1"})

    with package_open(name) as stored:
        assert stored.read() == data
    assert partial_files() == []
    # Storing it again (a retry) replaces it with the same bytes.
    package_store(name, io.BytesIO(data), metadata={"format": "mkpkg-v1"})
    assert os.listdir(Path(package_path(name)).parent) == ["delivery-1.mkpkg"]
    assert partial_files() == []
