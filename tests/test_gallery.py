"""Tests of optstudy.gallery: one page per tuned run, written from the store."""

from __future__ import annotations

from optstudy import gallery
from test_downloads import small_store  # noqa: F401 - a fixture


def test_run_page_link_format():
    assert gallery.run_page_link("mnist", "adam", 2) == "gallery/mnist/adam-seed2.md"
    assert gallery.run_page_docname("cifar10", "sgd", 0) == "book/gallery/cifar10/sgd-seed0"


def test_gallery_pages_for_tuned_runs(small_store, tmp_path):  # noqa: F811
    folder = tmp_path / "gallery"
    gallery.write_gallery(small_store, folder)
    pages = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.md"))
    assert pages == [
        "cifar10.md", "cifar10/sgd-seed0.md", "fashion_mnist.md", "mnist.md",
        "mnist/adam-seed0.md", "mnist/adam-seed1.md",
    ]


def test_gallery_page_has_figure(small_store, tmp_path):  # noqa: F811
    folder = tmp_path / "gallery"
    gallery.write_gallery(small_store, folder)
    text = (folder / "mnist" / "adam-seed1.md").read_text()
    assert "```{figure} adam-seed1.png" in text
    assert ":name: fig-gallery-mnist-adam-seed1" in text
    assert (folder / "mnist" / "adam-seed1.png").read_bytes()[:4] == b"\x89PNG"


def test_gallery_index_links_runs(small_store, tmp_path):  # noqa: F811
    folder = tmp_path / "gallery"
    gallery.write_gallery(small_store, folder)
    index = (folder / "mnist.md").read_text()
    assert "[Adam](mnist/adam-seed0.md)" in index
    assert "[Adam](mnist/adam-seed1.md)" in index
    assert "no tuned runs" in (folder / "fashion_mnist.md").read_text()


def test_gallery_rewrite_drops_old_pages(small_store, tmp_path):  # noqa: F811
    folder = tmp_path / "gallery"
    (folder / "mnist").mkdir(parents=True)
    stale = folder / "mnist" / "lion-seed4.md"
    stale.write_text("# an earlier store's run\n")
    gallery.write_gallery(small_store, folder)
    assert not stale.exists()
