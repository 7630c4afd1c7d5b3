"""Sphinx extension: write the run gallery's pages before the table of contents is read.

The pages (one per tuned run, see optstudy.gallery) depend on the results
store named by OPTSTUDY_STORE, so they are generated into book/gallery/ on
every build. sphinx-external-toc reads _toc.yml, whose globs list these
pages, at config-inited with priority 900; this hook runs before it. A book
whose _toc.yml does not mention book/gallery (such as the one-page books of
the tests) gets no gallery.
"""

from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)


def write_gallery(app, config):
    from optstudy import gallery

    setting = getattr(config, "external_toc_path", None)
    toc = Path(app.srcdir) / setting if setting else None
    if toc is None or not toc.is_file() or gallery.GALLERY_DOCNAME not in toc.read_text():
        return
    pages = gallery.write_gallery(folder=Path(app.srcdir) / "book" / "gallery")
    logger.info("run gallery: wrote %d pages into book/gallery", len(pages))


def setup(app):
    app.connect("config-inited", write_gallery, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
