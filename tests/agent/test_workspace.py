"""Every way a path could leave the workspace is refused, checked after resolution."""

from __future__ import annotations

import os

import pytest

from tokenfactory.agent.sandbox import SandboxError, Workspace


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "inside.txt").write_text("hello")
    return Workspace(root), root, outside


@pytest.mark.parametrize("name", ["../outside/secret.txt", "a/../../outside", "..", "x/.."])
def test_parent_parts_are_refused(layout, name):
    ws, _, _ = layout
    with pytest.raises(SandboxError, match=r"'\.\.' is not allowed"):
        ws.resolve(name)


@pytest.mark.parametrize("name", ["/etc/passwd", "/", "~/x", "~"])
def test_absolute_and_home_paths_are_refused(layout, name):
    ws, _, _ = layout
    with pytest.raises(SandboxError, match="absolute path"):
        ws.resolve(name)


def test_absolute_path_into_the_workspace_is_refused_too(layout):
    ws, root, _ = layout
    with pytest.raises(SandboxError, match="absolute path"):
        ws.resolve(str(root / "inside.txt"))


def test_symlink_to_a_file_outside_cannot_be_read(layout):
    ws, root, outside = layout
    os.symlink(outside / "secret.txt", root / "link.txt")
    with pytest.raises(SandboxError, match="outside the workspace"):
        ws.existing_file("link.txt")


def test_symlink_to_a_file_outside_cannot_be_written_through(layout):
    ws, root, outside = layout
    os.symlink(outside / "secret.txt", root / "link.txt")
    with pytest.raises(SandboxError, match="outside the workspace"):
        ws.write_text("link.txt", "overwritten")
    assert (outside / "secret.txt").read_text() == "secret"


def test_new_file_through_a_symlinked_directory_is_refused(layout):
    ws, root, outside = layout
    os.symlink(outside, root / "linkdir")
    with pytest.raises(SandboxError, match="outside the workspace"):
        ws.write_text("linkdir/new.txt", "x")
    with pytest.raises(SandboxError, match="outside the workspace"):
        ws.write_text("linkdir/deeper/new.txt", "x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_dangling_symlink_pointing_outside_is_refused(layout):
    ws, root, outside = layout
    os.symlink(outside / "not-yet.txt", root / "dangling.txt")
    with pytest.raises(SandboxError, match="outside the workspace"):
        ws.write_text("dangling.txt", "x")
    assert not (outside / "not-yet.txt").exists()


def test_symlink_that_stays_inside_is_fine(layout):
    ws, root, _ = layout
    (root / "real").mkdir()
    os.symlink(root / "real", root / "alias")
    written = ws.write_text("alias/file.txt", "ok")
    assert written == root / "real" / "file.txt"
    assert (root / "real" / "file.txt").read_text() == "ok"


def test_workspace_root_behind_a_symlink_still_works(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    ws = Workspace(tmp_path / "alias")
    ws.write_text("a/b.txt", "x")
    assert (tmp_path / "real" / "a" / "b.txt").read_text() == "x"


def test_nul_bytes_and_the_root_itself(layout):
    ws, _, _ = layout
    with pytest.raises(SandboxError, match="NUL"):
        ws.resolve("a\x00b")
    with pytest.raises(SandboxError, match="workspace directory itself"):
        ws.write_text(".", "x")
    assert ws.relative(ws.resolve("")) == "."


def test_writing_makes_parent_directories(layout):
    ws, root, _ = layout
    ws.write_text("out/deep/result.txt", "42")
    assert (root / "out" / "deep" / "result.txt").read_text() == "42"
