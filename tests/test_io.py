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


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_staged_directories_get_the_usual_permissions(tmp_path, umask_022):
    from masc_hf._io import staged_dir

    with staged_dir(tmp_path / "out" / "model") as staging:
        (staging / "config.json").write_text("{}")
        (staging / "sub").mkdir()
    model = tmp_path / "out" / "model"
    assert stat.S_IMODE(model.stat().st_mode) == 0o755  # not mkdtemp's 0o700
    assert stat.S_IMODE((model / "config.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((model / "sub").stat().st_mode) == 0o755


def _kill_mid_write(target, kind):
    """Run a writer of ``target`` in another process and SIGKILL it mid-write."""
    import subprocess
    import sys

    writer, write = ("staged_dir", "(tmp / 'half.bin').write_bytes(b'x')") if kind == "dir" else ("atomic_path", "tmp.write_bytes(b'half')")
    code = (
        "import os, signal, sys\n"
        "from masc_hf._io import atomic_path, staged_dir\n"
        f"with {writer}(sys.argv[1]) as tmp:\n"
        f"    {write}\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -9


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_leftovers_of_a_killed_run_are_cleaned_by_the_next_write_of_that_target(tmp_path, kind):
    from masc_hf._io import atomic_path, staged_dir

    target = tmp_path / "out" / "model"
    _kill_mid_write(target, kind)
    first = [p.name for p in (tmp_path / "out").iterdir()]
    assert len(first) == 1 and first[0].startswith(".model.") and first[0].endswith(".tmp")
    _kill_mid_write(target, kind)  # the second killed run cleaned the first one's
    second = [p.name for p in (tmp_path / "out").iterdir()]
    assert len(second) == 1 and second != first
    # not ours: another target's leftover, a name of another shape, a symlink named like ours
    victim = tmp_path / "victim.txt"
    victim.write_text("secret")
    (tmp_path / "out" / ".other.abcdefgh.tmp").write_text("not this target")
    (tmp_path / "out" / ".model.tmp").write_text("not our name pattern")
    (tmp_path / "out" / ".model.abcdefgh.tmp").symlink_to(victim)
    if kind == "dir":
        with staged_dir(target) as staging:
            (staging / "done.bin").write_bytes(b"y")
    else:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"done")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".model.abcdefgh.tmp", ".model.tmp", ".other.abcdefgh.tmp", "model"]
    assert victim.read_text() == "secret"


def test_a_live_writers_temporary_is_not_cleaned(tmp_path):
    import subprocess
    import sys

    from masc_hf._io import staged_dir

    target = tmp_path / "model"
    with staged_dir(target) as live:
        (live / "half.bin").write_bytes(b"x")
        # another process writing the same target meanwhile: it must leave this staging directory alone
        code = "import sys; from masc_hf._io import clean_leftovers; clean_leftovers(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(target)], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert (live / "half.bin").read_bytes() == b"x"
    assert (target / "half.bin").read_bytes() == b"x"
