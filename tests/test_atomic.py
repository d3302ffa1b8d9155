"""Atomic writes: a failed write (disk full, file size limit) leaves the old file intact and no
temporary, with an error naming the file; the crash hook's offsets; prepare_data's messages."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numbagpt.files import atomic, formats
from numbagpt.cli import prepare
from numbagpt.config import GPT2Config
from numbagpt.layout import num_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = GPT2Config(max_seq_len=8, vocab_size=1000, num_layers=1, num_heads=1, channels=32)
N = num_parameters(CONFIG)   # 34,112 parameters: a model file of 137,472 bytes


def _write_model_in(path, preexec=None, wrap=None):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import numpy as np
        from numbagpt.files import formats
        from numbagpt.config import GPT2Config
        cfg = GPT2Config(max_seq_len=8, vocab_size=1000, num_layers=1, num_heads=1, channels=32)
        try:
            formats.write_model({str(path)!r}, cfg, np.ones({N}, dtype=np.float32))
        except OSError as e:
            sys.exit(f"error: {{e}}")
    """)
    cmd = [sys.executable, "-c", code]
    return subprocess.run((wrap or []) + cmd, capture_output=True, text=True, preexec_fn=preexec, timeout=120)


def test_file_size_limit_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "model.bin"
    formats.write_model(path, CONFIG, np.zeros(N, dtype=np.float32))
    old = path.read_bytes()
    r = _write_model_in(path, preexec=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: {path}: cannot write after 50,000 bytes: File too large "
                                f"(over the file size limit, ulimit -f)")
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.bin"]


def test_disk_full_names_the_file(tmp_path):
    """A real full filesystem: a 64 KiB tmpfs in a private mount namespace (skipped where not allowed)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    r = _write_model_in(mnt / "model.bin",
                        wrap=["unshare", "-rm", "sh", "-c",
                              f'mount -t tmpfs -o size=64k tmpfs {mnt} && exec "$@"', "-"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"error: {mnt}/model.bin: cannot write after ")
    assert "No space left on device (the disk or quota is full)" in r.stderr


def test_writes_are_complete_and_leave_no_temporary(tmp_path):
    path = tmp_path / "m.bin"
    params = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    formats.write_model(path, CONFIG, params)
    assert np.array_equal(formats.read_model(path)[1], params)
    assert os.listdir(tmp_path) == ["m.bin"]
    atomic.write_bytes(tmp_path / "DONE")
    assert (tmp_path / "DONE").read_bytes() == b""
    with pytest.raises(ZeroDivisionError):   # an exception inside the block: the old file stays
        with atomic.atomic_write(path) as f:
            f.write(b"partial")
            raise ZeroDivisionError
    assert np.array_equal(formats.read_model(path)[1], params)
    assert sorted(os.listdir(tmp_path)) == ["DONE", "m.bin"]
    stale = tmp_path / f".m.bin.{os.getpid() + 1}.tmp"
    stale.write_bytes(b"x")
    assert atomic.remove_stale_temps(str(tmp_path)) == [stale.name]
    with pytest.raises(atomic.WriteError, match=f"{tmp_path}/no/such/dir/x.bin: cannot write: No such file"):
        atomic.write_bytes(tmp_path / "no" / "such" / "dir" / "x.bin", b"1")


@pytest.mark.parametrize("point,size", [(0, 0), (1000, 1000), (1024 + 4 * N, None), ("end", None)])
def test_the_crash_hook_kills_at_its_offset(tmp_path, point, size):
    path = tmp_path / "model.bin"
    env = dict(os.environ, NUMBAGPT_TEST_CRASH=f"model.*@{point}")
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import numpy as np; from numbagpt.files import formats; "
            f"from numbagpt.config import GPT2Config; "
            f"formats.write_model({str(path)!r}, GPT2Config(8, 1000, 1, 1, 32), "
            f"np.ones({N}, dtype=np.float32))")
    r = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert not path.exists()
    (tmp,) = os.listdir(tmp_path)
    assert atomic.is_temp_name(tmp)
    assert os.path.getsize(tmp_path / tmp) == (1024 + 4 * N if size is None else size)


def test_prepare_data_on_a_binary_file_names_it(tmp_path, capsys):
    binary = tmp_path / "image.png"
    binary.write_bytes(b"PNG\r\n" + bytes(range(128, 256)))
    with pytest.raises(SystemExit) as e:
        prepare.main([str(binary), "-o", str(tmp_path / "out")])
    assert str(e.value) == (f"prepare_data: error: {binary}: not UTF-8 text (byte 0x80 at offset 5); "
                            f"prepare_data tokenizes UTF-8 text files")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_permission_denied_says_the_directory_is_not_writable():
    """EACCES (like EROFS and EPERM) gets the hint that the directory is not writable (it was left
    out: a bare "Permission denied")."""
    import errno
    for code, words in ((errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system"),
                        (errno.EPERM, "Operation not permitted")):
        assert atomic.describe_os_error(OSError(code, words)) == f"{words} (the directory is not writable)"
