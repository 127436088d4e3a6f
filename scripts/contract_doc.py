"""Print the report contract (server_monitor.storage.contract.REPORT) as a Markdown table.

    .venv/bin/python scripts/contract_doc.py            # print it
    .venv/bin/python scripts/contract_doc.py --update   # rewrite it inside docs/api.md

docs/api.md embeds this output between the CONTRACT markers; a test keeps them in sync.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server_monitor.storage.contract import List, Obj, REPORT  # noqa: E402


def rows(spec, path=""):
    for key, sub in spec.fields.items():
        name = f"{path}.{key}" if path else key
        kind = sub.type_name
        if isinstance(sub, List):
            kind = f"array of {sub.items.type_name}"
        need = "required" if sub.required else "optional"
        if not sub.nullable:
            need += ", not null"
        if getattr(sub, "identity", False):
            need += ", identity"  # unsafe characters refused; other strings are free text (cleaned)
        yield f"| `{name}` | {kind} | {sub.unit or ''} | {sub.range_text()} | {need} | {sub.doc} |"
        if isinstance(sub, Obj):
            yield from rows(sub, name)
        elif isinstance(sub, List) and isinstance(sub.items, Obj):
            yield from rows(sub.items, name + "[]")


def markdown():
    lines = ["| field | type | unit | range | presence | meaning / source |", "|---|---|---|---|---|---|"]
    lines.extend(rows(REPORT))
    return "\n".join(lines) + "\n"


def update(path):
    text = open(path, encoding="utf-8").read()
    begin = text.index("-->\n", text.index("<!-- CONTRACT:BEGIN")) + 4
    end = text.index("<!-- CONTRACT:END -->")
    with open(path, "w", encoding="utf-8") as fp:
        fp.write(text[:begin] + markdown() + text[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "api.md"))
    else:
        sys.stdout.write(markdown())
