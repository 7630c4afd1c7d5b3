"""Sphinx extension: read (and so execute) every page on every build.

Sphinx re-reads only the pages whose source changed since the last build,
and myst-nb executes a page only when it is read, even with
``execute_notebooks: force``. A page whose text did not change would then
keep the numbers of an older results store. Marking every page as outdated
makes each build execute every page against the current store.
"""


def mark_all_outdated(app, env, added, changed, removed):
    return sorted(env.found_docs - set(removed))


def setup(app):
    app.connect("env-get-outdated", mark_all_outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
