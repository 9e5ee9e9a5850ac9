"""The folder image store: delete takes only well-formed names of pictures it holds, and a save's prune is not
thrown by a picture deleted while it lists the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from aipc_chat.engines.store import FolderImageStore


def picture() -> Image.Image:
    return Image.new("RGB", (8, 8), "red")


def test_delete_takes_the_named_pictures_only(tmp_path: Path) -> None:
    store = FolderImageStore(tmp_path / "images")
    gone, kept = store.save(picture(), "gone"), store.save(picture(), "kept")
    (tmp_path / "images" / "notes.png").write_bytes(b"not ours")  # a malformed name never reaches the disk
    assert store.delete([gone, gone, store.new_name(), "../images/notes", "notes", ""]) == 1
    assert store.read(gone) is None and store.read(kept) is not None
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted([f"{kept}.png", "notes.png"])


def test_a_picture_deleted_while_a_save_prunes_does_not_fail_the_save(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = FolderImageStore(tmp_path / "images", max_images=2)
    first = store.save(picture(), "first")
    glob = Path.glob

    def listed_then_deleted(self: Path, pattern: str) -> list[Path]:
        found = list(glob(self, pattern))
        (self / f"{first}.png").unlink(missing_ok=True)  # as another process sharing the folder would
        return found

    monkeypatch.setattr(Path, "glob", listed_then_deleted)
    second = store.save(picture(), "second")
    third = store.save(picture(), "third")
    monkeypatch.undo()
    assert store.read(second) is not None and store.read(third) is not None
    assert store.read(first) is None
