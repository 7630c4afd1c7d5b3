"""Sphinx extension: write each script tag of a page once.

sphinx-thebe 0.3.1 registers its inline configuration script
(``const THEBE_JS_URL = ...``) twice on every page of this book, and the
second copy makes the browser raise "Identifier 'THEBE_JS_URL' has already
been declared" (sphinx-togglebutton's inline script is repeated the same way).
Sphinx 7.4 keeps such a repeat because one copy of an inline script has the
file name None and the other the empty string. Dropping repeated entries of
the page's script list, keeping the first, removes that error without
touching any other script.
"""


def _script_key(script):
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""
    return (str(filename),
            tuple(sorted((key, str(value)) for key, value in attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
