"""`ddpm-tui import-checkpoint` on files that are not state dicts of the original project: one
clear line, in our words."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest

from ddpm_tui.cli import main


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("command", ["import-checkpoint", "import-seed"])  # the former name too
@pytest.mark.parametrize("name,content,expected", [
    ("random.pth", bytes(range(7, 250)) * 40, "random.pth: not a PyTorch state dict"),
    ("photo.pth", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(300), "photo.pth: not a PyTorch state dict (it is a JPEG image)"),
    ("cut.pth", b"\x80\x02garbage", "cut.pth: not a PyTorch state dict (truncated, corrupt or not a pickle)"),
    ("evil.pth", pickle.dumps({"w": _RunsCode()}), "evil.pth: refused, it contains Python objects that would run code"),
])
def test_import_checkpoint_bad_files_are_one_clean_line(tmp_path, capsys, command, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["--workspace", str(tmp_path / "ws"), command, str(path), "--run", "x"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.strip().count("\n") == 0  # one line
    assert "weights_only" not in err and "\x1b" not in err and "Traceback" not in err
    assert not caught, [str(w.message) for w in caught]  # no stray warning lines
    assert not (tmp_path / "ws" / "runs" / "x").exists()
