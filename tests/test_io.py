import os
import stat

import pytest

from masc_hf._io import atomic_file


def test_atomic_files_get_the_usual_permissions_and_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "a.txt"
    with atomic_file(target, "w") as handle:
        handle.write("hello")
    assert target.read_text() == "hello"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0o600
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "hello" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
